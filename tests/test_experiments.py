import json

from click.testing import CliRunner

from prune_unlearn.cli import cli
from prune_unlearn.experiments.runner import ExperimentConfig, run_convergence, run_table3


def test_table3_runner_writes_tables_figures_and_config(tmp_path):
    cfg = ExperimentConfig(dataset="digits", sizes=(10, 20), methods=("prune", "retrain", "amnesiac"), epochs=3,
                           mia_eval_size=50)
    result = run_table3(cfg, tmp_path, log=lambda m: None)
    rows = result["rows"]
    assert {(r["n"], r["method"]) for r in rows} == {(n, m) for n in (10, 20) for m in cfg.methods}
    prune = [r for r in rows if r["method"] == "prune"]
    assert all(r["A_u_a"] == 0.0 and r["mia_recall_after"] == 0.0 for r in prune)
    retrain = {r["n"]: r for r in rows if r["method"] == "retrain"}
    for r in rows:  # both phases are normalised by retraining's time for the same |D_U|
        ref = retrain[r["n"]]["unlearn_seconds"]
        assert r["unlearn_phase_vs_retrain"] == r["unlearn_seconds"] / ref
        assert r["train_phase_vs_retrain"] == r["train_seconds"] / ref
    assert all(r["unlearn_phase_vs_retrain"] < 1 for r in prune)  # patching is faster than retraining
    for name in ("table3-digits.md", "table3-digits.csv", "table3-digits.json", "fig3-digits.png", "config.json"):
        assert (tmp_path / name).is_file(), name
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["config"]["sizes"] == [10, 20] and "torch" in config["machine"]
    md = (tmp_path / "table3-digits.md").read_text()
    assert "| 20 | A_u_a | 0.00 |" in md


def test_convergence_curves_end_at_zero(tmp_path):
    result = run_convergence("digits", tmp_path, vary="K", values=[2, 5], fixed=30, epochs=3, log=lambda m: None)
    for curve in result["curves"]:
        assert curve["A_u"][0] > 0.5
        assert curve["A_u"][-1] == 0.0 or curve["stragglers_patched_per_point"] > 0
    assert (tmp_path / "fig4-digits.png").is_file()


def test_bench_cli_runs_an_experiment(tmp_path):
    res = CliRunner().invoke(cli, ["bench", "fig5", "--data", "digits", "--sizes", "10,20", "--epochs", "2",
                                   "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "digits" / "fig5-digits.md").is_file()
