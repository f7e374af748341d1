import pytest
import torch

from prune_unlearn import forget, load, save
from prune_unlearn.core.models import build_model, default_architecture, mlp_from_state_dict, vgg16
from prune_unlearn.core.split import split_model, verify_split
from prune_unlearn.errors import InputValidationError


@pytest.fixture(scope="module")
def small_vgg():
    """An untrained VGG16 made to look trained where it matters: batch-norm statistics calibrated on
    inputs, and the head's first layer centred on typical features (else every input shares one linear
    region of the head and sits numerically on its boundaries)."""
    torch.manual_seed(0)
    model = vgg16(num_classes=10, batch_norm=True, head_hidden=(64, 64))
    calib = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None  # cumulative average: running stats = this batch's stats
        model.train()
        model(calib)
        model.eval()
        feats = model.flatten(model.features(calib))
        first = model.classifier[0]
        first.bias.copy_(-(feats @ first.weight.T).mean(dim=0))
    return model


def test_vgg16_split_is_exact(small_vgg):
    split = split_model(small_vgg)  # head name recorded in the architecture
    assert split.head_name == "classifier" and split.hidden_sizes == [64, 64] and split.feature_dim == 512
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(34))
    verify_split(small_vgg, split, x)
    _, logits = split.head_forward(split.features(x))
    assert torch.equal(logits, small_vgg(x))
    assert sum(isinstance(m, torch.nn.Conv2d) for m in small_vgg.features) == 13


def test_vgg16_feature_space_forget_keeps_guarantees(small_vgg, tmp_path):
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, 32, 32, generator=gen)
    y = small_vgg(x).argmax(1)
    res = forget(small_vgg, x, labels=y, bound="dual", radius=None)
    assert (res.model(x).argmax(1) != y).all() and res.report.n_certified_region == 4
    assert res.certificate.domain["source"].startswith("interval propagation")
    other = torch.rand(64, 3, 32, 32, generator=gen)
    region, value = res.model.covering_region(other)
    assert (value == 0).sum() > 32
    assert torch.equal(res.model(other)[value == 0], small_vgg(other)[value == 0])
    save(res.model, tmp_path / "vgg.safetensors")
    again = load(tmp_path / "vgg.safetensors")
    assert torch.equal(again(x), res.model(x)) and torch.equal(again(other), small_vgg(other))


def test_default_architectures_follow_table_ii():
    assert default_architecture("purchase", 600, 20)["hidden"] == [256]
    assert default_architecture("har", 561, 6)["hidden"] == [256]
    assert default_architecture("mnist", 784, 10)["hidden"] == [256, 256]
    spec = default_architecture("cifar10", 3072, 10, (3, 32, 32))
    assert spec["kind"] == "vgg16" and spec["head"] == "classifier"
    assert isinstance(build_model(spec), torch.nn.Module)


def test_mlp_from_state_dict_matches_by_order():
    torch.manual_seed(0)
    src = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    state = {"a.weight": src[0].weight, "a.bias": src[0].bias, "b.weight": src[2].weight, "b.bias": src[2].bias}
    model = mlp_from_state_dict(state, [6, 5, 3])
    x = torch.rand(4, 6, generator=torch.Generator().manual_seed(71))
    assert torch.equal(model(x), src(x))
    with pytest.raises(InputValidationError, match="2 weight matrices but layer sizes"):
        mlp_from_state_dict(state, [6, 5, 5, 3])
