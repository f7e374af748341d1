import json

from click.testing import CliRunner

from prune_unlearn.cli import cli
from prune_unlearn.experiments.runner import ClassRunOptions, ExperimentConfig, run_convergence, run_table3, run_table5


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


def _write_image_folders(root, n_train: int, n_test: int):
    """CIFAR-10's image-folder layout (train/<class>/*.png, test/<class>/*.png) with four easy synthetic classes."""
    import numpy as np
    from PIL import Image
    from test_conv_training import _images

    for split, (x, y) in (("train", _images(n_train, 0)), ("test", _images(n_test, 1))):
        for i in range(len(y)):
            folder = root / split / f"class{int(y[i])}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (x[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:04d}.png")


def test_table3_on_a_tiny_vgg_caches_models_and_merges_methods(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("PRUNE_CACHE_DIR", str(tmp_path / "decoded"))
    _write_image_folders(tmp_path / "data", 480, 160)
    logs = []
    cfg = ExperimentConfig(dataset="cifar10", data_dir=str(tmp_path / "data"), sizes=(4, 8), methods=("prune", "retrain"),
                           width=1 / 16, epochs=3, baseline_epochs=1, mia_eval_size=40, prune_feature_domain="data",
                           merge=True)
    first = run_table3(cfg, tmp_path / "out", log=logs.append)
    cache = tmp_path / "out" / "cache"  # cifar10's models are cached beside the tables by default
    names = sorted(p.name for p in cache.glob("*.json"))
    assert names == ["vgg16-w0.0625-e1-seed0-without-4.json", "vgg16-w0.0625-e1-seed0-without-8.json",
                     "vgg16-w0.0625-e3-seed0.json"]
    prune = [r for r in first["rows"] if r["method"] == "prune"]
    assert all(r["A_u_a"] == 0.0 and r["n_certified_region"] == r["n"] and r["feature_domain"] == "given"
               for r in prune)
    # a second process adds another method: the base model is reused, the earlier rows are kept
    logs.clear()
    run_table3(ExperimentConfig(**{**cfg.__dict__, "methods": ("prune", "amnesiac"), "sizes": (4, 8)}),
               tmp_path / "out", log=logs.append)
    assert any("reusing the cached model" in m and "e3-seed0.safetensors" in m for m in logs)
    table = json.loads((tmp_path / "out" / "table3-cifar10.json").read_text())
    assert sorted({r["method"] for r in table["rows"]}) == ["amnesiac", "prune", "retrain"] and len(table["rows"]) == 6
    assert all("unlearn_phase_vs_retrain" in r for r in table["rows"])
    md = (tmp_path / "out" / "table3-cifar10.md").read_text()
    assert "Base model (PRUNE's): 3 epochs; the methods that train (Retrain, SISA, Amnesiac, FU): 1 epoch(s)" in md
    assert "PRUNE's region certificates hold for inputs whose features lie in the training features' box" in md
    # a merged size that only PRUNE ran: the other methods' cells say "–" (this raised StatisticsError)
    run_table3(ExperimentConfig(**{**cfg.__dict__, "methods": ("prune",), "sizes": (2,)}), tmp_path / "out",
               log=logs.append)
    md = (tmp_path / "out" / "table3-cifar10.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| 2 | A_tes |"))
    assert row.count("–") == 2
    mia = next(line for line in md.splitlines() if line.startswith("| 2 | ") and "→" in line)
    assert mia.count("–") == 2
    rows = json.loads((tmp_path / "out" / "table3-cifar10.json").read_text())["rows"]
    assert sorted((r["method"], r["n"]) for r in rows if r["method"] == "prune") == [("prune", 2), ("prune", 4),
                                                                                      ("prune", 8)]

    # Table V on the same cached base model; retraining without the class for the first label only
    logs.clear()
    t5 = run_table5("cifar10", tmp_path / "out", data_dir=tmp_path / "data", trials=2, epochs=3, intermediate="ibp",
                    radius_scale=2.0, log=logs.append,
                    options=ClassRunOptions(width=1 / 16, baseline_epochs=1, retrain_labels=1))
    assert any("reusing the cached model" in m for m in logs) and len(t5["rows"]) == 2
    assert all(r["A_u_after"] == 0.0 for r in t5["rows"]) and "unlearn_vs_retrain" in t5["rows"][0]
    t5_md = (tmp_path / "out" / "table5-cifar10.md").read_text()
    assert "VGG16 width = 0.0625, feature domain = ibp (certificates hold for every input in the input box" in t5_md
    assert "; retraining: 1 epochs (base model: 3)" in t5_md
