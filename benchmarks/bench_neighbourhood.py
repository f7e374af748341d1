"""Certified neighbourhoods (issue 11): full MNIST (or Fashion-MNIST), FC(256×256), 500 random training points.

For region-only and neighbourhoods of several radii (fixed, and the radius search): certified points, radii
(min / median / max), exact changed-prediction counts on the 10,000 test images and the remaining training
data, residual recall under Gaussian noise (10 draws per point, clipped) and one-pixel shifts, unlearning time
against one retraining, and test-set inference of the patched model against the base model. Then the same on a
network with coarse linear regions (a dead-ReLU shell around a small core, ``experiments.coarse``).

    python benchmarks/bench_neighbourhood.py --out results/bench                   # `make bench` runs this
    python benchmarks/bench_neighbourhood.py --data fashion-mnist --out results/bench

Timings are wall-clock on whatever machine runs this; the JSON records the torch thread count and the load.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from prune_unlearn import forget, load, load_dataset, save
from prune_unlearn.core.models import default_architecture
from prune_unlearn.experiments.coarse import coarse_mlp, distinct_patterns
from prune_unlearn.experiments.robustness import residual_recall
from prune_unlearn.experiments.training import recipe_for, train_from_spec

sys.path.insert(0, str(Path(__file__).parent))
from bench_core import median_time  # noqa: E402  (benchmarks/ is not a package)

CONFIGS = (
    ("region-only", {"radius": None}),
    ("r=2/255", {"radius": 2 / 255}),
    ("r=4/255", {"radius": 4 / 255}),
    ("r=8/255", {"radius": 8 / 255}),
    ("r=12/255", {"radius": 12 / 255}),
    ("search", {"radius": "search", "max_radius": 16 / 255}),
)
# the coarse-region network: region-only, two radii and forget's default (radius="auto": 12/255 on [0, 1])
COARSE_CONFIGS = (CONFIGS[0], CONFIGS[1], CONFIGS[3], ("default (auto)", {}))


def run_configs(model, ds, idx, configs, *, seed: int, log, recall: bool = True) -> list[dict]:
    X_u, y_u = ds.X_train[idx], ds.y_train[idx]
    X_rem, y_rem = ds.remaining(idx)
    side = int(round(ds.input_dim ** 0.5))
    rows = []
    for name, kw in configs:
        res = forget(model, X_u, labels=y_u, seed=seed, domain=(ds.domain_lower, ds.domain_upper),
                     test_data=(ds.X_test, ds.y_test), remaining_data=(X_rem, y_rem), **kw)
        rep = res.report
        row = {"config": name, **{k: (v if not isinstance(v, float) else round(v, 6)) for k, v in kw.items()},
               "certified": rep.n_certified_neighbourhood or rep.n_certified_region, "failed": rep.n_failed,
               "A_u_after": rep.A_u_after, "changed_tes": rep.changed_tes, "changed_res": rep.changed_res,
               "n_remaining": len(y_rem), "unlearn_seconds": rep.unlearn_seconds, "timings": rep.timings,
               "patch_linf_median": float(res.model.neighbourhoods.values.abs().max(dim=1).values.median())
               if res.model.neighbourhoods is not None else rep.patch_linf_mean}
        rb = res.model.neighbourhoods
        if rb is not None and len(rb):
            row.update({"radius_min_255": float(rb.radius.min()) * 255,
                        "radius_median_255": float(rb.radius.median()) * 255,
                        "radius_max_255": float(rb.radius.max()) * 255,
                        "float32_proved": rep.n_float32_robust})
            if rep.crown_radius_median is not None:
                row["crown_radius_median_255"] = rep.crown_radius_median * 255
        if recall:
            row["recall"] = residual_recall(res.model, X_u, y_u, seed=seed,
                                            image_shape=(side, side) if side * side == ds.input_dim else None)
        rows.append(row)
        rec = row.get("recall", {})
        log(f"  {name:12s} certified {row['certified']}/{len(idx)} changed test {row['changed_tes']} remaining "
            f"{row['changed_res']} radius med {row.get('radius_median_255', float('nan')):.2f}/255 recall σ=0.003 "
            f"{rec.get('noise_0.003', float('nan')):.3f} σ=0.01 {rec.get('noise_0.01', float('nan')):.3f} "
            f"{rep.unlearn_seconds:.2f} s", flush=True)
        if name == "r=2/255":
            keep = res.model
    return rows, keep


def _main_runs(model, ds, idx, args, result, log) -> None:
    """Every configuration on the trained network, and its test-set inference with the r = 2/255 balls."""
    result["runs"], patched = run_configs(model, ds, idx, CONFIGS, seed=args.seed, log=log)
    for r in result["runs"]:
        if "retrain_seconds" in result:
            r["unlearn_vs_retrain"] = r["unlearn_seconds"] / result["retrain_seconds"]
    with torch.no_grad():
        tb = median_time(lambda: model(ds.X_test), 15, warmup=1)
        tp = median_time(lambda: patched(ds.X_test), 15, warmup=1)
    result["inference"] = {"rows": len(patched.neighbourhoods), "base_seconds": tb, "patched_seconds": tp,
                           "ratio": tp / tb, "stored_numbers": patched.neighbourhoods.stored_numbers()}
    log(f"inference on the test set: base {1000 * tb:.1f} ms, with {len(patched.neighbourhoods)} balls "
        f"{1000 * tp:.1f} ms ({tp / tb:.2f}x)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="mnist")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default="results/bench")
    ap.add_argument("--model", default=None, help="a saved base model to use instead of training one")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-coarse", action="store_true")
    ap.add_argument("--skip-retrain", action="store_true", help="do not time one retraining (no time ratio)")
    ap.add_argument("--only-coarse", action="store_true", help="only the coarse-region network (needs no --model)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = lambda *a, **k: print(*a, **{"flush": True, **k})  # noqa: E731
    ds = load_dataset(args.data, args.data_dir)
    spec = default_architecture(ds.name, ds.input_dim, ds.num_classes)
    recipe = recipe_for(ds.name, seed=args.seed)
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "torch_threads": args.threads,
              "load_average_start": os.getloadavg(), "dataset": ds.name, "n": args.n}
    if args.only_coarse:
        model, args.skip_retrain, args.skip_coarse = None, True, False
    elif args.model:
        model = load(args.model)
    else:
        trained = train_from_spec(spec, ds.X_train, ds.y_train, recipe)
        model = trained.model
        result["train_seconds"] = trained.seconds
        save(model, out / f"{ds.name}-nbhd-base.safetensors")
    idx = torch.randperm(len(ds.y_train), generator=torch.Generator().manual_seed(args.seed))[:args.n]
    if not args.skip_retrain:
        t = time.perf_counter()
        train_from_spec(spec, *ds.remaining(idx), recipe)
        result["retrain_seconds"] = time.perf_counter() - t
        log(f"{ds.name}: retraining {result['retrain_seconds']:.1f} s", flush=True)
    if model is not None:
        _main_runs(model, ds, idx, args, result, log)
    if not args.skip_coarse:
        t = time.perf_counter()
        coarse, seconds = coarse_mlp(ds.X_train, ds.y_train, ds.num_classes, recipe, alive=24, seed=args.seed)
        with torch.no_grad():
            acc = float((coarse(ds.X_test).argmax(1) == ds.y_test).float().mean())
        result["coarse"] = {"alive_per_layer": 24, "train_seconds": seconds, "test_accuracy": acc,
                            "distinct_patterns_train": distinct_patterns(coarse, ds.X_train)}
        log(f"coarse network: test accuracy {acc:.4f}, {result['coarse']['distinct_patterns_train']} distinct "
            f"patterns among {len(ds.y_train)} training images", flush=True)
        result["coarse"]["runs"], _ = run_configs(coarse, ds, idx, COARSE_CONFIGS, seed=args.seed, log=log,
                                                  recall=False)
    result["load_average_end"] = os.getloadavg()
    path = out / f"neighbourhood-{ds.name}{'-coarse' if args.only_coarse else ''}.json"
    path.write_text(json.dumps(result, indent=1))
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
