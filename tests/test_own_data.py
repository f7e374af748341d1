"""Bring your own data and model: a user's .npz used as given (no re-split) and an ONNX MLP (checked against
onnxruntime, other operators refused by name) in forget, forget-class, audit and ledger add."""

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from prune_unlearn import load
from prune_unlearn.cli import cli
from prune_unlearn.core.onnx_import import load_onnx
from prune_unlearn.core.serialization import load_model
from prune_unlearn.errors import DataError, UnsupportedModelError
from prune_unlearn.experiments.datasets import dataset_names, load_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _onnx_mlp(model: torch.nn.Sequential, path, *, extra_op: str | None = None, gemm: bool = True):
    """The MLP as ONNX: Flatten, then Gemm (or MatMul + Add) and Relu nodes; ``extra_op`` appended at the end."""
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    inits, nodes, cur = [], [helper.make_node("Flatten", ["x"], ["f"], axis=1)], "f"
    for k, lin in enumerate(linears):
        w, b = lin.weight.detach().numpy(), lin.bias.detach().numpy()
        if gemm:
            inits += [numpy_helper.from_array(w, f"W{k}"), numpy_helper.from_array(b, f"b{k}")]
            nodes.append(helper.make_node("Gemm", [cur, f"W{k}", f"b{k}"], [f"g{k}"], transB=1))
        else:
            inits += [numpy_helper.from_array(np.ascontiguousarray(w.T), f"W{k}"), numpy_helper.from_array(b, f"b{k}")]
            nodes += [helper.make_node("MatMul", [cur, f"W{k}"], [f"m{k}"]),
                      helper.make_node("Add", [f"m{k}", f"b{k}"], [f"g{k}"])]
        cur = f"g{k}"
        if k < len(linears) - 1:
            nodes.append(helper.make_node("Relu", [cur], [f"r{k}"]))
            cur = f"r{k}"
    if extra_op:
        nodes.append(helper.make_node(extra_op, [cur], ["z"]))
        cur = "z"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                           ["n", linears[0].in_features])],
                              [helper.make_tensor_value_info(cur, TensorProto.FLOAT, ["n", linears[-1].out_features])],
                              inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture(scope="module")
def own(tmp_path_factory, digits):
    """A user's arrays (digits rows in a shuffled order of their own, a test set of their own) and an ONNX MLP."""
    folder = tmp_path_factory.mktemp("own")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(digits.y_train))[:400]
    X, y = digits.X_train.numpy()[order], digits.y_train.numpy()[order]
    Xt, yt = digits.X_test.numpy()[:100], digits.y_test.numpy()[:100]
    np.savez(folder / "mine.npz", X_train=X, y_train=y, X_test=Xt, y_test=yt, domain_lower=0.0, domain_upper=1.0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.5)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(torch.from_numpy(X)), torch.from_numpy(y)).backward()
        opt.step()
    model.eval()
    return folder, X, y, model, _onnx_mlp(model, folder / "mlp.onnx")


def test_own_arrays_are_used_as_given(own):
    folder, X, y, _, _ = own
    ds = load_dataset(str(folder / "mine.npz"))
    assert torch.equal(ds.X_train, torch.from_numpy(X)) and torch.equal(ds.y_train, torch.from_numpy(y))  # no re-split
    assert len(ds.y_test) == 100 and ds.num_classes == 10 and (ds.domain_lower, ds.domain_upper) == (0.0, 1.0)
    np.savez(folder / "train-only.npz", X_train=X, y_train=y, domain_lower=-1, domain_upper=2)
    only = load_dataset(str(folder / "train-only.npz"))
    assert len(only.y_test) == 0 and only.X_test.shape == (0, 64) and only.domain_lower == -1.0


