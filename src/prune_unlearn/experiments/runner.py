"""The paper's experiments (§V), one function each, writing CSV + Markdown tables and PNG figures.

* ``table3``: methods × |D_U| × (A_tes, A_res, A_u-b, A_u-a), plus membership inference (Table IV)
  and both phases' times (Figure 3), all from the same runs.
* ``fig4`` / ``fig5``: A_u per round of Algorithm 1 against K and against |D_U|.
* ``table5``: whole-class unlearning (see :func:`prune_unlearn.forget_class`).
* ``privacy``: every attack against every method (:func:`run_privacy`, in :mod:`.privacy.table`).

Every run writes ``config.json`` (full configuration, seeds, library versions, machine) next to
its results, and multi-seed runs report mean ± std.
"""

from __future__ import annotations

import copy
import csv
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .._validation import check_choice
from ..core.domain import data_feature_box
from .datasets import Dataset, load_dataset
from ..unlearn.metrics import accuracy, predict
from ..unlearn.forget import forget
from ..core.models import default_architecture
from .privacy import PrivacyConfig, mean_loss, mia_auc_tpr, mia_recall, run_privacy
from .feature_space import features, head_only, patched_head
from .model_cache import train_base, train_without
from .reporting import machine_description, mean_std
from .training import recipe_for, width_for

__all__ = ["ExperimentConfig", "ClassRunOptions", "run_table3", "run_table5", "run_convergence", "machine_description",
           "train_base", "train_without", "EXPERIMENTS", "PrivacyConfig", "run_privacy"]

METHODS = ("prune", "retrain", "sisa", "amnesiac", "fu")
# The paper's numbers for the same cells (Table III, MNIST / Fashion-MNIST, |D_U| = 500; Table IV, |D_U| = 100)
PAPER = {
    "table4_mia_recall_after": {"retrain": {"mnist": 83.00, "fashion-mnist": 77.40},
                                "sisa": {"mnist": 91.00, "fashion-mnist": 75.00},
                                "amnesiac": {"mnist": 0.00, "fashion-mnist": 0.00},
                                "fu": {"mnist": 88.90, "fashion-mnist": 78.30},
                                "prune": {"mnist": 1.01, "fashion-mnist": 0.00}},
}


@dataclass
class ExperimentConfig:
    """Everything a run depends on; written to ``config.json``."""

    dataset: str
    data_dir: str | None = None
    sizes: tuple = (100, 200, 300, 500)
    seeds: int = 1
    methods: tuple = METHODS
    prune_strategy: str = "per-point"
    prune_bound: str = "box"
    epsilon: float = 0.05
    epochs: int | None = None          # override the recipe's epochs (all methods)
    sisa_shards: int = 5
    sisa_slices: int = 5
    amnesiac_recovery_epochs: int = 1
    # "a short recovery training" (paper): 10 SGD steps; measured on MNIST, |D_U| = 500: subtracting the
    # updates alone leaves A_tes at 30%, 10 steps bring it to 89%, 100 steps to 96%
    amnesiac_recovery_steps: int | None = 10
    fu_damping: float = 0.01
    fu_hessian_samples: int | None = 5000
    fu_cg_iterations: int = 100
    fu_step_scale: float = 1.0
    mia_eval_size: int = 1000
    # Conv nets (CIFAR-10): VGG16 width multiplier (None: the data set's CPU default, see training.width_for);
    # epochs of the methods that (re)train, when the base recipe's full budget does not fit (None: the same);
    # PRUNE's feature-space domain box: "ibp" (interval propagation of [0,1]^d, sound for every input) or
    # "data" (training features ± feature_margin of their range: claims hold for features in that box).
    width: float | None = None
    baseline_epochs: int | None = None
    prune_feature_domain: str = "ibp"
    feature_margin: float = 0.1
    cache_dir: str | None = None       # trained base models are cached here (default: <out>/cache for cifar10)
    retrain_base: bool = False         # train the base model even when a matching cached one exists
    merge: bool = False                # keep the rows of other methods from the table already in the folder
    device: str = "cpu"                # where the base and retrained models train (baselines train on the CPU)
    extra: dict = field(default_factory=dict)


