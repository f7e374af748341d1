"""The ledger never jams: ``add`` refuses what ``process`` could not forget (and writes nothing, not even a file),
a pending request can be rejected with a recorded reason, ``process`` rejects or skips a malformed request
instead of failing every batch after it, and no lock file is left behind."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from prune_unlearn import save
from prune_unlearn.cli import cli
from prune_unlearn.core.models import mlp
from prune_unlearn.errors import InputValidationError, LedgerError
from prune_unlearn.ops.ledger import Ledger
from test_ledger import SRC, assert_consistent, synthetic, tiny_model, world  # noqa: F401 - world is a fixture

REGION = {"radius": None}  # region-only: these tests check linear-region patches (forget's default is a ball)


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _write_bad_files(tmp: Path, ds) -> dict:
    """Points and labels files that a request must never be made of (each name says what is wrong)."""
    files = {
        "nan.npy": np.where(np.arange(4) == 2, np.nan, 0.5).astype(np.float32)[None],
        "outside.npy": np.full((2, 4), 3.0, dtype=np.float32),
        "wide.npy": np.full((2, 7), 0.5, dtype=np.float32),
        "ok.npy": ds.X_train[:2].numpy(),
        "label9.npy": np.array([9, 0]),
        "label10.npy": np.array([1, 0]),
        "floatlabels.npy": np.array([1.0, 0.0]),
    }
    for name, array in files.items():
        np.save(tmp / name, array)
    np.save(tmp / "pickled.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    (tmp / "garbage.npy").write_bytes(b"\x93NUMPY\x01\x00\x76\x00{'descr': '<f4', 'fortran_order': False, 'shape'")
    (tmp / "zeros.npy").write_bytes(b"\x00" * 64)
    return files


@pytest.mark.parametrize("kwargs,match", [
    ({"points_file": "nan.npy"}, "holds NaN or infinite values"),
    ({"points_file": "outside.npy"}, r"points \[0, 1\] lie outside the domain box of the default domain box"),
    ({"points_file": "outside.npy", "labels_file": "label10.npy", "data": "DS"},
     r"outside the domain box of data set 'synthetic'"),
    ({"points_file": "wide.npy", "labels_file": "label10.npy", "data": "DS"},
     r"have shape \(7,\), but data set 'synthetic' takes \(4,\)"),
    ({"points_file": "wide.npy", "model": "MODEL"}, r"points of shape \(7,\) do not fit the model"),
    ({"points_file": "ok.npy", "labels_file": "label9.npy", "model": "MODEL"},
     r"labels must be in \[0, 2\] \(the model has 3 classes\); got \[9\]"),
    ({"points_file": "ok.npy", "labels_file": "label9.npy", "data": "DS"},
     r"labels must be in \[0, 2\] \(data set 'synthetic' has 3 classes\)"),
    ({"points_file": "ok.npy", "labels_file": "label9.npy"}, "labels cannot be checked against a number of classes"),
    ({"points_file": "ok.npy", "labels_file": "floatlabels.npy", "model": "MODEL"}, "must be 2 non-negative integers"),
    ({"points_file": "ok.npy", "labels_file": "pickled.npy", "model": "MODEL"}, "Cannot read the labels file"),
    ({"points_file": "pickled.npy"}, "is not a readable .npy file .*Object arrays cannot be loaded"),
    ({"points_file": "garbage.npy"}, "is not a readable .npy file"),
    ({"points_file": "zeros.npy"}, "is not a readable .npy file"),
    ({"indices": [1.5], "data": "DS"}, "indices must be integers"),
    ({"indices": [3, 3], "data": "DS"}, "repeated indices"),
    ({"indices": [-1], "data": "DS"}, "out of range"),
])
def test_add_refuses_what_process_could_not_forget_and_creates_no_file(world, kwargs, match):
    _write_bad_files(world.tmp, world.ds)
    subs = {"DS": world.ds, "MODEL": world.path}
    kwargs = {k: subs[v] if isinstance(v, str) and v in subs else (world.tmp / v if k.endswith("_file") else v)
              for k, v in kwargs.items()}
    with Ledger(world.ledger) as ledger:
        with pytest.raises(LedgerError, match=match):
            ledger.add("mallory", **kwargs)
        assert ledger.requests() == []
    assert not world.ledger.exists()  # nothing written, not even an empty ledger


@pytest.mark.parametrize("args,message", [
    (["--points", "nan.npy"], "Error: The points file {tmp}/nan.npy holds NaN or infinite values.\n"),
    (["--points", "ok.npy", "--labels", "label9.npy", "--model", "MODEL"],
     "Error: The request of 'x': labels must be in [0, 2] (the model has 3 classes); got [9].\n"),
    (["--points", "outside.npy"], "lie outside the domain box"),
    (["--points", "pickled.npy"], "Object arrays cannot be loaded when allow_pickle=False"),
    (["--points", "garbage.npy"], "is not a readable .npy file"),
    (["--data", "digits", "--index", 3, "--index", 3], "got repeated indices"),
    (["--data", "digits", "--index", 99999], "got indices out of range: [99999]"),
])
def test_cli_add_refusals_are_one_error_line_and_leave_no_ledger(world, args, message):
    _write_bad_files(world.tmp, world.ds)
    args = [str(world.path) if a == "MODEL" else (world.tmp / a if str(a).endswith(".npy") else a) for a in args]
    res = invoke("ledger", "add", "--ledger", world.ledger, "--who", "x", *args)
    assert res.exit_code == 1 and res.output.startswith("Error: ") and "Traceback" not in res.output
    assert message.format(tmp=world.tmp) in res.output
    assert not world.ledger.exists() and not list(world.tmp.glob("*.lock"))


def _smaller_model(path: Path, classes: int = 2) -> None:
    """A model file with fewer classes than the requests were checked against: `process` must reject the
    requests whose labels it does not have, and forget the others."""
    torch.manual_seed(3)
    save(mlp(4, [8, 8], classes).eval(), path)


def test_process_rejects_requests_it_can_never_forget_and_processes_the_others(world):
    ds = world.ds
    with Ledger(world.ledger) as ledger:
        labels_2 = [i for i in range(40) if ds.y_train[i] == 2][:2]
        ok = [i for i in range(40) if ds.y_train[i] != 2][:3]
        ledger.add("bad", indices=labels_2, data=ds)  # label 2: fine for the 3-class data set ...
        ledger.add("good", indices=ok, data=ds)
        _smaller_model(world.path)  # ... but the model they are processed on has 2 classes
        result = ledger.process(world.path, data=ds, neighbourhood=REGION)
        assert result.requests == [2] and [r["id"] for r in result.rejected] == [1]
        assert "labels must be in [0, 1] (the model has 2 classes); got [2, 2]" in result.rejected[0]["reason"]
        assert "rejected request 1: Request 1: labels must be in [0, 1]" in result.summary()
        bad = ledger.get(1)
        assert bad.status == "rejected" and bad.rejection["by"] == "process" and bad.patterns == []
        assert ledger.events()[-1]["kind"] == "reject" and ledger.verify(world.path).ok
        assert ledger.process(world.path, data=ds, neighbourhood=REGION).summary() == "nothing to do: no pending requests"


def test_a_request_forget_refuses_is_isolated_and_rejected_while_the_rest_of_its_batch_is_committed(world,
                                                                                                   monkeypatch):
    import importlib

    forget_module = importlib.import_module("prune_unlearn.unlearn.forget")  # the module, not the function
    real = forget_module.forget
    poison = world.ds.X_train[7]

    def picky_forget(model, points, **kwargs):  # stands in for a refusal screening cannot foresee
        if (points == poison).all(dim=1).any():
            raise InputValidationError("The 'points' parameter of forget holds a point it cannot take.")
        return real(model, points, **kwargs)

    monkeypatch.setattr(forget_module, "forget", picky_forget)
    with Ledger(world.ledger) as ledger:
        ledger.add_many([{"requester": f"u{i}", "indices": [i]} for i in range(4, 10)], data=world.ds)
        result = ledger.process(world.path, data=world.ds, batch_size=6, neighbourhood=REGION)
        assert result.requests == [1, 2, 3, 5, 6] and [r["id"] for r in result.rejected] == [4]
        assert result.rejected[0]["reason"].startswith("forget refused its points: The 'points' parameter")
        assert len(result.batches) == 1 and len(result.batches[0]["events"]) >= 2  # halves committed
        assert_consistent(ledger, world.path, world.ds)


def test_an_operator_rejects_a_pending_request_with_a_recorded_reason(world):
    ds = world.ds
    with Ledger(world.ledger) as ledger:
        ledger.add("a", indices=[0], data=ds)
        ledger.add("b", indices=[1], data=ds)
        with pytest.raises(LedgerError, match="needs a reason"):
            ledger.reject(1, "  ")
        req = ledger.reject(1, "withdrawn by the requester")
        assert req.status == "rejected" and req.rejection == {"reason": "withdrawn by the requester",
                                                              "by": "operator", "event": 3}
        assert ledger.process(world.path, data=ds, neighbourhood=REGION).requests == [2]
        for rid, status in ((1, "rejected"), (2, "processed")):
            with pytest.raises(LedgerError, match=f"Request {rid} is {status}: only a pending request can be "
                                                  "rejected"):
                ledger.reject(rid, "again")
        with pytest.raises(LedgerError, match="No request with id 9"):
            ledger.reject(9, "x")
        assert ledger.verify(world.path).ok
        events = ledger.events()
        assert [e["kind"] for e in events] == ["add", "add", "reject", "process"]
        assert events[2]["body"] == {"request": 1, "reason": "withdrawn by the requester", "by": "operator"}
    assert not list(world.tmp.glob("*.lock"))


def test_cli_reject_and_list(world):
    led = ["--ledger", world.ledger]
    assert invoke("ledger", "add", *led, "--who", "a", "--points", _points(world, 0)).exit_code == 0
    res = invoke("ledger", "reject", 1, *led, "--reason", "duplicate of ticket 12", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["rejection"]["reason"] == "duplicate of ticket 12"
    res = invoke("ledger", "list", *led, "--status", "rejected")
    assert "rejected by operator: duplicate of ticket 12" in res.output
    res = invoke("ledger", "reject", 1, *led, "--reason", "again")
    assert res.exit_code == 1 and res.output.startswith("Error: Request 1 is rejected")
    res = invoke("ledger", "reject", 1, *led)
    assert res.exit_code == 2 and "Missing option '--reason'" in res.output


def _points(world, k):
    path = world.tmp / f"r{k}.npy"
    np.save(path, world.ds.X_train[4 * k:4 * k + 4].numpy())
    return path


def test_no_lock_file_is_left_and_a_stale_one_is_taken_over(world):
    lock = world.tmp / "ledger.sqlite.lock"
    with Ledger(world.ledger) as ledger:
        ledger.add("a", points_file=_points(world, 0))
        ledger.process(world.path, neighbourhood=REGION)
        assert not lock.exists()
        ledger.add("b", points_file=_points(world, 1))
        lock.write_text("")  # what a writer killed by SIGKILL leaves: a file, but no lock on it
        ledger.process(world.path, neighbourhood=REGION)
        ledger.undo(1, world.path)
        assert not lock.exists()


def _kill_after(seconds: float, code: str, *args) -> int:
    """Run ``code`` in a fresh interpreter and kill -9 it after ``seconds`` (if it is still running)."""
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return proc.returncode


@pytest.mark.slow
def test_kill_9_at_arbitrary_moments_of_process_and_undo_leaves_old_or_new(world):
    """Not only at the named crash points: SIGKILL after a series of delays, each followed by a check that model and
    ledger agree (both old or both new), then by the run that completes the work."""
    with Ledger(world.ledger) as ledger:
        for k in range(6):
            ledger.add(f"u{k}", points_file=_points(world, k))
    code_process = ("import sys, torch; torch.set_num_threads(1); from prune_unlearn.ops.ledger import Ledger; "
                    "Ledger(sys.argv[1]).process(sys.argv[2], batch_size=2, neighbourhood={'radius': None})")
    code_undo = ("import sys, torch; torch.set_num_threads(1); from prune_unlearn.ops.ledger import Ledger; "
                 "Ledger(sys.argv[1]).undo(int(sys.argv[3]), sys.argv[2])")
    killed = 0
    for delay in (0.5, 1.5, 2.5, 3.5, 5.0):
        killed += _kill_after(delay, code_process, world.ledger, world.path) == -signal.SIGKILL
        with Ledger(world.ledger) as ledger:  # reopening recovers; the state is the old one or the new one
            if any(e["kind"] == "process" for e in ledger.events()):
                assert_consistent(ledger, world.path)
            assert ledger.verify().ok
    with Ledger(world.ledger) as ledger:
        ledger.process(world.path, batch_size=2, neighbourhood=REGION)
        assert [r.status for r in ledger.requests()] == ["processed"] * 6
    for delay, rid in ((0.5, 1), (1.5, 2), (3.0, 3)):
        killed += _kill_after(delay, code_undo, world.ledger, world.path, rid) == -signal.SIGKILL
        with Ledger(world.ledger) as ledger:
            assert_consistent(ledger, world.path)
            assert ledger.get(rid).status in ("processed", "undone")
    assert killed >= 1  # at least one run was really killed mid-way (the others may have finished first)
    with Ledger(world.ledger) as ledger:  # a killed writer may leave its lock file; the next writer removes it
        ledger.undo(4, world.path)
    assert not (world.tmp / "ledger.sqlite.lock").exists()
