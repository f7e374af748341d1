"""The ``prune`` command line, in-process (sqlite-utils style): exact exit codes, ``json.loads`` of stdout, exact
error text; the shared option bundles, the output helper, the exit-code policy and the deprecated spellings."""

import ast
import json
import re
from pathlib import Path

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from prune_unlearn.cli import cli
from prune_unlearn.cli.output import Output, output_options
from prune_unlearn.cli.policy import EXIT_CHECK_FAILED, EXIT_ERROR, EXIT_OK, EXIT_USAGE, command
from prune_unlearn.core.confusion import BOUND_METHODS
from prune_unlearn.errors import LedgerError
from prune_unlearn.experiments.datasets import dataset_names
from prune_unlearn.unlearn.forget import FORGET_TARGETS, STRATEGIES

ROOT = Path(__file__).resolve().parents[1]
CLI_DIR = ROOT / "src" / "prune_unlearn" / "cli"


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    path = d / "digits.safetensors"
    res = invoke("train", "--data", "digits", "--epochs", "8", "--out", path, "--json")
    assert res.exit_code == EXIT_OK, res.output
    return path, json.loads(res.output)


@pytest.fixture(scope="module")
def forgotten(trained, tmp_path_factory):
    """8 points forgotten with dual bounds: a patched model, its certificate and the indices file."""
    out = tmp_path_factory.mktemp("forgot")
    res = invoke("forget", "--model", trained[0], "--data", "digits", "--count", 8, "--bound", "dual", "--radius", "none",
                 "--out", out)
    assert res.exit_code == EXIT_OK, res.output
    return out


def test_exit_code_constants_are_the_documented_policy():
    assert (EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CHECK_FAILED) == (0, 1, 2, 3)
    assert click.ClickException.exit_code == EXIT_ERROR and click.UsageError.exit_code == EXIT_USAGE


def test_train_writes_model_and_reports(trained):
    path, info = trained
    assert path.is_file() and info["dataset"] == "digits" and info["test_accuracy"] > 0.8
    assert info["recipe"]["momentum"] == 0.5 and info["recipe"]["epochs"] == 8


def test_forget_with_count_and_json(trained, tmp_path):
    path, _ = trained
    out = tmp_path / "out"
    res = invoke("forget", "--model", path, "--data", "digits", "--count", 25, "--seed", 3, "--out", out, "--json")
    assert res.exit_code == EXIT_OK, res.output
    assert res.stderr == ""  # no notes, no progress bars: stdout holds exactly one JSON document
    report = json.loads(res.stdout)
    for key in ("A_tes_before", "A_tes_after", "A_res_before", "A_res_after", "A_u_before", "A_u_after",
                "changed_res", "changed_tes", "n_forget", "n_certified_region", "unlearn_seconds", "strategy",
                "bound", "seed", "files"):
        assert key in report
    assert report["A_u_after"] == 0 and report["n_forget"] == 25 and report["changed_tes"] == 0
    assert report["retrain_seconds"] is None
    assert json.loads((out / "report.json").read_text())["n_forget"] == 25
    cert = json.loads((out / "certificate.json").read_text())
    assert len(cert["claims"]) == 25
    # forgetting again from an indices file, on the patched model
    (tmp_path / "idx.txt").write_text("1, 2 3\n# comment\n4\n")
    res = invoke("forget", "--model", out / "patched.safetensors", "--data", "digits", "--indices",
                 tmp_path / "idx.txt", "--out", tmp_path / "o2")
    assert res.exit_code == EXIT_OK, res.output
    assert "forgot 4/4 points" in res.output


def test_forget_retrain_uses_the_recorded_recipe(trained, tmp_path):
    path, info = trained
    res = invoke("forget", "--model", path, "--data", "digits", "--count", 5, "--retrain", "--out", tmp_path / "o",
                 "--json")
    assert res.exit_code == EXIT_OK, res.output
    report = json.loads(res.stdout)
    assert report["retrain_seconds"] > 0
    assert report["unlearn_retrain_ratio"] == pytest.approx(report["unlearn_seconds"] / report["retrain_seconds"])


