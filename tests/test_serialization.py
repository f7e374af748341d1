import json
import os

import pytest
import torch

from _helpers.models import TinyConvNet, tiny_mlp
from prune_unlearn import forget, load, load_info, save
from prune_unlearn.errors import FormatError


def test_patched_model_roundtrip_is_bit_identical(tmp_path, digits, digits_model):
    res = forget(digits_model, digits.X_train[:30], labels=digits.y_train[:30], strategy="cluster", radius=None)
    path = tmp_path / "patched.safetensors"
    save(res.model, path, info={"note": "x"})
    loaded = load(path)
    for X in (digits.X_train, digits.X_test):
        assert torch.equal(loaded(X), res.model(X))
    assert load_info(path)["info"] == {"note": "x"}
    assert len(loaded.patches) == len(res.model.patches)
    # save → load → save gives the same bytes hash (the file is a function of the model)
    save(loaded, tmp_path / "again.safetensors", info={"note": "x"})
    assert load_info(tmp_path / "again.safetensors")["tensors_sha256"] == load_info(path)["tensors_sha256"]


def test_custom_architecture_needs_base(tmp_path):
    model = TinyConvNet().eval()
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(28))
    res = forget(model, x, head="classifier", radius=None)
    path = tmp_path / "conv.safetensors"
    save(res.model, path)
    with pytest.raises(FormatError, match="custom architecture. HINT: pass base="):
        load(path)
    loaded = load(path, base=TinyConvNet())
    assert torch.equal(loaded(x), res.model(x))


def test_tampered_or_foreign_files_fail_loudly(tmp_path):
    model = tiny_mlp((4, 8, 8, 3))
    res = forget(model, torch.rand(4, 4, generator=torch.Generator().manual_seed(40)), radius=None)
    path = tmp_path / "m.safetensors"
    save(res.model, path)
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF  # flip bits in the last tensor's data
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(raw))
    with pytest.raises(FormatError, match="failed its integrity check"):
        load(bad)
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    with pytest.raises(FormatError, match="not a readable safetensors file"):
        load(tmp_path / "junk.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(FormatError, match="not a prune-unlearn model"):
        load(tmp_path / "other.safetensors")
    with pytest.raises(FormatError, match="No model file"):
        load(tmp_path / "missing.safetensors")


def test_unknown_format_version_is_refused(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    model = tiny_mlp((4, 8, 3))
    path = tmp_path / "m.safetensors"
    save(model, path)
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    header = json.loads(meta["prune_unlearn"])
    header["format_version"] = 99
    save_file(load_file(str(path)), str(path), metadata={"prune_unlearn": json.dumps(header)})
    with pytest.raises(FormatError, match="format_version 99"):
        load(path)


def test_atomic_save_leaves_old_file_on_failure(tmp_path, monkeypatch):
    model = tiny_mlp((4, 8, 3))
    path = tmp_path / "m.safetensors"
    save(model, path)
    before = path.read_bytes()
    import safetensors.torch

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError):
        save(tiny_mlp((4, 8, 3), seed=5), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # usual permissions, not mkstemp's 0600


def test_one_naming_and_one_hash_for_every_kind_of_patched_model(tmp_path, digits, digits_small_model):
    """The saved file's tensors are exactly ``state_dict()``; its hash is ``sha256()``; rows of every kind
    survive a reload, and a change of one kind keeps the other."""
    from prune_unlearn import PatchedModel, forget_class
    from prune_unlearn.core.patches import model_state_sha256

    X, y = digits.X_train[:40], digits.y_train[:40]
    point = forget(digits_small_model, X[:5], labels=y[:5], radius=None).model
    cls = forget_class(digits_small_model, 3, digits.X_train[digits.y_train == 3], seed=0).model
    both = forget(cls, X[y != 3][:5], labels=y[y != 3][:5], radius=None).model
    for name, model in {"plain": digits_small_model, "point": point, "class": cls, "both": both}.items():
        path = tmp_path / f"{name}.safetensors"
        save(model, path)
        assert load_info(path)["tensors_sha256"] == model_state_sha256(model), name
        if isinstance(model, PatchedModel):
            assert model.sha256() == model_state_sha256(model)
            assert set(model.state_dict()) == set(load(path).state_dict())
            assert load(path).patches_sha256() == model.patches_sha256(), name
    assert both.has_class_patches and len(both.patches) == 5
    fewer = both.select_point_rows(torch.arange(len(both.patches)) < 2)
    assert len(fewer.patches) == 2 and fewer.class_patches is both.class_patches
    assert fewer.base_sha256() == both.base_sha256() and fewer.patches_sha256() != both.patches_sha256()
    rebuilt = PatchedModel.from_state_dict(load(tmp_path / "plain.safetensors"), both.state_dict())
    assert rebuilt.sha256() == both.sha256()
    with pytest.raises(ValueError, match="belong to no part"):
        PatchedModel.from_state_dict(load(tmp_path / "plain.safetensors"), {**both.state_dict(), "extra.x": X})


# --- load_model: a prune file, or a user's MLP state dict with layer sizes ----------------------------------------

def test_load_model_reads_prune_files_and_mlp_state_dicts(tmp_path):
    from prune_unlearn.core.models import mlp
    from prune_unlearn.core.serialization import load_model
    from prune_unlearn.errors import InputValidationError

    model = mlp(4, [8], 3).eval()
    save(model, tmp_path / "m.safetensors")
    x = torch.rand(5, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(load_model(tmp_path / "m.safetensors")(x), model(x))
    user = tiny_mlp((4, 8, 3), seed=2)  # a Flatten, then Linear layers named "1", "3"
    torch.save(user.state_dict(), tmp_path / "user.pt")
    torch.save({"state_dict": user.state_dict(), "epoch": 3}, tmp_path / "checkpoint.pt")
    for name in ("user.pt", "checkpoint.pt"):
        loaded = load_model(tmp_path / name, layers=[4, 8, 3])
        assert torch.equal(loaded(x), user(x))
    with pytest.raises(InputValidationError, match=r"user.pt is not a .safetensors file written by prune_unlearn\. "
                                                   r"HINT: .* also pass its layer sizes"):
        load_model(tmp_path / "user.pt")
    with pytest.raises(InputValidationError, match=r"Weight '1.weight' has shape \(8, 4\), but layer sizes "
                                                   r"\[4, 5, 3\] need \(5, 4\)"):
        load_model(tmp_path / "user.pt", layers=[4, 5, 3])
    with pytest.raises(InputValidationError, match=r"The 'layers' parameter of load_model must be a list of "
                                                   r"positive integers .* Got '4,8,3' instead\."):
        load_model(tmp_path / "user.pt", layers="4,8,3")
    with pytest.raises(FormatError, match="No model file at"):
        load_model(tmp_path / "missing.pt", layers=[4, 8, 3])
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(FormatError, match="is not a PyTorch state dict loadable with weights_only=True"):
        load_model(tmp_path / "junk.pt", layers=[4, 8, 3])
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(FormatError, match=r"does not hold a state dict \(a mapping of names to tensors\)"):
        load_model(tmp_path / "list.pt", layers=[4, 8, 3])
