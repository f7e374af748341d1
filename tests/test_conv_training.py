"""Training loop options for conv nets: crop+flip, one-cycle, checkpoints/resume, and the train-once model cache.

Everything runs on a tiny VGG16 layout (width 1/16: 4…32 channels, still 13 conv layers) and a few
hundred synthetic 32×32 images, so the conv path is exercised in seconds.
"""

import json

import pytest
import torch

from prune_unlearn import forget
from prune_unlearn.core.models import build_model, default_architecture, vgg16
from prune_unlearn.errors import FormatError, InputValidationError
from prune_unlearn.experiments.feature_space import features, head_only, patched_head
from prune_unlearn.experiments.model_cache import cached_training
from prune_unlearn.experiments.training import (
    Recipe,
    augment_crop_flip,
    lr_at_step,
    recipe_for,
    train_from_spec,
    train_model,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # two threads on a loaded 2-core machine run 6× slower

TINY = dict(width=1 / 16, head_hidden=(32, 32), dropout=0.0)


def _images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Four classes told apart by which colour channel is brighter in which half of the image, plus noise."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = 0.35 * torch.rand(n, 3, 32, 32, generator=gen)
    for c in range(4):
        rows = slice(0, 16) if c % 2 == 0 else slice(16, 32)
        x[y == c, c // 2, rows, :] += 0.6
    return x.clamp(0, 1), y


def _tiny_spec() -> dict:
    return vgg16(num_classes=4, **TINY).prune_architecture


def _recipe(**kw) -> Recipe:
    return recipe_for("cifar10", **{"epochs": 3, "batch_size": 32, **kw})


@pytest.fixture(scope="module")
def data():
    return _images(320, 0), _images(160, 1)


def test_crop_flip_matches_a_per_image_reference():
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = augment_crop_flip(x, 2, torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)  # the same draws, in the same order
    dy, dx = torch.randint(0, 5, (6,), generator=gen), torch.randint(0, 5, (6,), generator=gen)
    flip = torch.rand(6, generator=gen) < 0.5
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(6):
        crop = padded[i, :, dy[i]: dy[i] + 8, dx[i]: dx[i] + 8]
        assert torch.equal(out[i], crop.flip(-1) if flip[i] else crop)
    assert flip.any() and not flip.all() and len(set(zip(dy.tolist(), dx.tolist()))) > 1


def test_one_cycle_rises_then_falls_to_zero_and_constant_schedule_keeps_its_tail():
    r = Recipe(lr=0.2, epochs=4, schedule="onecycle", warmup_fraction=0.25)
    lrs = [lr_at_step(r, e, s, 10) for e in range(4) for s in range(10)]
    assert lrs[0] == pytest.approx(0.2 * 0.04) and max(lrs) == pytest.approx(0.2) and lrs.index(max(lrs)) == 10
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11])) and all(a > b for a, b in zip(lrs[10:-1], lrs[11:]))
    assert lrs[-1] == pytest.approx(0.2 / 30)
    tail = Recipe(lr=0.1, epochs=5, anneal_epochs=2)
    assert [lr_at_step(tail, e, 0, 3) for e in range(5)] == [0.1, 0.1, 0.1, 0.01, 0.01]


def test_bad_recipes_are_refused_with_the_parameter_named():
    spec = _tiny_spec()
    x, y = _images(8, 0)
    for bad, match in ((dict(schedule="cosine"), "'schedule' parameter of train_model must be one of"),
                       (dict(augment="mixup"), "'augment' parameter"),
                       (dict(label_smoothing=1.0), "'label_smoothing' parameter"),
                       (dict(epochs=0), "'epochs' parameter")):
        with pytest.raises(InputValidationError, match=match):
            train_from_spec(spec, x, y, _recipe(**bad))


def test_width_multiplier_keeps_the_vgg16_layout_and_old_specs_still_build():
    quarter = vgg16(width=0.25)
    convs = [m for m in quarter.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 16, 32, 32, 64, 64, 64, 128, 128, 128, 128, 128, 128]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in quarter.features) == 13
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in quarter.features) == 5
    assert quarter.classifier[0].in_features == 128 and quarter.prune_architecture["width"] == 0.25
    old = dict(vgg16().prune_architecture)  # a spec saved before the multiplier existed has no "width"
    assert "width" not in old and build_model(old).classifier[0].in_features == 512
    spec = default_architecture("cifar10", 3072, 10, (3, 32, 32), width=0.5)
    assert build_model(spec).features[0].out_channels == 32
    for bad in (0, -0.5, float("nan"), "1"):
        with pytest.raises(InputValidationError, match="width multiplier must be a positive number"):
            vgg16(width=bad)
    with pytest.raises(InputValidationError, match="width multiplier must be a positive number"):
        build_model({**spec, "width": 0.0})