def _mia(model, X_u, y_u, X_train_rest, y_train_rest, X_out, y_out) -> dict:
    """Yeom et al.: member iff loss ≤ mean training loss; plus AUC and TPR@1%FPR of D_U vs held-out."""
    threshold = mean_loss(model, X_train_rest, y_train_rest)
    scores = mia_auc_tpr(model, X_u, y_u, X_out, y_out)
    return {"mia_recall": mia_recall(model, X_u, y_u, threshold), "mia_auc": scores.auc,
            "mia_tpr_at_1pct_fpr": scores.tpr_at_1pct_fpr}


def _metrics(before, after, ds: Dataset, idx, X_rem, y_rem, X_out, y_out, mia_members, before_pred,
             after_pred=None) -> dict:
    """One Table III/IV row; ``before_pred``/``after_pred`` = (test, train) predictions, computed once per model
    (``after_pred`` None: computed here)."""
    X_u, y_u = ds.X_train[idx], ds.y_train[idx]
    keep = torch.ones(len(ds.y_train), dtype=torch.bool)
    keep[idx] = False
    tes_b, res_b = before_pred[0], before_pred[1][keep]
    if after_pred is None:
        tes_a, res_a = predict(after, ds.X_test, batch_size=2048), predict(after, X_rem, batch_size=2048)
    else:
        tes_a, res_a = after_pred[0], after_pred[1][keep]
    row = {
        "A_tes": accuracy(tes_a, ds.y_test),
        "A_res": accuracy(res_a, y_rem),
        "A_u_b": accuracy(predict(before, X_u), y_u),
        "A_u_a": accuracy(predict(after, X_u), y_u),
        "changed_tes": int((tes_b != tes_a).sum()),
        "changed_res": int((res_b != res_a).sum()),
    }
    Xm, ym = mia_members
    b = _mia(before, X_u, y_u, Xm, ym, X_out, y_out)
    a = _mia(after, X_u, y_u, Xm, ym, X_out, y_out)
    row.update({f"{k}_before": v for k, v in b.items()})
    row.update({f"{k}_after": v for k, v in a.items()})
    return row


def _baseline(name: str, cfg: ExperimentConfig, request_sets):
    from .baselines import create_baseline

    if name == "sisa":
        return create_baseline("sisa", shards=cfg.sisa_shards, slices=cfg.sisa_slices)
    if name == "amnesiac":
        return create_baseline("amnesiac", recovery_epochs=cfg.amnesiac_recovery_epochs,
                               recovery_steps=cfg.amnesiac_recovery_steps, request_sets=request_sets)
    if name == "fu":
        return create_baseline("fu", damping=cfg.fu_damping, hessian_samples=cfg.fu_hessian_samples,
                               cg_iterations=cfg.fu_cg_iterations, step_scale=cfg.fu_step_scale)
    return create_baseline(name)


# What a PRUNE certificate on a conv net's head covers, per feature domain box (see core/domain.py).
FEATURE_CLAIMS = {
    "ibp": "every input in the input box (the feature box is interval propagation of the input box through the "
           "conv layers)",
    "data": "inputs whose features lie in the training features' box widened by {margin:.0%} of its range (a data "
            "box: not every input)",
}