@pytest.mark.parametrize("args,code,message", [
    (["--count", "5", "--data", "nope"], EXIT_USAGE,
     "Error: Invalid value for '--data': 'nope' is not one of " + ", ".join(dataset_names()) + ", nor a .npz file of "
     "your own arrays."),
    (["--indices", "IDX", "--data", "digits"], EXIT_ERROR, "Error: Indices must be in [0, 1436] (training points); "
                                                          "got [99999].\n"),
    (["--data", "digits"], EXIT_USAGE, "Error: Use exactly one of --indices or --count.\n"),
    (["--data", "digits", "--count", "5", "--bound", "exact"], EXIT_USAGE,
     "Error: Invalid value for '--bound': 'exact' is not one of 'box', 'dual', 'lp'.\n"),
    (["--data", "digits", "--count", "99999"], EXIT_ERROR, "Error: --count 99999 exceeds the 1437 training points.\n"),
])
def test_forget_errors_write_nothing(trained, tmp_path, args, code, message):
    path, _ = trained
    (tmp_path / "idx.txt").write_text("3\n99999\n")
    args = [a.replace("IDX", str(tmp_path / "idx.txt")) for a in args]
    out = tmp_path / "out"
    res = invoke("forget", "--model", path, "--out", out, *args)
    assert res.exit_code == code
    assert message in res.output
    assert "Traceback" not in res.output
    assert not out.exists()


def test_missing_model_is_a_clean_error(tmp_path):
    missing = tmp_path / "nope.safetensors"
    res = invoke("forget", "--model", missing, "--data", "digits", "--count", 3, "--out", tmp_path / "o")
    assert res.exit_code == EXIT_ERROR and res.output == f"Error: No model file at {missing}.\n"


def test_audit_with_data_of_another_width_is_one_error_line(forgotten):
    """digits has 64 features, mnist5k 784: this used to end in a traceback."""
    res = invoke("audit", "--model", forgotten / "patched.safetensors", "--certificate", forgotten / "certificate.json",
                 "--data", "mnist5k", "--indices", forgotten / "forget_indices.txt")
    assert res.exit_code == EXIT_ERROR and "Traceback" not in res.output, res.output
    assert res.output.startswith("Error: The 'points' parameter of audit has inputs of shape (784,), which the model "
                                 "cannot take (its first layer takes 64 features)")
    assert res.output.count("\n") == 1 and "HINT: audit with the data set the model was trained on" in res.output


