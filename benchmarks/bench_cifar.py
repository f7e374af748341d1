"""CIFAR-10 with a VGG16-layout network trained on this CPU: forget 500 points, then the paper's CIFAR-10 rows.

Steps (``--steps``, default all):

``forget``  The base model (VGG16 layout at ``--width``, the ``cifar10`` recipe) is trained once and cached in
            ``<out>/cache`` with a JSON of recipe, seed, data hash, accuracy and training time (``--retrain``
            trains it again). 500 random training points are forgotten in the head's feature space, once per
            feature domain box: interval propagation of [0,1]^3072 through the conv layers (the claims hold for
            every input) and the training features ± 10% of their range (the claims hold for inputs whose
            features lie in that box). Certified regions, A_u, exactly counted changed predictions on the test
            set and on the remaining training data, and the unlearning time against retraining without the
            points (the same retraining the Table III run uses; cached too) → ``<out>/forget-500.json``.
``table3``  Table III, IV and Figure 3 with :func:`prune_unlearn.experiments.runner.run_table3`; the methods that
            train use ``--baseline-epochs`` (the full budget does not fit on a 2-core CPU), FU estimates its
            Hessian on ``--fu-hessian-samples`` points. ``--methods`` with ``--merge`` splits it over processes.
``table5``  Table V (whole class) with :func:`~prune_unlearn.experiments.runner.run_table5`.

    PRUNE_DATA_DIR=../shared/data python benchmarks/bench_cifar.py --out results/cifar10 --threads 1

On a GPU (``--device cuda``) the base model and the retrainings train there (``--width 1 --epochs 100`` is then
within reach); the baselines' own training, PRUNE and every evaluation stay on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from prune_unlearn import forget, load_dataset
from prune_unlearn.core.domain import data_feature_box
from prune_unlearn.core.models import default_architecture
from prune_unlearn.experiments.runner import (
    ClassRunOptions,
    ExperimentConfig,
    machine_description,
    run_table3,
    run_table5,
    train_base,
    train_without,
)
from prune_unlearn.experiments.robustness import residual_recall
from prune_unlearn.experiments.training import recipe_for, width_for
from prune_unlearn.unlearn.metrics import accuracy, predict

REPORT_KEYS = ("n_forget", "n_forgotten", "n_certified_region", "n_certified_point", "n_failed", "A_u_before",
               "A_u_after", "A_tes_before", "A_tes_after", "A_res_before", "A_res_after", "changed_tes", "changed_res",
               "unlearn_seconds", "patch_linf_mean", "patch_linf_max", "n_float32_robust")


def forget_step(args, ds, log) -> dict:
    spec = default_architecture("cifar10", ds.input_dim, ds.num_classes, ds.input_shape, width=args.width)
    recipe = recipe_for("cifar10", epochs=args.epochs)
    out = Path(args.out)
    opts = ClassRunOptions(cache_dir=args.cache_dir, retrain_base=args.retrain, device=args.device)
    model, train_seconds = train_base(opts, ds, spec, recipe, out, args.progress, log)
    # the same draw as run_table3's seed 0, so that this |D_U| = 500 is Table III's
    perm = torch.randperm(len(ds.y_train), generator=torch.Generator().manual_seed(0))
    idx = perm[: args.forget]
    keep = torch.ones(len(ds.y_train), dtype=torch.bool)
    keep[idx] = False
    b_recipe = recipe_for("cifar10", epochs=args.baseline_epochs or args.epochs)
    retrained, retrain_seconds = train_without(opts, ds, spec, b_recipe, keep, str(args.forget), out, log)
    t = time.perf_counter()
    data_box = data_feature_box(model, ds.X_train, margin=0.1) if args.bounds else None  # for the region runs
    box_seconds = time.perf_counter() - t
    domains = {"ibp": (None, "interval propagation of [0,1]^3072 through the conv layers: claims hold for every "
                             "input"),
               "data": (data_box, "training features ± 10% of their range: claims hold for inputs whose features "
                                  "lie in this box")}
    runs = {}
    for key, (fdom, claim) in domains.items():
        for bound in args.bounds:
            res = forget(model, ds.X_train[idx], labels=ds.y_train[idx], bound=bound, feature_domain=fdom, radius=None,
                         test_data=(ds.X_test, ds.y_test), remaining_data=(ds.X_train[keep], ds.y_train[keep]))
            r = res.report
            if key == "ibp" and bound == args.bounds[0]:
                args.patched_models[f"prune region-only ({bound})"] = res.model
            runs[f"{key}/{bound}"] = {"feature_domain": key, "claim_covers": claim, "bound": bound,
                                      **{k: getattr(r, k) for k in REPORT_KEYS},
                                      "unlearn_vs_retrain": r.unlearn_seconds / retrain_seconds}
            log(f"[{key}, {bound}] {r.summary()}")
    runs.update(neighbourhood_runs(args, ds, model, idx, keep, retrain_seconds, log))
    runs.update(feature_ball_runs(args, ds, model, idx, keep, retrain_seconds, log))
    recall = residual_recall_rows(args, ds, model, retrained, idx, log)
    return {"width": args.width, "recipe": recipe.to_dict(), "train_seconds": train_seconds,
            "test_accuracy_base": accuracy(predict(model, ds.X_test, batch_size=1000), ds.y_test),
            "test_accuracy_retrained": accuracy(predict(retrained, ds.X_test, batch_size=1000), ds.y_test),
            "residual_recall": recall,
            "retrain_recipe": b_recipe.to_dict(), "retrain_seconds": retrain_seconds,
            "data_box_seconds": box_seconds, "forgotten_indices_sha256": _indices_hash(idx), "runs": runs}


def neighbourhood_runs(args, ds, model, idx, keep, retrain_seconds, log) -> dict:
    """Certified neighbourhoods (issue 11) on the conv net: each ball B(x, r) ∩ [0,1]^3072 of *input* space is
    carried through the conv layers by interval propagation, and the head is patched on the resulting feature box."""
    runs = {}
    plans = [(r, False) for r in args.radii] + [(r, True) for r in args.region_radii]
    for r, within_region in plans:
        res = forget(model, ds.X_train[idx], labels=ds.y_train[idx], radius=r, within_region=within_region,
                     test_data=(ds.X_test, ds.y_test), remaining_data=(ds.X_train[keep], ds.y_train[keep]))
        rep = res.report
        name = f"r={r * 255:g}/255" + (" ∩ region" if within_region else "")
        claim = f"every input within l-inf {r * 255:g}/255 of a forgotten image, in [0,1]^3072"
        if within_region:
            claim += ", whose head features lie in the image's (tightened) linear region"
        runs[f"ball/{name}"] = {
            "radius": r, "within_region": within_region, "claim_covers": claim,
            **{k: getattr(rep, k, None) for k in REPORT_KEYS + ("n_certified_neighbourhood", "radius_min",
                                                                "radius_max")},
            "unlearn_vs_retrain": rep.unlearn_seconds / retrain_seconds}
        args.patched_models[f"prune {name}"] = res.model
        log(f"[ball {name}] {rep.summary()}")
    return runs


def feature_ball_runs(args, ds, model, idx, keep, retrain_seconds, log) -> dict:
    """Certified neighbourhoods around the forgotten images' *features* (``ball_space="features"``): the head is
    patched on B∞(φ(x), r) ∩ the interval image of [0,1]^3072, r in feature units; the claim covers every input
    whose features fall in the ball. Radii are given as shares of the median feature ℓ∞ norm of the points."""
    runs = {}
    if not (args.feature_radii or args.feature_region_radii):
        return runs
    with torch.no_grad():
        phi = predict_features(model, ds.X_train[idx])
    scale = float(phi.abs().amax(dim=1).median())
    plans = [(r, False) for r in args.feature_radii] + [(r, True) for r in args.feature_region_radii]
    for share, within_region in plans:
        r = share * scale
        res = forget(model, ds.X_train[idx], labels=ds.y_train[idx], radius=r, ball_space="features",
                     within_region=within_region, test_data=(ds.X_test, ds.y_test),
                     remaining_data=(ds.X_train[keep], ds.y_train[keep]))
        rep = res.report
        name = f"features r={share:g}·median‖φ‖∞" + (" ∩ region" if within_region else "")
        claim = (f"every input whose head features lie within l-inf {r:.4g} (= {share:g} × the points' median "
                 f"feature l-inf norm {scale:.4g}) of a forgotten image's features")
        if within_region:
            claim += " and in its (tightened) linear region"
        runs[f"feature-ball/{name}"] = {
            "radius": r, "radius_share": share, "feature_scale": scale, "within_region": within_region,
            "claim_covers": claim,
            **{k: getattr(rep, k, None) for k in REPORT_KEYS + ("n_certified_neighbourhood", "ball_space")},
            "unlearn_vs_retrain": rep.unlearn_seconds / retrain_seconds}
        args.patched_models[f"prune {name}"] = res.model
        log(f"[{name}] {rep.summary()}")
    return runs


def predict_features(model, X, batch_size: int = 500) -> torch.Tensor:
    from prune_unlearn.experiments.feature_space import features

    return features(model, X, batch_size=batch_size)


def residual_recall_rows(args, ds, model, retrained, idx, log) -> dict:
    """Residual recall (issue 11): share of noisy / one-pixel-shifted copies of the forgotten images still
    predicted with their original label, for the base model, PRUNE (region-only and balls) and Retrain."""
    X, y = ds.X_train[idx], ds.y_train[idx]
    models = {"base": model, "retrain": retrained, **args.patched_models}
    out = {}
    for name, m in models.items():
        out[name] = residual_recall(m, X, y, draws=args.draws, image_shape=ds.input_shape)
        log(f"[residual recall] {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in out[name].items()))
    return out


def _fraction(text: str) -> float:
    num, _, den = text.partition("/")
    return float(num) / float(den or 1)


def _indices_hash(idx: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(",".join(str(int(i)) for i in idx).encode()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None, help="CIFAR-10 folder or archive (default: $PRUNE_DATA_DIR/cifar10…)")
    ap.add_argument("--out", default="results/cifar10")
    ap.add_argument("--cache-dir", default=None, help="trained models (default: <out>/cache)")
    ap.add_argument("--steps", default="forget,table3,table5")
    ap.add_argument("--width", type=float, default=width_for("cifar10"), help="VGG16 channel multiplier (1 = VGG16)")
    ap.add_argument("--epochs", type=int, default=None, help="base model epochs (default: the cifar10 recipe's)")
    ap.add_argument("--baseline-epochs", type=int, default=4, help="epochs of every retraining (Retrain, SISA, "
                    "Amnesiac, FU, Table V's retraining without the class)")
    ap.add_argument("--retrain", action="store_true", help="train the base model even if a cached one matches")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: two threads slow down 6x on a "
                    "loaded 2-core machine, docs/benchmarks.md)")
    ap.add_argument("--forget", type=int, default=500)
    ap.add_argument("--bounds", default="box,dual")
    ap.add_argument("--methods", default="prune,retrain,sisa,amnesiac,fu")
    ap.add_argument("--sizes", default="100,200,300,500", help="Table III's |D_U| (comma-separated)")
    ap.add_argument("--merge", action="store_true", help="keep other methods' rows of an earlier table3 run")
    ap.add_argument("--fu-hessian-samples", type=int, default=500)
    ap.add_argument("--fu-cg-iterations", type=int, default=20)
    ap.add_argument("--feature-domain", choices=("ibp", "data"), default="ibp", help="PRUNE's box in table3/table5")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--radius-scale", type=float, default=2.0)
    ap.add_argument("--retrain-labels", type=int, default=3, help="Table V: retrain for this many distinct labels")
    ap.add_argument("--radii", default="2/255", help="certified-neighbourhood radii of the forget step "
                    "(comma-separated, e.g. 2/255; empty: none)")
    ap.add_argument("--region-radii", default="2/255,8/255", help="radii of neighbourhoods confined to the "
                    "point's linear region too (forget(within_region=True))")
    ap.add_argument("--feature-radii", default="", help="radii of balls around the points' features, as shares "
                    "of the points' median feature l-inf norm (comma-separated, e.g. 0.02,0.05)")
    ap.add_argument("--feature-region-radii", default="", help="the same, confined to the point's linear region too")
    ap.add_argument("--suffix", default="", help="the forget step writes forget-<n><suffix>.json")
    ap.add_argument("--draws", type=int, default=10, help="noisy copies per point and sigma for residual recall")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--device", default="cpu", help="where the base model and the retrainings train (e.g. cuda)")
    args = ap.parse_args()
    args.bounds = [b for b in args.bounds.split(",") if b]
    args.radii = [_fraction(r) for r in args.radii.split(",") if r]
    args.region_radii = [_fraction(r) for r in args.region_radii.split(",") if r]
    args.feature_radii = [_fraction(r) for r in args.feature_radii.split(",") if r]
    args.feature_region_radii = [_fraction(r) for r in args.feature_region_radii.split(",") if r]
    args.patched_models = {}
    torch.set_num_threads(args.threads)
    if args.width <= 0:
        ap.error(f"--width must be a positive number (1 = full VGG16); got {args.width}")

    def log(msg: str) -> None:
        print(time.strftime("%H:%M:%S"), msg, flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = load_dataset("cifar10", args.data_dir)
    steps = [s for s in args.steps.split(",") if s]
    env = {"machine": machine_description(), "torch_threads": args.threads, "load_average_start": os.getloadavg()}
    if "forget" in steps:
        result = {**forget_step(args, ds, log), **env, "load_average_end": os.getloadavg()}
        path = out / f"forget-{args.forget}{args.suffix}.json"
        path.write_text(json.dumps(result, indent=1))
        log(f"wrote {path}")
        args.retrain = False  # trained afresh just now: the next steps reuse it
    if "table3" in steps:
        cfg = ExperimentConfig(dataset="cifar10", data_dir=args.data_dir, width=args.width, epochs=args.epochs,
                               sizes=tuple(int(n) for n in args.sizes.split(",") if n),
                               baseline_epochs=args.baseline_epochs, methods=tuple(args.methods.split(",")),
                               fu_hessian_samples=args.fu_hessian_samples, fu_cg_iterations=args.fu_cg_iterations,
                               prune_feature_domain=args.feature_domain, cache_dir=args.cache_dir,
                               retrain_base=args.retrain, merge=args.merge, device=args.device)
        run_table3(cfg, out, progress=args.progress, log=log)
    if "table5" in steps:
        opts = ClassRunOptions(width=args.width, baseline_epochs=args.baseline_epochs,
                               feature_domain=args.feature_domain, cache_dir=args.cache_dir,
                               retrain_labels=args.retrain_labels, device=args.device)
        run_table5("cifar10", out, data_dir=args.data_dir, trials=args.trials, epochs=args.epochs,
                   radius_scale=args.radius_scale, intermediate="ibp", options=opts, log=log)


if __name__ == "__main__":
    main()
