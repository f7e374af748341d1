"""Core benchmark (issue "Core"): full MNIST, FC(256×256), forget 100 and 500 random training points.

Reports every metric of the report, unlearning vs retraining time (same run), single-point
latency per bound, test-set inference time of the patched vs the base model, patch storage, peak
memory, the gap of box/dual bounds to the exact LP, and float32 flips at LP vertices.

    python benchmarks/bench_core.py --out results/bench          # what `make bench` runs
    python benchmarks/bench_core.py --data mnist5k --quick        # a smaller smoke run

Timings are wall-clock on whatever machine runs this; compare ratios from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import sklearn.cluster  # noqa: F401  (imported up front: its import time is not unlearning time)
import torch

from prune_unlearn import forget, load_dataset
from prune_unlearn.core.models import default_architecture
from prune_unlearn.core.regions import HeadNetwork, region_halfspaces
from prune_unlearn.experiments.training import recipe_for, train_from_spec


def median_time(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def peak_memory_of_forget(points_path: Path, model_path: Path, bound: str) -> dict:
    """Run one forget in a fresh process that holds only the model and the points to forget.

    Reports the process's RSS before forgetting (Python, torch, model, points) and its peak RSS.
    """
    code = f"""
import resource, json, torch
from safetensors.torch import load_file
from prune_unlearn import forget, load
model = load({str(model_path)!r})
pts = load_file({str(points_path)!r})
X, y = pts["X"], pts["y"]
forget(model, X[:2], labels=y[:2], bound={bound!r}, radius=None)  # imports and lazy initialisation
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
res = forget(model, X, labels=y, bound={bound!r}, radius=None)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"rss_before_forget_mb": before / 1024, "peak_rss_mb": after / 1024,
                  "n_certified_region": res.report.n_certified_region}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def float32_vertex_check(model, patched, X, n_points: int) -> dict:
    """For region claims: exact LP minimisers of each margin (scipy/HiGHS), then the float32 model there."""
    from scipy.optimize import linprog

    split = patched.split
    head = HeadNetwork.from_split(split)
    ps = patched.patches
    masks = ps.masks()
    region, _ = patched.covering_region(X[:n_points])
    d = head.input_dim
    total, flipped, min_margin = 0, 0, float("inf")
    for i in range(n_points):
        r = int(region[i])
        if r < 0 or not bool(ps.float32_robust[r]):
            continue
        A, c = region_halfspaces(head, masks[r: r + 1])
        s = masks[r].double() * 2 - 1
        from prune_unlearn.core.regions import affine_logits

        W, w = affine_logits(head, masks[r: r + 1])
        t = int(ps.targets[r])
        for lab in range(head.num_classes):
            if lab == t:
                continue
            obj = (W[0, t] - W[0, lab]).numpy()
            res = linprog(obj, A_ub=-(s.unsqueeze(1) * A[0]).numpy(),
                          b_ub=(s * c[0]).numpy() - float(ps.region_threshold[r]),
                          bounds=[(0.0, 1.0)] * d, method="highs")
            if res.status != 0:
                continue
            vertex = torch.tensor(res.x, dtype=torch.float32).unsqueeze(0)
            with torch.no_grad():
                out = patched(vertex)[0]
            total += 1
            flipped += int(out.argmax()) == t
            others = out.clone()
            others[t] = -float("inf")
            min_margin = min(min_margin, float(out[t] - others.max()))
    return {"vertices": total, "target_wins": flipped, "min_float32_margin": min_margin}


