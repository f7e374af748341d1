"""Output paths are checked before any work, and output folders appear whole or not at all (kill -9 included)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import prune_unlearn
from prune_unlearn import save
from prune_unlearn._crash import CRASH_ENV
from prune_unlearn.cli import cli
from prune_unlearn.cli.forget import OUTPUT_FILES
from prune_unlearn.cli.paths import FOLDER_CRASH_POINTS, OutputFolder
from prune_unlearn.core.models import mlp
from prune_unlearn.errors import InputValidationError

SRC = str(Path(prune_unlearn.__file__).resolve().parents[1])
FILES = sorted(OUTPUT_FILES.values())


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def small_model(tmp_path_factory, digits):
    """FC(16) on digits after 40 full-batch steps: cheap, with a realistic region structure."""
    torch.manual_seed(0)
    model = mlp(digits.input_dim, [16], digits.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.5)
    for _ in range(40):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(digits.X_train), digits.y_train).backward()
        opt.step()
    path = tmp_path_factory.mktemp("model") / "digits16.safetensors"
    save(model.eval(), path)
    return path


def _complete(folder: Path) -> bool:
    """A forget output folder with every file, each readable."""
    if sorted(p.name for p in folder.iterdir()) != FILES:
        return False
    report = json.loads((folder / "report.json").read_text())
    cert = json.loads((folder / "certificate.json").read_text())
    n = len((folder / "forget_indices.txt").read_text().split())
    return report["n_forget"] == n == len(cert["claims"]) + len(cert.get("failed", []))


BAD_OUTS = [
    ("under-a-file", lambda tmp: tmp / "a-file" / "out", "is under {tmp}/a-file, which is a file, not a folder"),
    ("a-file", lambda tmp: tmp / "a-file", "Invalid value for '--out': Directory '{tmp}/a-file' is a file."),
    ("proc", lambda tmp: Path("/proc/prune-test/out"), "Cannot write --out /proc/prune-test/out: No such file or "
                                                        "directory in /proc"),
    ("sys", lambda tmp: Path("/sys/prune-test"), "Cannot write --out /sys/prune-test:"),
]


@pytest.mark.parametrize("name,out,message", BAD_OUTS, ids=[b[0] for b in BAD_OUTS])
@pytest.mark.parametrize("command", ["forget", "forget-class", "export", "demo"])
def test_a_bad_out_is_refused_before_any_work(tmp_path, name, out, message, command):
    """The model path does not exist: the --out error coming first shows nothing was loaded, let alone computed."""
    if name == "sys" and (os.geteuid() != 0 or not Path("/sys").is_dir()):
        pytest.skip("the /sys case is about root, who may write anywhere else")
    (tmp_path / "a-file").write_text("x")
    out = out(tmp_path)
    missing = tmp_path / "missing.safetensors"
    args = {"forget": ["forget", "--model", missing, "--data", "digits", "--count", 3],
            "forget-class": ["forget-class", "--model", missing, "--data", "digits", "--label", 3],
            "export": ["export", "--model", missing], "demo": ["demo"]}[command]
    res = invoke(*args, "--out", out)
    assert res.exit_code == (2 if name == "a-file" else 1), res.output  # click's own check: a usage error
    assert res.output.splitlines()[-1].startswith("Error: ") and message.format(tmp=tmp_path) in res.output
    assert "Traceback" not in res.output and "missing.safetensors" not in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # nothing written, no .partial folder


@pytest.mark.parametrize("out,message", [
    ("a-file/m.safetensors", "--out {tmp}/a-file/m.safetensors is under {tmp}/a-file, which is a file, not a folder"),
    ("", "Invalid value for '--out': File '{tmp}' is a directory."),  # click's own check: a usage error
    ("/proc/prune-test/m.safetensors", "Cannot write --out /proc/prune-test/m.safetensors: No such file or directory"),
])
def test_train_refuses_a_bad_out_before_training(tmp_path, out, message):
    (tmp_path / "a-file").write_text("x")
    res = invoke("train", "--data", "digits", "--epochs", 500, "--out", tmp_path / out)
    assert res.exit_code == (2 if out == "" else 1), res.output
    assert res.output.splitlines()[-1].startswith("Error: " + message.format(tmp=tmp_path)), res.output
    assert "training" not in res.output  # refused before the data set was loaded or a model trained
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_an_existing_folder_is_refused_unless_overwrite_replaces_it_whole(tmp_path, small_model):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old-notes.txt").write_text("an earlier run")
    base = ["forget", "--model", small_model, "--data", "digits", "--count", 3, "--out", out, "--silent"]
    res = invoke(*base)
    assert res.exit_code == 1 and "already exists and holds files" in res.output and "--overwrite" in res.output
    assert sorted(p.name for p in out.iterdir()) == ["old-notes.txt"]
    res = invoke(*base, "--overwrite")
    assert res.exit_code == 0, res.output
    assert _complete(out)  # the old file is gone: the folder was replaced as a whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no .partial or .replaced folder left
    empty = tmp_path / "empty"
    empty.mkdir()  # an empty folder is simply filled
    assert invoke("forget", "--model", small_model, "--data", "digits", "--count", 2, "--out", empty).exit_code == 0
    assert _complete(empty)


def test_output_folder_removes_its_temporary_folder_on_error_and_stale_ones_of_dead_runs(tmp_path):
    stale = tmp_path / ".out.partial-999999999-abcd"  # a pid that cannot be alive
    stale.mkdir()
    live = tmp_path / f".out.partial-{os.getpid()}-beef"
    live.mkdir()
    with pytest.raises(RuntimeError):
        with OutputFolder(tmp_path / "out") as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("the work failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name]  # stale one removed, ours removed
    with pytest.raises(InputValidationError, match="already exists and holds files"):
        OutputFolder(tmp_path)


def _forget_subprocess(model: Path, out: Path, crash_at: str | None = None, *extra):
    env = {**os.environ, "PYTHONPATH": SRC}
    env.pop(CRASH_ENV, None)
    if crash_at:
        env[CRASH_ENV] = crash_at
    code = "import torch, sys; torch.set_num_threads(1); from prune_unlearn.cli import main; sys.argv[0] = 'prune'; main()"
    return subprocess.Popen([sys.executable, "-c", code, *extra, "--model", str(model), "--data", "digits",
                             "--out", str(out), "--silent"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["forget", "forget-class"])
def test_kill_9_at_any_moment_leaves_no_folder_or_the_complete_one(tmp_path, small_model, command):
    """SIGKILL at each named step of the folder commit and after a series of delays: --out is absent or complete,
    and the next run (which removes the stale temporary folder) completes it."""
    extra = ["forget", "--count", "5"] if command == "forget" else ["forget-class", "--label", "3", "--intermediate",
                                                                   "ibp", "--radius-scale", "2"]
    names = FILES if command == "forget" else sorted(set(FILES) - {"forget_indices.txt"})
    points = ["output_model_written", *FOLDER_CRASH_POINTS]
    for k, crash_at in enumerate(points):
        out = tmp_path / f"crash-{k}"
        proc = _forget_subprocess(small_model, out, crash_at, *extra)
        assert proc.wait(timeout=600) == -signal.SIGKILL, proc.stderr.read()
        assert (out.exists() and sorted(p.name for p in out.iterdir()) == names) == (crash_at == "output_after_rename")
        assert out.exists() == (crash_at == "output_after_rename")
    for k, delay in enumerate((1.0, 3.0, 6.0)):
        out = tmp_path / f"timed-{k}"
        proc = _forget_subprocess(small_model, out, None, *extra)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert not out.exists() or sorted(p.name for p in out.iterdir()) == names
    out = tmp_path / "crash-0"  # the first crash left only a stale .partial folder: a new run completes
    proc = _forget_subprocess(small_model, out, None, *extra)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    assert sorted(p.name for p in out.iterdir()) == names
    assert not list(tmp_path.glob(".crash-0.partial-*"))


def test_progress_is_a_line_every_interval_when_stderr_is_not_a_terminal(monkeypatch, capsys):
    """`prune train` into a log file used to print nothing for the whole run."""
    from prune_unlearn import _progress

    monkeypatch.setattr(_progress._Lines, "LINE_SECONDS", 0.0)
    assert list(_progress.progress_bar(range(3), enabled=True, desc="train", unit="epoch")) == [0, 1, 2]
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" (")[0] for line in lines] == ["train: 1/3 epoch", "train: 2/3 epoch", "train: 3/3 epoch"]
    assert list(_progress.progress_bar(range(3), enabled=False)) == [0, 1, 2] and capsys.readouterr().err == ""
