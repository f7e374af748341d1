import json

import pytest
from click.testing import CliRunner

from prune_unlearn.cli import cli


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    path = d / "digits.safetensors"
    res = CliRunner().invoke(cli, ["train", "--data", "digits", "--epochs", "8", "--out", str(path), "--json"])
    assert res.exit_code == 0, res.output
    return path, json.loads(res.output)


def test_train_writes_model_and_reports(trained):
    path, info = trained
    assert path.is_file() and info["dataset"] == "digits" and info["test_accuracy"] > 0.8
    assert info["recipe"]["momentum"] == 0.5


def test_forget_with_count_and_json(trained, tmp_path):
    path, _ = trained
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["forget", "--model", str(path), "--data", "digits", "--count", "25",
                                   "--seed", "3", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    for key in ("A_tes_before", "A_tes_after", "A_res_before", "A_res_after", "A_u_before", "A_u_after",
                "changed_res", "changed_tes", "n_forget", "n_certified_region", "unlearn_seconds", "strategy",
                "bound", "seed"):
        assert key in report
    assert report["A_u_after"] == 0 and report["n_forget"] == 25 and report["changed_tes"] == 0
    assert json.loads((out / "report.json").read_text())["n_forget"] == 25
    cert = json.loads((out / "certificate.json").read_text())
    assert len(cert["claims"]) == 25
    # forgetting again from an indices file, on the patched model
    (tmp_path / "idx.txt").write_text("1, 2 3\n# comment\n4\n")
    res = CliRunner().invoke(cli, ["forget", "--model", str(out / "patched.safetensors"), "--data", "digits",
                                   "--indices", str(tmp_path / "idx.txt"), "--out", str(tmp_path / "o2")])
    assert res.exit_code == 0, res.output
    assert "forgot 4/4 points" in res.output


@pytest.mark.parametrize("args,message", [
    (["--count", "5", "--data", "nope"], "Error: Unknown data set 'nope'"),
    (["--indices", "IDX", "--data", "digits"], "Error: Indices must be in [0, 1436]"),
    (["--data", "digits"], "Use exactly one of --indices or --count"),
])
def test_forget_errors_write_nothing(trained, tmp_path, args, message):
    path, _ = trained
    (tmp_path / "idx.txt").write_text("3\n99999\n")
    args = [a.replace("IDX", str(tmp_path / "idx.txt")) for a in args]
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["forget", "--model", str(path), "--out", str(out), *args])
    assert res.exit_code in (1, 2)
    assert message in res.output
    assert not out.exists()


def test_missing_model_is_a_clean_error(tmp_path):
    res = CliRunner().invoke(cli, ["forget", "--model", str(tmp_path / "nope.safetensors"), "--data", "digits",
                                   "--count", "3", "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and res.output.startswith("Error: No model file")


def test_demo_json(tmp_path):
    res = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path / "demo"), "--count", "30", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["A_u_after"] == 0 and report["n_certified_region"] == 30
    assert report["changed_tes"] == 0 and report["changed_res"] == 0
    assert report["retrain_seconds"] > 0
    for name in ("patched.safetensors", "report.json", "certificate.json"):
        assert (tmp_path / "demo" / name).is_file()


def test_every_command_has_help_with_an_example():
    import click

    def leaves(group, path):
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                yield from leaves(command, path + [name])
            else:
                yield path + [name]

    paths = list(leaves(cli, []))
    assert ["audit"] in paths and ["request", "add"] in paths and ["export"] in paths
    for path in paths:
        res = CliRunner().invoke(cli, [*path, "--help"])
        assert res.exit_code == 0
        assert "Example: prune" in res.output, path


def test_forget_from_a_user_state_dict(tmp_path, digits):
    import torch

    torch.manual_seed(0)
    user = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    state = {"fc1.weight": user[0].weight, "fc1.bias": user[0].bias, "out.weight": user[2].weight, "out.bias": user[2].bias}
    torch.save(state, tmp_path / "user.pt")
    res = CliRunner().invoke(cli, ["forget", "--model", str(tmp_path / "user.pt"), "--layers", "64,16,10",
                                   "--data", "digits", "--count", "5", "--out", str(tmp_path / "o"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["n_forgotten"] == 5
    res = CliRunner().invoke(cli, ["forget", "--model", str(tmp_path / "user.pt"), "--layers", "64,32,10",
                                   "--data", "digits", "--count", "5", "--out", str(tmp_path / "o2")])
    assert res.exit_code == 1 and "has shape (16, 64), but layer sizes [64, 32, 10] need (32, 64)" in res.output
    res = CliRunner().invoke(cli, ["forget", "--model", str(tmp_path / "user.pt"), "--data", "digits",
                                   "--count", "5", "--out", str(tmp_path / "o3")])
    assert res.exit_code == 1 and "also pass --layers" in res.output
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


def test_audit_command_passes_then_rejects_a_tampered_certificate(trained, tmp_path):
    path, _ = trained
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["forget", "--model", str(path), "--data", "digits", "--count", "8",
                                   "--bound", "dual", "--out", str(out)])
    assert res.exit_code == 0, res.output
    args = ["audit", "--model", str(out / "patched.safetensors"), "--certificate", str(out / "certificate.json"),
            "--data", "digits", "--indices", str(out / "forget_indices.txt"), "--samples", "3"]
    res = CliRunner().invoke(cli, args + ["--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["passed"] is True
    cert = json.loads((out / "certificate.json").read_text())
    cert["regions"][0]["margin"] *= 100
    cert["claims"] = [dict(c, margin=cert["regions"][0]["margin"]) if c["region"] == 0 else c for c in cert["claims"]]
    (out / "certificate.json").write_text(json.dumps(cert))
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 3 and "FAILED" in res.output and "FAIL bounds [region 0]" in res.output


def test_forget_class_command_with_gate_options(trained, tmp_path):
    path, _ = trained
    reports = {}
    for gate in ("--decision-gate", "--no-decision-gate"):
        out = tmp_path / gate
        res = CliRunner().invoke(cli, ["forget-class", "--model", str(path), "--data", "digits", "--label", "3",
                                       "--radius-scale", "4", "--intermediate", "ibp", gate, "--out", str(out),
                                       "--json"])
        assert res.exit_code == 0, res.output
        reports[gate] = json.loads(res.output)
        assert reports[gate]["A_u_after"] == 0 and (out / "patched.safetensors").is_file()
        assert json.loads((out / "certificate.json").read_text())["head"]["scope"] == "whole class 3"
    gated, plain = reports["--decision-gate"]["extra"], reports["--no-decision-gate"]["extra"]
    assert gated["A_tes_r_after"] >= gated["A_tes_r_before"] and gated["reach_other_test"] > 0
    assert plain["changed_other_test"] > gated["changed_other_test"]
    res = CliRunner().invoke(cli, ["forget-class", "--model", str(path), "--data", "digits", "--label", "3",
                                   "--intermediate", "exact", "--out", str(tmp_path / "bad")])
    assert res.exit_code == 2 and "'exact' is not one of 'crown', 'ibp'" in res.output
    assert not (tmp_path / "bad").exists()
