"""target="unseen" against Retrain on one data set: population attacks, A_u-a, changed predictions, time, audit.

    flock /tmp/prune-heavy.lock nice -n 10 python benchmarks/privacy_unseen.py --data mnist \
        --data-dir /work/shared/data/mnist --count 500 --folds 2 --calibration 2000 --out results/mnist

Trains (and caches under <out>/unseen-cache/, not in git) the base model f, Retrain (f's recipe on the
remaining data) and ``--folds`` reference models, fold k trained on every training point outside fold k
(a K-fold split drawn before any request: each forgotten point then has a reference that never saw it).
Forgets ``--count`` random training points with target="unseen" and with the paper's target="random",
audits both, and attacks every model with the loss / confidence / margin population attacks
(forgotten vs unseen test points). With ``--calibration N`` (default 2000), N random test points are
held out to calibrate each reference's logit scale (``Reference.calibrated``) and are *not* attacked:
the population attacks use the other test points for every method, and target="unseen" runs both raw
and calibrated. U-LiRA needs the shadow worlds of ``prune bench privacy``.
Writes <out>/privacy-unseen-<data>[-k<folds>].json and .md.

CIFAR-10 (``--data cifar10 --out results/cifar10``): the VGG16-layout network of ``bench_cifar.py`` (its width
and recipe), patched in the head's feature space (the domain box carried through the conv layers by interval
propagation); the base model is ``bench_cifar.py``'s cached one (``<out>/cache``) and Retrain and the fold
references are cached beside it (``experiments.model_cache``: recipe, seed and data hash checked on reuse).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from prune_unlearn import Reference, audit, default_architecture, forget, load, load_dataset, recipe_for, save
from prune_unlearn.experiments.privacy import log_probabilities, membership_scores, roc_summary
from prune_unlearn.experiments.model_cache import CACHED_DATASETS, train_base, train_without
from prune_unlearn.experiments.runner import ClassRunOptions
from prune_unlearn.experiments.training import train_from_spec, width_for
from prune_unlearn.unlearn.metrics import accuracy, predict


def cached(path: Path, train):
    """A model trained once and kept at ``path`` with its training seconds."""
    if path.exists():
        model = load(path)
        return model.eval(), json.loads(path.with_suffix(".json").read_text())["train_seconds"]
    t = time.perf_counter()
    model = train().eval()
    seconds = time.perf_counter() - t
    path.parent.mkdir(parents=True, exist_ok=True)
    save(model, path)
    path.with_suffix(".json").write_text(json.dumps({"train_seconds": seconds, "load": os.getloadavg()}))
    print(f"trained {path.name} in {seconds:.1f} s (load {os.getloadavg()[0]:.2f})", flush=True)
    return model, seconds


def attacks(model, Xf, yf, Xt, yt) -> dict:
    sf = membership_scores(log_probabilities(model, Xf), yf)
    st = membership_scores(log_probabilities(model, Xt), yt)
    out = {}
    for name in ("loss", "confidence", "margin"):
        r = roc_summary(sf[name], st[name], fprs=(0.01, 0.001))
        out[name] = {"auc": r.auc, "tpr@1%": r.tpr_best[0.01], "tpr@0.1%": r.tpr_best[0.001]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="mnist")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--count", type=int, default=500)
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--calibration", type=int, default=2000,
                    help="test points held out to calibrate the references (0: no calibration); never attacked")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results/mnist")
    a = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(a.out)
    ds = load_dataset(a.data, a.data_dir)
    spec = default_architecture(ds.name, ds.input_dim, ds.num_classes, ds.input_shape, width=width_for(ds.name))
    recipe = recipe_for(ds.name, seed=a.seed, epochs=a.epochs)
    cache = out / "unseen-cache"
    costly = ds.name in CACHED_DATASETS  # conv nets: the experiments' model cache (<out>/cache), reused by name
    opts = ClassRunOptions(cache_dir=None, retrain_base=False)

    def log(msg):
        print(time.strftime("%H:%M:%S"), msg, flush=True)

    def trained(name: str, rows: torch.Tensor | None):
        if costly:
            if rows is None:
                return train_base(opts, ds, spec, recipe, out, True, log)
            return train_without(opts, ds, spec, recipe, rows, name, out, log)
        X, y = (ds.X_train, ds.y_train) if rows is None else (ds.X_train[rows], ds.y_train[rows])
        return cached(cache / f"{tag}-{name}.safetensors", lambda: train_from_spec(spec, X, y, recipe).model)
    tag = f"{ds.name}-e{recipe.epochs}-s{a.seed}"
    n = len(ds.y_train)
    gen = torch.Generator().manual_seed(a.seed)
    fold_of = torch.randperm(n, generator=gen) % a.folds          # the K-fold split, drawn before any request
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(a.seed + 1))[: a.count]
    keep = torch.ones(n, dtype=torch.bool)
    keep[idx] = False
    f, f_sec = trained("base", None)
    r, r_sec = trained(f"retrain-{a.count}" if not costly else f"unseen-{a.count}-s{a.seed}", keep)
    refs = []
    for k in range(a.folds):
        seen = fold_of != k
        g, g_sec = trained(f"fold{k}of{a.folds}" + ("" if not costly else f"-s{a.seed}"), seen)
        refs.append(Reference(g.eval(), ds.X_train[seen], name=f"fold {k} of {a.folds} left out"))
    Xf, yf = ds.X_train[idx], ds.y_train[idx]
    held = torch.randperm(len(ds.y_test), generator=torch.Generator().manual_seed(a.seed + 2))
    held, attacked = held[: a.calibration], held[a.calibration:]  # calibration points are never attacked
    Xt, yt = ds.X_test[attacked], ds.y_test[attacked]
    rows = {"retrain": {"model": r, "unlearn_seconds": r_sec}}
    runs = [("unseen", "prune-unseen", {"reference": refs}, 0.0)]
    if a.calibration:
        t = time.perf_counter()
        cal = [g.calibrated(f, ds.X_test[held], ds.y_test[held]) for g in refs]
        runs.append(("unseen", "prune-unseen-calibrated", {"reference": cal}, time.perf_counter() - t))
        print("scales", [round(g.scale, 4) for g in cal], f"calibration {runs[-1][3]:.2f} s", flush=True)
    runs.append(("random", "prune-random", {"radius": None}, 0.0))  # the paper's region patches
    for target, name, kw, extra in runs:
        t = time.perf_counter()
        res = forget(f, Xf, labels=yf, target=target, domain=(ds.domain_lower, ds.domain_upper),
                     test_data=(Xt, yt), remaining_data=ds.remaining(idx), **kw)
        wall = time.perf_counter() - t
        t = time.perf_counter()
        aud = audit(res.model, res.certificate, points=Xf, labels=yf, locality_inputs=ds.X_test)
        rep = res.report
        bands = [c["band"]["half_width"] for c in res.certificate.claims if "band" in c]
        rows[name] = {
            "model": res.model, "unlearn_seconds": rep.unlearn_seconds + extra, "wall_seconds": wall,
            "calibration_seconds": extra, "scales": [g.scale for g in kw.get("reference", [])],
            "changed_test": rep.changed_tes, "changed_remaining": rep.changed_res,
            "certified": len(res.certificate.claims), "failed": rep.n_failed, "audit_passed": aud.passed,
            "audit_seconds": time.perf_counter() - t,
            "band_half_width_median": float(torch.tensor(bands).median()) if bands else None,
            "band_half_width_max": max(bands) if bands else None}
    result = {"data": ds.name, "count": a.count, "folds": a.folds, "calibration_points": a.calibration,
              "attacked_test_points": len(yt), "recipe": recipe.to_dict(),
              "threads": 1, "load_at_end": os.getloadavg(), "base_train_seconds": f_sec, "methods": {}}
    result["A_tes_base"] = accuracy(predict(f, ds.X_test), ds.y_test)
    for name, row in rows.items():
        m = row.pop("model")
        row["A_u"] = accuracy(predict(m, Xf), yf)
        row["A_tes"] = accuracy(predict(m, Xt), yt)
        row["attacks"] = attacks(m, Xf, yf, Xt, yt)
        row["vs_retrain_time"] = row["unlearn_seconds"] / r_sec
        result["methods"][name] = row
    out.mkdir(parents=True, exist_ok=True)
    stem = f"privacy-unseen-{ds.name}" + ("" if a.folds == 2 else f"-k{a.folds}")
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    lines = [f"## target='unseen' vs Retrain — {ds.name}, |D_U| = {a.count}, {a.folds}-fold references, "
             f"{a.calibration} test points held out for calibration, {len(yt)} attacked", "",
             "| method | A_u-a | A_tes | loss AUC | loss TPR@1% | conf AUC | margin AUC | margin TPR@1% "
             "| changed test/rem | time ÷ retrain | audit |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in result["methods"].items():
        at = row["attacks"]
        lines.append(f"| {name} | {100 * row['A_u']:.2f} | {100 * row['A_tes']:.2f} | {at['loss']['auc']:.3f} | "
                     f"{100 * at['loss']['tpr@1%']:.1f}% | {at['confidence']['auc']:.3f} | {at['margin']['auc']:.3f} | "
                     f"{100 * at['margin']['tpr@1%']:.1f}% | {row.get('changed_test', '–')}/"
                     f"{row.get('changed_remaining', '–')} | {100 * row['vs_retrain_time']:.2f}% | "
                     f"{row.get('audit_passed', '–')} |")
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "attacks"} for k, v in result["methods"].items()},
                     indent=1))


if __name__ == "__main__":
    main()