def test_conv_recipe_learns_and_the_model_comes_back_contiguous(data):
    (x, y), (xt, yt) = data
    result = train_from_spec(_tiny_spec(), x, y, _recipe(), X_val=xt, y_val=yt)
    assert result.history[-1]["val_accuracy"] >= 0.9
    assert all(p.is_contiguous() for p in result.model.parameters())  # channels_last undone after training
    assert not result.model.training


def _interrupt_at(step: int):
    """A step hook that stops training (as Ctrl-C would) before SGD step ``step`` (1-based)."""
    seen = []

    def hook(idx):
        seen.append(len(idx))
        if len(seen) == step:
            raise KeyboardInterrupt

    return hook


def test_resume_after_an_interruption_gives_the_uninterrupted_weights(data, tmp_path):
    (x, y), _ = data
    recipe = _recipe(epochs=2)
    reference = train_from_spec(_tiny_spec(), x, y, recipe).model
    ckpt = tmp_path / "run.ckpt.pt"
    with pytest.raises(KeyboardInterrupt):  # in the second epoch (10 steps per epoch)
        train_from_spec(_tiny_spec(), x, y, recipe, checkpoint=ckpt, step_hook=_interrupt_at(13))
    assert ckpt.is_file()
    resumed = train_from_spec(_tiny_spec(), x, y, recipe, checkpoint=ckpt)
    assert resumed.resumed_from_epoch == 1 and [h["epoch"] for h in resumed.history] == [1, 2]
    for (name, a), b in zip(reference.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_foreign_or_broken_checkpoint_is_refused(data, tmp_path):
    (x, y), _ = data
    ckpt = tmp_path / "run.ckpt.pt"
    with pytest.raises(KeyboardInterrupt):
        train_from_spec(_tiny_spec(), x, y, _recipe(epochs=2), checkpoint=ckpt, step_hook=_interrupt_at(11))
    with pytest.raises(FormatError, match="written for a different recipe; refusing to resume"):
        train_from_spec(_tiny_spec(), x, y, _recipe(epochs=3), checkpoint=ckpt)
    with pytest.raises(FormatError, match="written for a different training data"):
        train_from_spec(_tiny_spec(), x[:-1], y[:-1], _recipe(epochs=2), checkpoint=ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(FormatError, match="checkpoint .* is unreadable .*HINT: delete it"):
        train_from_spec(_tiny_spec(), x, y, _recipe(epochs=2), checkpoint=ckpt)


def test_model_cache_trains_once_reuses_and_refuses_tampering(data, tmp_path):
    (x, y), (xt, yt) = data
    spec, recipe, logs = _tiny_spec(), _recipe(epochs=2), []
    first = cached_training("tiny", spec, recipe, x, y, folder=tmp_path, X_test=xt, y_test=yt, log=logs.append)
    record = json.loads((tmp_path / "tiny.json").read_text())
    assert not first.reused and record["recipe"] == recipe.to_dict() and record["seed"] == 0
    assert record["test_accuracy"] == first.info["test_accuracy"] and record["torch_threads"] >= 1
    assert not (tmp_path / "tiny.ckpt.pt").exists()  # the epoch checkpoint goes once the model is saved
    again = cached_training("tiny", spec, recipe, x, y, folder=tmp_path, X_test=xt, y_test=yt, log=logs.append)
    assert again.reused and "reusing the cached model" in logs[-1]
    assert torch.equal(again.model(xt[:8]), first.model(xt[:8]))

    # stale: another seed is trained again, never reused
    del logs[:]
    other = cached_training("tiny", spec, _recipe(epochs=2, seed=1), x, y, folder=tmp_path, log=logs.append)
    assert not other.reused and "stale (recipe, seed differ from this run): training again" in logs[0]

    # tampered: a record whose weight hash does not match the model is an error
    record = json.loads((tmp_path / "tiny.json").read_text())
    (tmp_path / "tiny.json").write_text(json.dumps({**record, "model_sha256": "0" * 64}))
    with pytest.raises(FormatError, match="has weight hash .* one of them was changed .*--retrain"):
        cached_training("tiny", spec, _recipe(epochs=2, seed=1), x, y, folder=tmp_path, log=logs.append)
    (tmp_path / "tiny.json").write_text(json.dumps(record))
    raw = bytearray((tmp_path / "tiny.safetensors").read_bytes())
    raw[-5] ^= 0xFF  # flip bits in the last tensor's data
    (tmp_path / "tiny.safetensors").write_bytes(bytes(raw))
    with pytest.raises(FormatError, match="cannot be reused: .*failed its integrity check.*--retrain"):
        cached_training("tiny", spec, _recipe(epochs=2, seed=1), x, y, folder=tmp_path, log=logs.append)
    forced = cached_training("tiny", spec, _recipe(epochs=2, seed=1), x, y, folder=tmp_path, retrain=True,
                             log=logs.append)
    assert not forced.reused
    assert torch.equal(forced.model(xt[:8]), other.model(xt[:8]))  # same recipe and seed: the same model


def test_trained_tiny_vgg_forgets_in_feature_space_with_exact_locality(data, tmp_path):
    from prune_unlearn.core.domain import data_feature_box

    (x, y), (xt, yt) = data
    model = cached_training("tiny", _tiny_spec(), _recipe(), x, y, folder=tmp_path, log=lambda m: None).model
    idx = torch.arange(0, 320, 16)  # 20 training points
    keep = torch.ones(len(x), dtype=torch.bool)
    keep[idx] = False
    before_test, before_rest = model(xt).argmax(1), model(x[keep]).argmax(1)
    for fdom, source in ((None, "interval propagation"), (data_feature_box(model, x, margin=0.1), "given")):
        res = forget(model, x[idx], labels=y[idx], bound="dual", feature_domain=fdom, test_data=(xt, yt),
                     remaining_data=(x[keep], y[keep]), radius=None)
        r = res.report
        assert r.A_u_after == 0 and r.n_certified_region == 20 and res.certificate.domain["source"].startswith(source)
        patched = res.model
        # exactly zero change wherever no support fires: the counts the report gives are the real ones
        assert r.changed_tes == int((patched(xt).argmax(1) != before_test).sum())
        assert r.changed_res == int((patched(x[keep]).argmax(1) != before_rest).sum())
        _, value = patched.covering_region(xt)
        assert torch.equal(patched(xt)[value == 0], model(xt)[value == 0])
        # the runners' feature-space view: conv layers once, then the (patched) head alone
        feats = features(model, xt, batch_size=64)
        assert torch.allclose(head_only(model)(feats), model(xt), atol=1e-5)
        assert torch.allclose(patched_head(patched)(feats), patched(xt), atol=1e-4)


def test_cli_width_is_checked():
    from click.testing import CliRunner

    from prune_unlearn.cli import cli

    res = CliRunner().invoke(cli, ["train", "--data", "digits", "--width", "0", "--out", "x.safetensors"])
    assert res.exit_code == 2 and "Invalid value for '--width': 0.0 is not in the range x>0" in res.output
    res = CliRunner().invoke(cli, ["train", "--data", "digits", "--width", "0.5", "--out", "x.safetensors"])
    assert res.exit_code == 1 and "width multiplier applies to the VGG16 of cifar10 only" in res.output


def test_default_forget_on_a_conv_net_is_region_only(data, tmp_path):
    """An input ball reaches a head behind conv layers only through a loose interval box, whose support would
    reach most other inputs: forget's default ("auto") keeps region patches there and says so."""
    from prune_unlearn.unlearn.neighbourhood import resolve_radius

    (x, y), (xt, yt) = data
    model = cached_training("tiny", _tiny_spec(), _recipe(), x, y, folder=tmp_path, log=lambda m: None).model
    assert resolve_radius("auto", (0.0, 1.0), feature_extractor=True) is None
    res = forget(model, x[:8], labels=y[:8], test_data=(xt, yt))
    assert res.report.radius is None and res.report.n_certified_neighbourhood == 0
    assert res.report.n_certified_region + res.report.n_certified_point == 8
    assert not res.model.has_neighbourhoods
    again = forget(res.model, x[8:12], labels=y[8:12])  # a patched conv model keeps the mode as well
    assert again.report.radius is None and not again.model.has_neighbourhoods