def ledger_throughput(out_dir: Path, n_requests: int = 10_000) -> dict:
    """10,000 one-point requests on a small MLP, processed in batches of 1,000 through the ledger."""
    from prune_unlearn import Ledger, save
    from prune_unlearn.core.models import mlp

    torch.manual_seed(0)
    model = mlp(4, [8, 8], 3).eval()
    path = out_dir / "ledger-model.safetensors"
    save(model, path)
    pts = torch.rand(n_requests, 4, generator=torch.Generator().manual_seed(1))
    np.save(out_dir / "ledger-points.npy", pts.numpy())
    db = out_dir / "ledger.sqlite"
    if db.exists():
        db.unlink()
    with Ledger(db) as ledger:
        files = []
        for i in range(n_requests):
            f = out_dir / "ledger-req" / f"{i}.npy"
            files.append(f)
        (out_dir / "ledger-req").mkdir(exist_ok=True)
        for i, f in enumerate(files):
            np.save(f, pts[i: i + 1].numpy())
        add_start = time.perf_counter()
        ledger.add_many([{"requester": f"user{i}", "points_file": str(f)} for i, f in enumerate(files)])
        add_s = time.perf_counter() - add_start
        t = time.perf_counter()
        result = ledger.process(path, batch_size=1000)
        process_s = time.perf_counter() - t
        t = time.perf_counter()
        ok = ledger.verify(path).ok
        verify_s = time.perf_counter() - t
    from prune_unlearn import load

    patched = load(path)
    with torch.no_grad():
        still = int((patched(pts).argmax(1) == model(pts).argmax(1)).sum())
    masks = patched.patches.masks()
    return {"requests": n_requests, "add_seconds": add_s, "process_seconds": process_s, "verify_seconds": verify_s,
            "verified": ok, "regions": len(patched.patches), "distinct_patterns": int(torch.unique(masks, dim=0).shape[0]),
            "points_still_predicting_their_label": still,
            "forgotten": result.to_dict().get("n_forgotten"), "failed": result.to_dict().get("n_failed")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="mnist")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default="results/bench")
    ap.add_argument("--sizes", default="100,500")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="fewer repeats, no LP comparison")
    args = ap.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]

    ds = load_dataset(args.data, args.data_dir)
    spec = default_architecture(ds.name, ds.input_dim, ds.num_classes)
    recipe = recipe_for(ds.name, seed=args.seed)
    print(f"training {spec} on {ds} with {recipe}", flush=True)
    base = train_from_spec(spec, ds.X_train, ds.y_train, recipe)
    model = base.model
    from prune_unlearn import save

    model_path = out_dir / f"{ds.name}-base.safetensors"
    save(model, model_path, info={"recipe": recipe.to_dict()})
    with torch.no_grad():
        test_acc = float((model(ds.X_test).argmax(1) == ds.y_test).float().mean())
    print(f"  trained in {base.seconds:.1f} s, test accuracy {100 * test_acc:.2f}%", flush=True)

    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "python": platform.python_version()},
        "dataset": ds.name, "architecture": spec, "recipe": recipe.to_dict(),
        "train_seconds": base.seconds, "test_accuracy": test_acc, "runs": [],
    }

    patched_500 = None
    for n in sizes:
        idx = torch.randperm(len(ds.y_train), generator=torch.Generator().manual_seed(args.seed))[:n]
        X_rem, y_rem = ds.remaining(idx)
        t = time.perf_counter()
        train_from_spec(spec, X_rem, y_rem, recipe)  # the retraining baseline, timed
        retrain_seconds = time.perf_counter() - t
        print(f"n={n}: retraining took {retrain_seconds:.1f} s", flush=True)
        configs = [(s, b) for s in ("per-point", "cluster") for b in ("box", "dual")]
        if n == min(sizes) and not args.quick:
            configs.append(("per-point", "lp"))
        for strategy, bound in configs:
            res = forget(model, ds.X_train[idx], labels=ds.y_train[idx], strategy=strategy, bound=bound,
                         seed=args.seed, test_data=(ds.X_test, ds.y_test), remaining_data=(X_rem, y_rem), radius=None)
            rep = res.report.with_retraining(retrain_seconds)
            row = {"n": n, **{k: v for k, v in rep.to_dict().items() if k not in ("failed",)}}
            results["runs"].append(row)
            print(f"  {strategy:9s} {bound:4s}: certified region {rep.n_certified_region}, point "
                  f"{rep.n_certified_point}, A_u {rep.A_u_before:.3f}->{rep.A_u_after:.3f}, changed "
                  f"tes/res {rep.changed_tes}/{rep.changed_res}, |d| mean {rep.patch_linf_mean:.1f}, "
                  f"{rep.unlearn_seconds:.3f} s = {100 * rep.unlearn_retrain_ratio:.2f}% of retraining",
                  flush=True)
            if n == max(sizes) and strategy == "per-point" and bound == "box":
                patched_500 = res.model

    # single-point latency (median after warm-up), each on a different point
    latency = {}
    points = iter(range(10_000))
    for bound, reps in (("box", 20), ("dual", 20), ("lp", 3)):
        if bound == "lp" and args.quick:
            continue

        def one(bound=bound):
            i = next(points)
            forget(model, ds.X_train[i: i + 1], labels=ds.y_train[i: i + 1], bound=bound, radius=None)

        latency[bound] = median_time(one, reps, warmup=1 if bound == "lp" else 3)
        print(f"single point, {bound}: {1000 * latency[bound]:.1f} ms", flush=True)
    results["single_point_seconds"] = latency

    # bound tightness against the exact LP, on the same points: patch size ‖d‖∞ = max_l(U_l + ε)/2
    if not args.quick:
        idx = torch.randperm(len(ds.y_train), generator=torch.Generator().manual_seed(123))[:20]
        sizes_by_bound = {}
        for bound in ("box", "dual", "lp"):
            r = forget(model, ds.X_train[idx], labels=ds.y_train[idx], bound=bound, seed=1, radius=None)
            sizes_by_bound[bound] = r.model.patches.values.abs().max(dim=1).values.double()
            if bound == "lp":
                results["float32_at_lp_vertices"] = float32_vertex_check(model, r.model, ds.X_train[idx], 20)
        results["patch_size_vs_lp"] = {
            b: {"mean_ratio": float((v / sizes_by_bound["lp"]).mean()), "max_ratio": float((v / sizes_by_bound["lp"]).max())}
            for b, v in sizes_by_bound.items()}
        print("patch size / LP patch size:", results["patch_size_vs_lp"], flush=True)
        print("float32 at LP vertices:", results.get("float32_at_lp_vertices"), flush=True)

    # inference time on the test set: base vs model carrying the largest run's patches
    with torch.no_grad():
        tb = median_time(lambda: model(ds.X_test), 30)
        tp = median_time(lambda: patched_500(ds.X_test), 30)
    results["inference"] = {"patches": len(patched_500.patches), "base_seconds": tb, "patched_seconds": tp,
                            "ratio": tp / tb, "stored_numbers": patched_500.patches.stored_numbers()}
    print(f"test-set inference: base {1000 * tb:.1f} ms, patched ({len(patched_500.patches)} patches) "
          f"{1000 * tp:.1f} ms, ratio {tp / tb:.2f}; patches store {patched_500.patches.stored_numbers():.0f} numbers",
          flush=True)

    from safetensors.torch import save_file

    idx = torch.randperm(len(ds.y_train), generator=torch.Generator().manual_seed(args.seed))[:max(sizes)]
    points_path = out_dir / "forget-points.safetensors"
    save_file({"X": ds.X_train[idx].contiguous(), "y": ds.y_train[idx].contiguous()}, str(points_path))
    results["memory"] = {b: peak_memory_of_forget(points_path, model_path, b) for b in ("box", "dual")}
    print("peak memory:", results["memory"], flush=True)

    # the default audit of a certificate for the largest request (dual bound: its proof carries multipliers)
    from prune_unlearn import Certificate, audit
    from prune_unlearn import load as load_model

    idx = torch.randperm(len(ds.y_train), generator=torch.Generator().manual_seed(args.seed))[:max(sizes)]
    res = forget(model, ds.X_train[idx], labels=ds.y_train[idx], bound="dual", seed=args.seed, radius=None)
    res.certificate.to_json(out_dir / "audit-certificate.json")
    save(res.model, out_dir / "audit-patched.safetensors")
    t = time.perf_counter()
    audited = audit(load_model(out_dir / "audit-patched.safetensors"),
                    Certificate.from_json(out_dir / "audit-certificate.json"),
                    points=ds.X_train[idx], labels=ds.y_train[idx], locality_inputs=ds.X_test)
    results["audit"] = {"points": max(sizes), "seconds": time.perf_counter() - t, "passed": audited.passed,
                        "counts": {k: list(v) for k, v in audited.counts().items()}}
    print(f"default audit of the {max(sizes)}-point certificate: {results['audit']['seconds']:.1f} s, "
          f"passed={audited.passed}, {audited.counts()}", flush=True)

    results["ledger"] = ledger_throughput(out_dir)
    print("ledger:", results["ledger"], flush=True)

    (out_dir / f"core-{ds.name}.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {out_dir / f'core-{ds.name}.json'}")


if __name__ == "__main__":
    main()
