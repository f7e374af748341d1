"""The robustness-of-forgetting evaluation (issue 11): residual recall of perturbed copies, side by side."""

import json


from prune_unlearn.experiments.robustness import residual_recall, run_robustness
from prune_unlearn.unlearn.metrics import predict


def test_residual_recall_counts_perturbed_copies_with_the_label(digits, digits_small_model):
    X = digits.X_train[:20]
    y = predict(digits_small_model, X)
    r = residual_recall(digits_small_model, X, y, sigmas=(0.0, 0.5), draws=3, image_shape=(8, 8))
    assert r["points"] == 1.0 and r["noise_0"] == 1.0  # σ = 0: the points themselves, 3 times
    assert 0.0 <= r["noise_0.5"] < 1.0 and 0.0 <= r["shift_1px"] <= 1.0
    assert residual_recall(digits_small_model, X, (y + 1) % 10, sigmas=())["points"] == 0.0


def test_run_robustness_side_by_side(digits, digits_small_model, tmp_path):
    variants = (("prune region-only", {"radius": None}), ("prune r=4/16", {"radius": 4 / 16}))
    out = run_robustness("digits", tmp_path, n=15, methods=("retrain", "sisa"), variants=variants,
                         base_model=digits_small_model, baseline_epochs=2, log=lambda *a: None)
    rows = {r["method"]: r for r in out["rows"]}
    assert list(rows) == ["base (before)", "prune region-only", "prune r=4/16", "retrain", "sisa"]
    assert rows["prune region-only"]["recall_points"] == 0.0 and rows["prune r=4/16"]["recall_points"] == 0.0
    assert rows["prune r=4/16"]["radius_median_255"] == 4 / 16 * 255 and rows["prune r=4/16"]["failed"] == 0
    # inside the certified ball no noisy copy (σ ≤ 0.03, |noise| < 4/16 with overwhelming probability) recalls
    assert rows["prune r=4/16"]["recall_noise_0.03"] == 0.0
    assert out["baseline_epochs"] == 2 and out["base_epochs"] is None
    saved = json.loads((tmp_path / "robustness-digits.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(out["rows"]))
    md = (tmp_path / "robustness-digits.md").read_text()
    assert "trained 2 epoch(s)" in md and "| sisa |" in md and "shift_1px" in md