def test_os_errors_are_one_error_line(forgotten, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    res = invoke("export", "--model", forgotten / "patched.safetensors", "--out", blocker / "vnn", "--onnx")
    assert res.exit_code == EXIT_ERROR
    assert res.output == (f"Error: --out {blocker / 'vnn'} is under {blocker}, which is a file, not a folder. "
                          "HINT: choose another --out.\n")


@pytest.mark.slow  # trains FC(256×256) on digits: about a minute of CPU
def test_demo_json(tmp_path):
    res = invoke("demo", "--out", tmp_path / "demo", "--count", 30, "--json")
    assert res.exit_code == EXIT_OK, res.output
    assert res.stderr == ""  # the status lines are notes, off under --json
    report = json.loads(res.stdout)
    # the default mode: every point certified on its 12/255 ball
    assert report["A_u_after"] == 0 and report["n_certified_neighbourhood"] == 30
    assert report["radius"] == pytest.approx(12 / 255)
    assert report["changed_tes"] == 0 and report["changed_res"] == 0
    assert report["retrain_seconds"] > 0
    for name in ("patched.safetensors", "report.json", "certificate.json", "model.safetensors"):
        assert (tmp_path / "demo" / name).is_file()


def test_forget_from_a_user_state_dict(tmp_path, digits):
    torch.manual_seed(0)
    user = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    state = {"fc1.weight": user[0].weight, "fc1.bias": user[0].bias, "out.weight": user[2].weight,
             "out.bias": user[2].bias}
    torch.save(state, tmp_path / "user.pt")
    base = ["forget", "--model", tmp_path / "user.pt", "--data", "digits", "--count", 5]
    res = invoke(*base, "--layers", "64,16,10", "--out", tmp_path / "o", "--json")
    assert res.exit_code == EXIT_OK, res.output
    assert json.loads(res.stdout)["n_forgotten"] == 5
    res = invoke(*base, "--layers", "64,32,10", "--out", tmp_path / "o2")
    assert res.exit_code == EXIT_ERROR
    assert "has shape (16, 64), but layer sizes [64, 32, 10] need (32, 64)" in res.output
    res = invoke(*base, "--out", tmp_path / "o3")
    assert res.exit_code == EXIT_ERROR and "also pass its layer sizes" in res.output and "--layers" in res.output
    res = invoke(*base, "--layers", "64,x,10", "--out", tmp_path / "o4")
    assert res.exit_code == EXIT_USAGE
    assert "Error: Invalid value for '--layers': comma-separated integers, e.g. 100,200; got '64,x,10'." in res.output
    assert not any((tmp_path / o).exists() for o in ("o2", "o3", "o4"))


def test_audit_command_passes_then_rejects_a_tampered_certificate(forgotten, tmp_path):
    import shutil

    run = shutil.copytree(forgotten, tmp_path / "run")  # the shared run stays untampered
    args = ["audit", "--model", run / "patched.safetensors", "--certificate", run / "certificate.json",
            "--data", "digits", "--indices", run / "forget_indices.txt", "--samples", 3]
    res = invoke(*args, "--json")
    assert res.exit_code == EXIT_OK, res.output
    assert json.loads(res.stdout)["passed"] is True
    cert = json.loads((run / "certificate.json").read_text())
    cert["regions"][0]["margin"] *= 100
    cert["claims"] = [dict(c, margin=cert["regions"][0]["margin"]) if c["region"] == 0 else c for c in cert["claims"]]
    (run / "certificate.json").write_text(json.dumps(cert))
    res = invoke(*args)
    assert res.exit_code == EXIT_CHECK_FAILED and "FAILED" in res.output and "FAIL bounds [region 0]" in res.output
    res = invoke(*args, "--json")  # rejected: still exactly one JSON document, and exit 3
    assert res.exit_code == EXIT_CHECK_FAILED and json.loads(res.stdout)["passed"] is False
    res = invoke(*args[:5], "--data", "digits")
    assert res.exit_code == EXIT_USAGE
    assert "Error: Use --data and --indices together (the forgotten points), or neither." in res.output


def test_forget_class_command_with_gate_options(trained, tmp_path):
    path, _ = trained
    reports = {}
    for gate in ("--decision-gate", "--no-decision-gate"):
        out = tmp_path / gate
        res = invoke("forget-class", "--model", path, "--data", "digits", "--label", 3, "--radius-scale", 4,
                     "--intermediate", "ibp", gate, "--out", out, "--json")
        assert res.exit_code == EXIT_OK, res.output
        reports[gate] = json.loads(res.stdout)
        assert reports[gate]["A_u_after"] == 0 and (out / "patched.safetensors").is_file()
        assert json.loads((out / "certificate.json").read_text())["head"]["scope"] == "whole class 3"
    gated, plain = reports["--decision-gate"]["whole_class"], reports["--no-decision-gate"]["whole_class"]
    assert gated["A_tes_r_after"] >= gated["A_tes_r_before"] and gated["reach_other_test"] > 0
    assert plain["changed_other_test"] > gated["changed_other_test"]
    base = ["forget-class", "--model", path, "--data", "digits", "--label", 3, "--out", tmp_path / "bad"]
    res = invoke(*base, "--intermediate", "exact")
    assert res.exit_code == EXIT_USAGE and "'exact' is not one of 'crown', 'ibp'" in res.output
    res = invoke(*base, "--target", "runner-up")
    assert res.exit_code == EXIT_USAGE
    assert "Invalid value for '--target': 'random' or a class label (an integer); got 'runner-up'." in res.output
    res = invoke(*base, "--target", 3)  # the class itself: the library refuses
    assert res.exit_code == EXIT_ERROR and res.output.startswith("Error: The 'target' parameter of forget_class")
    assert not (tmp_path / "bad").exists()


def test_bench_json_names_the_markdown_file(tmp_path):
    res = invoke("bench", "fig5", "--data", "digits", "--sizes", "10", "--epochs", 1, "--out", tmp_path, "--json")
    assert res.exit_code == EXIT_OK, res.output
    doc = json.loads(res.stdout)
    assert doc == {"experiment": "fig5", "data": "digits", "folder": str(tmp_path / "digits"),
                   "markdown": str(tmp_path / "digits" / "fig5-digits.md")}
    assert Path(doc["markdown"]).is_file()
    res = invoke("bench", "table3", "--data", "digits", "--methods", "prune,magic", "--out", tmp_path)
    assert res.exit_code == EXIT_USAGE
    assert "Invalid value for '--methods': 'magic' is not one of prune, retrain, sisa, amnesiac, fu." in res.output


# --- the ledger's command root and the old spellings -------------------------------------------------------------

@pytest.fixture
def ledger_setup(tmp_path, digits):
    from prune_unlearn import save
    from prune_unlearn.core.models import mlp

    torch.manual_seed(0)
    model = mlp(digits.input_dim, [16, 16], digits.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.5)
    for _ in range(30):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(digits.X_train), digits.y_train).backward()
        opt.step()
    save(model.eval(), tmp_path / "model.safetensors")
    return tmp_path / "model.safetensors", ["--ledger", tmp_path / "requests.sqlite"]