@pytest.mark.parametrize("arrays,message", [
    (dict(X_train=np.zeros((4, 3)), y_train=np.arange(4)), r"has no array 'domain_lower', 'domain_upper'. HINT: np.savez"),
    (dict(X_train=np.full((4, 3), 2.0), y_train=np.arange(4), domain_lower=0, domain_upper=1),
     r"'X_train' rows \[0, 1, 2, 3\] lie outside the declared domain box \[0, 1\]"),
    (dict(X_train=np.zeros((4, 3)), y_train=np.arange(4.0), domain_lower=0, domain_upper=1),
     "'y_train' must be a 1-D array of integer class labels"),
    (dict(X_train=np.zeros((4, 3)), y_train=np.array([0, 1, 1, 255]), domain_lower=0, domain_upper=1),
     r"skip class\(es\) \[2, 3, 4"),
    (dict(X_train=np.zeros((4, 3)), y_train=np.arange(4), X_test=np.zeros((2, 3)), domain_lower=0, domain_upper=1),
     "only one of X_test and y_test"),
    (dict(X_train=np.zeros((4, 3)), y_train=np.arange(4), domain_lower=np.zeros(3), domain_upper=1),
     "'domain_lower' must be one finite number"),
])
def test_bad_own_arrays_are_clear_errors(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load_dataset(str(tmp_path / "bad.npz"))


def test_pickled_npz_is_refused(tmp_path):
    np.savez(tmp_path / "p.npz", X_train=np.array([{"evil": 1}], dtype=object), y_train=np.arange(1),
             domain_lower=0, domain_upper=1)
    with pytest.raises(DataError, match="Cannot read .* as an .npz of plain arrays"):
        load_dataset(str(tmp_path / "p.npz"))


@pytest.mark.parametrize("gemm", [True, False], ids=["gemm", "matmul-add"])
def test_onnx_mlp_converts_exactly(own, tmp_path, gemm):
    _, X, _, model, _ = own
    path = _onnx_mlp(model, tmp_path / "m.onnx", gemm=gemm)
    converted = load_model(path)
    x = torch.from_numpy(X[:50])
    assert torch.allclose(converted(x), model(x), atol=1e-5)
    assert [type(m).__name__ for m in converted] == ["Flatten", "Linear", "ReLU", "Linear"]


def test_other_onnx_operators_are_refused_by_name(own, tmp_path):
    path = _onnx_mlp(own[3], tmp_path / "sig.onnx", extra_op="Sigmoid")
    with pytest.raises(UnsupportedModelError, match="uses the operator Sigmoid .* converts only Gemm, MatMul, Add"):
        load_onnx(path)
    res = invoke("forget", "--model", path, "--data", own[0] / "mine.npz", "--count", 3, "--out", tmp_path / "o")
    assert res.exit_code == 1 and "operator Sigmoid" in res.output and "Traceback" not in res.output
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf")
    res = invoke("forget", "--model", tmp_path / "junk.onnx", "--data", "digits", "--count", 3, "--out", tmp_path / "o")
    assert res.exit_code == 1 and "is not a valid ONNX model" in res.output and not (tmp_path / "o").exists()


def test_forget_audit_and_ledger_on_own_data_and_onnx_model(own, tmp_path):
    folder, X, y, _, onnx_path = own
    data = folder / "mine.npz"
    (tmp_path / "idx.txt").write_text("5 17 230\n")
    out = tmp_path / "forgot"
    res = invoke("forget", "--model", onnx_path, "--data", data, "--indices", tmp_path / "idx.txt", "--out", out,
                 "--json", "--silent")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["n_forget"] == 3
    patched = load(out / "patched.safetensors")
    idx = [5, 17, 230]  # the user's own rows, not rows of a re-split
    assert (patched(torch.from_numpy(X[idx])).argmax(1) != torch.from_numpy(y[idx])).all()
    res = invoke("audit", "--model", out / "patched.safetensors", "--certificate", out / "certificate.json",
                 "--data", data, "--indices", out / "forget_indices.txt")
    assert res.exit_code == 0, res.output
    res = invoke("forget-class", "--model", onnx_path, "--data", data, "--label", 3, "--intermediate", "ibp",
                 "--out", tmp_path / "class", "--silent")
    assert res.exit_code == 0, res.output
    ledger = tmp_path / "l.sqlite"
    res = invoke("ledger", "add", "--ledger", ledger, "--requester", "a@b", "--data", data, "--index", 5,
                 "--model", onnx_path)
    assert res.exit_code == 0, res.output
    np.save(tmp_path / "p.npy", X[:2])
    np.save(tmp_path / "l.npy", np.array([3, 12]))
    res = invoke("ledger", "add", "--ledger", ledger, "--requester", "a@b", "--points", tmp_path / "p.npy",
                 "--labels", tmp_path / "l.npy", "--model", onnx_path)
    assert res.exit_code == 1 and "12" in res.output and "Traceback" not in res.output, res.output


def test_train_on_own_arrays(own, tmp_path):
    res = invoke("train", "--data", own[0] / "mine.npz", "--epochs", 2, "--out", tmp_path / "m.safetensors", "--json")
    assert res.exit_code == 0, res.output
    model = load(tmp_path / "m.safetensors")
    assert [m.out_features for m in model if isinstance(m, torch.nn.Linear)] == [256, 10]


def test_help_lists_every_data_set_and_own_arrays():
    for command in (["forget"], ["forget-class"], ["audit"], ["ledger", "add"], ["train"]):
        text = "".join(invoke(*command, "--help").output.split())  # wrapped lines may split "fashion-mnist"
        assert all(name in text for name in dataset_names()), (command, text)
        assert "yourown.npz" in text
    assert {"digits", "mnist5k", "mnist", "fashion-mnist", "cifar10", "har", "har-uci", "purchase"} <= set(dataset_names())