def run_table3(cfg: ExperimentConfig, out_dir: str | Path, *, progress: bool = False, log=print) -> dict:
    """Table III (+ Table IV and Figure 3 from the same runs) for one data set.

    With ``cfg.merge`` the rows (method, |D_U|, seed) not run now are kept from the ``table3-<data set>.json``
    already in ``out_dir``, so that methods and sizes can be run in separate processes (or sessions) and land in
    one table.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(cfg.dataset, cfg.data_dir)
    width = cfg.width if cfg.width is not None else width_for(ds.name)
    spec = default_architecture(ds.name, ds.input_dim, ds.num_classes, ds.input_shape, width=width)
    check_choice("prune_feature_domain", "run_table3", cfg.prune_feature_domain, ("ibp", "data"))
    rows, notes = [], {"width": width}
    for seed in range(cfg.seeds):
        rows += _table3_seed(cfg, ds, spec, seed, out, notes, progress, log)
    previous = out / f"table3-{ds.name}.json"  # read now, not at the start: runs of other methods may have ended
    if cfg.merge and previous.is_file():
        kept = json.loads(previous.read_text())
        ran = {(r["method"], r["n"], r["seed"]) for r in rows}  # a rerun replaces only what it ran again
        rows = [r for r in kept["rows"] if (r["method"], r["n"], r["seed"]) not in ran] + rows
        notes = {**kept.get("notes", {}), **notes}
    _add_phase_ratios(rows)
    result = {"config": asdict(cfg), "machine": machine_description(), "notes": notes, "rows": rows}
    _write_table3(result, out, ds.name)
    return result


def _table3_seed(cfg: ExperimentConfig, ds: Dataset, spec: dict, seed: int, out: Path, notes: dict, progress: bool,
                 log) -> list[dict]:
    """The rows of one seed: every method in ``cfg.methods`` at every size."""
    sizes = sorted(int(n) for n in cfg.sizes)
    recipe = recipe_for(ds.name, seed=seed, epochs=cfg.epochs)
    b_recipe = recipe_for(ds.name, seed=seed, epochs=cfg.baseline_epochs or cfg.epochs)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(ds.y_train), generator=gen)
    requests = {n: perm[:n] for n in sizes}  # nested: the requests of the paper's rows grow
    out_perm = torch.randperm(len(ds.y_test), generator=gen)[: cfg.mia_eval_size]
    X_out, y_out = ds.X_test[out_perm], ds.y_test[out_perm]
    rows, models, feats = [], {}, None  # models: method → (model before unlearning, its test/train predictions, s)
    if "prune" in cfg.methods or "retrain" in cfg.methods:  # the other methods train their own models
        log(f"[seed {seed}] base model: {spec['kind']} with {recipe}")
        base, base_seconds = train_base(cfg, ds, spec, recipe, out, progress, log)
        if spec["kind"] != "mlp":  # conv layers once; PRUNE's patched heads are evaluated on these features
            feats = (features(base, ds.X_test), features(base, ds.X_train))
            head = head_only(base)
            base_pred = tuple(predict(head, f, batch_size=4096) for f in feats)
        else:
            feats, base_pred = None, _predictions(base, ds)
        models["prune"] = models["retrain"] = (base, *base_pred, base_seconds)
        log(f"[seed {seed}] base model trained in {base_seconds:.1f} s, test accuracy "
            f"{accuracy(models['prune'][1], ds.y_test):.4f}")
        notes["base_epochs"] = recipe.epochs
    if any(m != "prune" for m in cfg.methods):
        notes["baseline_epochs"] = b_recipe.epochs
    fdom, fdom_seconds = None, 0.0
    if "prune" in cfg.methods and spec["kind"] != "mlp":  # claims are made in the head's feature space
        notes["prune_claims_cover"] = FEATURE_CLAIMS[cfg.prune_feature_domain].format(margin=cfg.feature_margin)
    if "prune" in cfg.methods and cfg.prune_feature_domain == "data":
        t = time.perf_counter()
        fdom = data_feature_box(models["prune"][0], ds.X_train, margin=cfg.feature_margin)
        fdom_seconds = time.perf_counter() - t
    fitted = {}
    for name in cfg.methods:
        if name not in ("prune", "retrain"):
            log(f"[seed {seed}] fitting {name} …")
            fitted[name] = _baseline(name, cfg, [requests[n] for n in sizes]).fit(spec, ds.X_train, ds.y_train,
                                                                                     b_recipe)
            models[name] = (fitted[name].model_, *_predictions(fitted[name].model_, ds), fitted[name].train_seconds_)
            log(f"[seed {seed}] {name} trained in {fitted[name].train_seconds_:.1f} s")
    for n in sizes:
        idx = requests[n]
        X_rem, y_rem = ds.remaining(idx)
        members = (X_rem[: 5000], y_rem[: 5000])  # the attacker's known members, for the threshold
        for name in cfg.methods:
            before, *before_pred, train_s = models[name]
            after_pred = None
            if name == "prune":
                after, unlearn_s, after_pred, extra = _prune(cfg, before, ds, idx, seed, fdom, feats)
                extra["feature_box_seconds"] = fdom_seconds
            elif name == "retrain":
                keep = torch.ones(len(ds.y_train), dtype=torch.bool)
                keep[idx] = False
                after, unlearn_s = train_without(cfg, ds, spec, b_recipe, keep, str(n), out, log)
                extra = {"epochs": b_recipe.epochs}
            else:
                result = copy.deepcopy(fitted[name]).forget(idx)
                after, train_s, unlearn_s = result.model, result.train_seconds, result.unlearn_seconds
                extra = {k: v for k, v in result.info.items() if isinstance(v, (int, float, bool))}
            row = {"dataset": ds.name, "seed": seed, "n": n, "method": name, "train_seconds": train_s,
                   "unlearn_seconds": unlearn_s,
                   **_metrics(before, after, ds, idx, X_rem, y_rem, X_out, y_out, members, before_pred, after_pred),
                   **extra}
            rows.append(row)
            log(f"[seed {seed}] |D_U|={n:4d} {name:9s} A_tes {row['A_tes']:.4f} A_res {row['A_res']:.4f} "
                f"A_u {row['A_u_b']:.3f}->{row['A_u_a']:.3f} MIA recall {row['mia_recall_before']:.3f}->"
                f"{row['mia_recall_after']:.3f} unlearn {unlearn_s:.2f} s")
    return rows


def _prune(cfg: ExperimentConfig, base, ds: Dataset, idx, seed: int, fdom, feats):
    """PRUNE's unlearning of ``idx``: the patched model, its seconds, its predictions from ``feats`` (the base
    model's test/train features, for a conv net; else None) and the row's PRUNE-only entries."""
    res = forget(base, ds.X_train[idx], labels=ds.y_train[idx], strategy=cfg.prune_strategy, bound=cfg.prune_bound,
                 epsilon=cfg.epsilon, seed=seed, domain=(ds.domain_lower, ds.domain_upper), feature_domain=fdom,
                 radius=None)  # the paper's region-only patches (Tables III/IV, Figure 3)
    after_pred = None
    if feats is not None:
        after_pred = tuple(predict(patched_head(res.model), f, batch_size=4096) for f in feats)
    extra = {"n_certified_region": res.report.n_certified_region, "patch_linf_mean": res.report.patch_linf_mean,
             "feature_domain": res.certificate.domain.get("source", "")}
    return res.model, res.report.unlearn_seconds, after_pred, extra


def _predictions(model, ds: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    return predict(model, ds.X_test, batch_size=2048), predict(model, ds.X_train, batch_size=2048)


def _add_phase_ratios(rows: list[dict]) -> None:
    """Figure 3: both phases ÷ the retraining time of the same seed and |D_U| (rows without one get none)."""
    ref = {(r["seed"], r["n"]): r["unlearn_seconds"] for r in rows if r["method"] == "retrain"}
    for r in rows:
        if (r["seed"], r["n"]) in ref:
            r["train_phase_vs_retrain"] = r["train_seconds"] / ref[r["seed"], r["n"]]
            r["unlearn_phase_vs_retrain"] = r["unlearn_seconds"] / ref[r["seed"], r["n"]]




def _write_table3(result: dict, out: Path, name: str) -> None:
    rows = result["rows"]
    (out / "config.json").write_text(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))
    (out / f"table3-{name}.json").write_text(json.dumps(result, indent=1))
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("dataset", "seed", "n", "method"), k))
    with open(out / f"table3-{name}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    order = {m: i for i, m in enumerate(METHODS)}  # merged runs list the methods in the paper's order
    methods = sorted(dict.fromkeys(r["method"] for r in rows), key=lambda m: order.get(m, len(order)))
    sizes = sorted({r["n"] for r in rows})
    notes = result.get("notes") or {}
    epochs_note = []
    if notes.get("baseline_epochs") not in (None, notes.get("base_epochs")):
        epochs_note = [f"Base model (PRUNE's): {notes['base_epochs']} epochs; the methods that train (Retrain, SISA, "
                       f"Amnesiac, FU): {notes['baseline_epochs']} epoch(s), fewer because the full budget does not "
                       f"fit on this machine.", ""]
    if notes.get("prune_claims_cover"):
        epochs_note += [f"PRUNE's region certificates hold for {notes['prune_claims_cover']}.", ""]
    lines = [f"## Table III — {name} (accuracy %, mean ± std over seeds)", "", *epochs_note,
             "| |D_U| | metric | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for n in sizes:
        for metric in ("A_tes", "A_res", "A_u_b", "A_u_a"):
            cells = [mean_std([100 * r[metric] for r in rows if r["n"] == n and r["method"] == m]) for m in methods]
            lines.append(f"| {n} | {metric} | " + " | ".join(cells) + " |")

    def size_by_method(title: str, cell) -> None:
        """A |D_U| × method table; ``cell`` formats the rows of one (size, method) pair."""
        lines.extend(["", title, "", "| |D_U| | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)])
        for n in sizes:
            sel = {m: [r for r in rows if r["n"] == n and r["method"] == m] for m in methods}
            cells = [cell(sel[m]) if sel[m] else "–" for m in methods]
            lines.append(f"| {n} | " + " | ".join(cells) + " |")

    size_by_method(f"## Table IV — {name}: membership-inference recall on D_U (%), before → after",
                   lambda sel: f"{mean_std([100 * r['mia_recall_before'] for r in sel])} → "
                               f"{mean_std([100 * r['mia_recall_after'] for r in sel])}")
    size_by_method("Attack AUC / TPR at 1% FPR of D_U against held-out test points, after unlearning:",
                   lambda sel: f"{mean_std([r['mia_auc_after'] for r in sel])} / "
                               f"{mean_std([100 * r['mia_tpr_at_1pct_fpr_after'] for r in sel])}%")
    if any("unlearn_phase_vs_retrain" in r for r in rows):
        lines += ["", f"## Figure 3 — {name}: time of each phase ÷ retraining time", "",
                  "| |D_U| | method | training phase | unlearning phase | total | unlearning seconds |",
                  "|---|---|---|---|---|---|"]
        for n in sizes:
            for m in methods:
                sel = [r for r in rows if r["n"] == n and r["method"] == m and "unlearn_phase_vs_retrain" in r]
                if sel:
                    tr = [r["train_phase_vs_retrain"] for r in sel]
                    ul = [r["unlearn_phase_vs_retrain"] for r in sel]
                    lines.append(f"| {n} | {m} | {mean_std(tr)} | {mean_std(ul)} | "
                                 f"{mean_std([a + b for a, b in zip(tr, ul)])} | "
                                 f"{mean_std([r['unlearn_seconds'] for r in sel])} |")
        _plot_fig3(rows, methods, sizes, out / f"fig3-{name}.png", name)
    (out / f"table3-{name}.md").write_text("\n".join(lines) + "\n")


def _plot_fig3(rows, methods, sizes, path: Path, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sizes), figsize=(3.2 * len(sizes), 3.2), sharey=True, squeeze=False)
    for ax, n in zip(axes[0], sizes):
        tr, ul = [], []
        for m in methods:
            sel = [r for r in rows if r["n"] == n and r["method"] == m and "unlearn_phase_vs_retrain" in r]
            tr.append(statistics.mean(r["train_phase_vs_retrain"] for r in sel) if sel else 0)
            ul.append(statistics.mean(r["unlearn_phase_vs_retrain"] for r in sel) if sel else 0)
        ax.bar(methods, tr, label="training phase")
        ax.bar(methods, ul, bottom=tr, label="unlearning phase")
        ax.set_title(f"{name}, |D_U| = {n}")
        ax.tick_params(axis="x", rotation=45)
    axes[0][0].set_ylabel("time ÷ retraining time")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


EXPERIMENTS = ("table3", "table4", "fig3", "fig4", "fig5", "table5", "privacy")


# Whole-class experiments and Figures 4/5 live in their own modules; re-exported here for the CLI and older imports.
from .class_runner import ClassRunOptions, run_table5  # noqa: E402
from .convergence import run_convergence  # noqa: E402