def test_old_ledger_spellings_still_work_and_warn(ledger_setup, digits, tmp_path):
    model, led = ledger_setup
    np.save(tmp_path / "pts.npy", digits.X_train[[40, 41]].numpy())
    runs = [
        (["request", "add", *led, "--who", "alice", "--data", "digits", "--index", 3, "--json"], "request add"),
        (["request", "add", *led, "--who", "bob", "--points", tmp_path / "pts.npy", "--data", "digits", "--json"],
         "request add"),
        (["request", "list", *led, "--json"], "request list"),
        (["process", *led, "--model", model, "--json"], "process"),
        (["request", "undo", 1, *led, "--model", model, "--json"], "request undo"),
    ]
    docs = []
    for args, old in runs:
        res = invoke(*args)
        assert res.exit_code == EXIT_OK, res.output
        new = "prune ledger " + old.split()[-1]
        assert res.stderr == f"Deprecated: `prune {old}` is now `{new}`; the old spelling goes in the next release.\n"
        docs.append(json.loads(res.stdout))  # the note never reaches stdout
    assert docs[0]["status"] == "pending" and docs[1]["n_points"] == 2
    assert [r["id"] for r in docs[2]["requests"]] == [1, 2]
    assert docs[3]["requests"] == [1, 2] and docs[4]["request"] == 1
    res = invoke("ledger", "list", *led, "--json")  # the new spelling: no note
    assert res.exit_code == EXIT_OK and res.stderr == ""
    assert [r["status"] for r in json.loads(res.stdout)["requests"]] == ["undone", "processed"]
    # errors keep the policy under the old spellings
    res = invoke("request", "undo", 9, *led, "--model", model)
    assert res.exit_code == EXIT_ERROR and "Error: No request with id 9" in res.stderr


def test_old_spellings_are_hidden_from_the_main_help():
    res = invoke("--help")
    assert res.exit_code == EXIT_OK
    commands = res.output.split("Commands:")[1]
    listed = {line.split()[0] for line in commands.splitlines() if line.startswith("  ") and line[2] != " "}
    assert listed == {"audit", "bench", "demo", "export", "forget", "forget-class", "ledger", "train"}
    for path, new in ((["request", "add"], "prune ledger add"), (["process"], "prune ledger process")):
        res = invoke(*path, "--help")
        assert res.exit_code == EXIT_OK and f"Deprecated spelling of `{new}`" in res.output


def test_ledger_verify_exits_3_on_tampering(ledger_setup):
    import sqlite3

    model, led = ledger_setup
    assert invoke("ledger", "add", *led, "--who", "alice", "--data", "digits", "--index", 3).exit_code == EXIT_OK
    assert invoke("ledger", "process", *led, "--model", model).exit_code == EXIT_OK
    res = invoke("ledger", "verify", *led, "--model", model, "--json")
    assert res.exit_code == EXIT_OK and json.loads(res.stdout)["ok"] is True
    conn = sqlite3.connect(led[1])
    conn.execute("UPDATE events SET body = replace(body, 'alice', 'mallory') WHERE id = 1")
    conn.commit()
    conn.close()
    res = invoke("ledger", "verify", *led, "--json")
    assert res.exit_code == EXIT_CHECK_FAILED and json.loads(res.stdout)["ok"] is False
    res = invoke("ledger", "list", "--ledger", led[1].parent / "missing.sqlite")
    assert res.exit_code == EXIT_ERROR
    assert res.output == (f"Error: No ledger at {led[1].parent / 'missing.sqlite'}. HINT: `prune ledger add` "
                          "creates it; --ledger or $PRUNE_LEDGER names another file.\n")


# --- the toolkit: policy, output helper, option bundles ----------------------------------------------------------

def _policy_probe(exc):
    @command()
    @output_options
    def probe(output):
        """Probe.

        Example: prune probe
        """
        raise exc

    return CliRunner().invoke(probe, [])


def test_policy_turns_library_and_os_errors_into_one_line():
    res = _policy_probe(LedgerError("Request 3 is undone."))
    assert (res.exit_code, res.output) == (EXIT_ERROR, "Error: Request 3 is undone.\n")
    res = _policy_probe(PermissionError(13, "Permission denied", "out/report.json"))
    assert (res.exit_code, res.output) == (EXIT_ERROR, "Error: Permission denied: out/report.json\n")
    res = _policy_probe(ZeroDivisionError("a bug"))  # not a refusal: a bug stays visible
    assert isinstance(res.exception, ZeroDivisionError)


def test_output_helper_prints_one_document(capsys):
    out = Output(as_json=True)
    assert out.progress is False
    out.note("not shown under --json")
    out.result({"a": 1}, "human")
    with pytest.raises(RuntimeError, match="printed its result twice"):
        out.result({"a": 2}, "human")
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"a": 1} and captured.err == ""
    human = Output(silent=True)
    assert human.progress is False and Output().progress is True
    human.note("a note")
    human.result({"a": 1}, "human text")
    captured = capsys.readouterr()
    assert captured.out == "human text\n" and captured.err == "a note\n"


def _all_commands(group=cli, path=()):
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _all_commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


def test_choices_come_from_the_library_constants():
    expected = {"bound": tuple(BOUND_METHODS), "strategy": tuple(STRATEGIES), "data_name": tuple(dataset_names())}
    seen = set()
    for path, cmd in _all_commands():
        for param in cmd.params:
            if param.name in expected:
                assert tuple(param.type.choices) == expected[param.name], (path, param.name)
                seen.add(param.name)
            if param.name == "target" and path == ("forget",):
                assert tuple(param.type.choices) == tuple(FORGET_TARGETS)
                seen.add("target")
    assert seen == {"bound", "strategy", "data_name", "target"}


def test_data_help_lists_every_data_set():
    for path, cmd in _all_commands():
        if any(p.name == "data_name" for p in cmd.params):
            res = invoke(*path, "--help")
            text = re.sub(r"\s+", "", res.output)
            assert "[" + "|".join(dataset_names()) + "|FILE.npz]" in text, path
            assert {"purchase", "har", "har-uci"} <= set(dataset_names())


def _command_line_section() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split("## Command line", 1)[1].split("\n## ", 1)[0]


def test_every_command_has_help_with_an_example_and_is_in_the_readme():
    section = re.sub(r"[ \t]+", " ", _command_line_section())
    paths = [path for path, cmd in _all_commands() if not cmd.hidden and not _hidden_parent(path)]
    assert ("ledger", "add") in paths and ("audit",) in paths and ("export",) in paths
    assert ("request", "add") not in paths and ("process",) not in paths
    for path in paths:
        spelling = "prune " + " ".join(path)
        res = invoke(*path, "--help")
        assert res.exit_code == EXIT_OK
        examples = [line.strip() for line in res.output.splitlines() if line.strip().startswith("Example: ")]
        assert len(examples) == 1 and (examples[0] + " ").startswith(f"Example: {spelling} "), path
        assert re.search(re.escape(spelling) + r"[ \n]", section), f"{spelling} is not in README's Command line"


def _hidden_parent(path) -> bool:
    return len(path) > 1 and cli.commands[path[0]].hidden


def test_cli_modules_stay_small():
    for module in CLI_DIR.glob("*.py"):
        source = module.read_text()
        assert len(source.splitlines()) <= 400, module.name
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno + 1 <= 80, (module.name, node.name)


def test_version_option():
    from prune_unlearn._version import __version__

    res = invoke("--version")
    assert res.exit_code == EXIT_OK and res.output == f"prune, version {__version__}\n"
