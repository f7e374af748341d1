"""Issue 15 benchmark: threads, the audit on a 6-hidden-layer head, 10,000 MNIST points, export size, Marabou.

Sections (``--only`` picks some; all by default):

``threads``   the authors' PurchaseModel (600-256-20) on 20,000 Purchase-like points (built here,
              benchmarks/purchase_like.py): forget 500 points, box and dual, with the caller's torch
              thread setting at 1 and 2 and the library's ``PRUNE_THREADS`` workers at 1 and 2, idle and
              with two busy-loop processes loading both cores; exact LP (10 points) and CROWN radii (200).
``audit6``    MNIST, 784-256×6-10 trained here (2 epochs), 8 neurons per hidden layer made constant
              (4 dead, 4 always active); forget 500 points (dual) and run the default audit (20 LPs).
``mnist10k``  full MNIST, FC(256×256) (the core benchmark's recipe): forget 10,000 random training
              points per-point with box and dual; retraining on the rest, changed predictions, peak RSS.
``export``    export of a 500-region MNIST certificate (plain and gzip), and Marabou on sampled properties.

    PRUNE_DATA_DIR=../shared/data python benchmarks/bench_verify.py --out results/bench

Every timing is wall-clock; the torch thread setting and the machine load (1-minute load average)
are written next to each one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from purchase_like import purchase_like, purchase_model  # noqa: E402

from prune_unlearn import forget, load_dataset, save  # noqa: E402
from prune_unlearn._threads import set_threads  # noqa: E402


def load1() -> float:
    return os.getloadavg()[0]


def _spin(stop):
    while not stop.is_set():
        pass


@contextlib.contextmanager
def busy_cores(n: int):
    """``n`` busy-loop processes (the "loaded" condition)."""
    if n == 0:
        yield
        return
    stop = mp.Event()
    procs = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(n)]
    for p in procs:
        p.start()
    time.sleep(1.0)
    try:
        yield
    finally:
        stop.set()
        for p in procs:
            p.join()


CPU_SECONDS: list[float] = []  # process CPU time of the last timed() call, kept beside its wall time


def timed(fn):
    """``(wall seconds, result)``; the process CPU seconds go to ``CPU_SECONDS[-1]``. On a shared machine the
    CPU time of single-threaded work is what its wall time would be on an idle core."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    CPU_SECONDS.append(time.process_time() - c)
    return time.perf_counter() - t, out


def section_threads(out: dict) -> None:
    from prune_unlearn.core.bounds import certified_radius
    from prune_unlearn.core.regions import HeadNetwork
    from prune_unlearn.core.split import split_model

    torch.set_num_threads(1)
    X, y = purchase_like(20_000)
    train_s, model = timed(lambda: purchase_model(X, y, epochs=10))
    acc = float((model(X).argmax(1) == y).float().mean())
    print(f"PurchaseModel trained in {train_s:.1f} s, train accuracy {acc:.3f}", flush=True)
    pts, lab = X[:500], y[:500]
    head = HeadNetwork.from_split(split_model(model))
    rows = []
    # (caller's torch threads, library intra-op threads, library workers): the library's default is (any, 1, 1);
    # (2, 2, 1) is what the library did before it set threads itself (kernels inherit the caller's 2 threads).
    configs = [(1, 1, 1), (2, 1, 1), (2, 2, 1), (1, 1, 2)]
    for load_name, busy in (("as found (no extra load)", 0), ("loaded: +2 busy-loop processes", 2)):
        with busy_cores(busy):
            for torch_threads, intra_op, workers in configs:
                torch.set_num_threads(torch_threads)
                set_threads(workers, intra_op=intra_op)
                forget(model, pts[:5], labels=lab[:5], bound="dual", radius=None)  # warm-up
                row = {"load": load_name, "load1": load1(), "torch_threads_set_by_caller": torch_threads,
                       "intra_op_threads": intra_op, "PRUNE_THREADS": workers}
                for bound in ("box", "dual"):
                    sec, res = timed(lambda: forget(model, pts, labels=lab, bound=bound, radius=None))
                    row[f"{bound}_500_s"] = sec
                    row[f"{bound}_500_cpu_s"] = CPU_SECONDS[-1]
                    row[f"{bound}_certified"] = res.report.n_certified_region
                    row[f"{bound}_patch_linf_mean"] = res.report.patch_linf_mean
                if workers == 1 and torch_threads == intra_op:
                    row["lp_10_s"], _ = timed(lambda: forget(model, pts[:10], labels=lab[:10], bound="lp", radius=None))
                    row["lp_10_cpu_s"] = CPU_SECONDS[-1]
                    row["crown_radius_200_s"], _ = timed(lambda: certified_radius(
                        head, pts[:200].double(), lab[:200], torch.zeros(600), torch.ones(600), iterations=8))
                    row["crown_radius_200_cpu_s"] = CPU_SECONDS[-1]
                rows.append(row)
                print(json.dumps(row), flush=True)
    set_threads(None)
    torch.set_num_threads(1)
    out["threads"] = {"model": "PurchaseModel 600-256-20 (FC(256))", "train_seconds": train_s,
                      "train_accuracy": acc, "rows": rows}


def _mnist():
    return load_dataset("mnist", os.environ.get("PRUNE_DATA_DIR"))


def deep_mnist_model(ds, depth: int = 6, constant_per_layer: int = 8, seed: int = 0):
    from torch import nn

    from prune_unlearn.core.models import mlp
    from prune_unlearn.experiments.training import Recipe, train_model

    torch.manual_seed(seed)
    model = mlp(ds.input_dim, [256] * depth, ds.num_classes)
    model = train_model(model, ds.X_train, ds.y_train, Recipe(lr=0.05, epochs=2, batch_size=64, seed=seed)).model
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():  # constant neurons, as in public nets with dead ReLUs
        for lin in linears[:-1]:
            for k in range(constant_per_layer):
                lin.weight[k].zero_()
                lin.bias[k] = -1.0 if k % 2 == 0 else 0.5
    return model.eval()


def section_audit6(out: dict, out_dir: Path) -> None:
    from prune_unlearn.verify.audit import audit

    torch.set_num_threads(1)
    ds = _mnist()
    train_s, model = timed(lambda: deep_mnist_model(ds))
    acc = float((model(ds.X_test).argmax(1) == ds.y_test).float().mean())
    idx = torch.randperm(len(ds.y_train), generator=torch.Generator().manual_seed(0))[:500]
    X, y = ds.X_train[idx], ds.y_train[idx]
    forget_s, res = timed(lambda: forget(model, X, labels=y, bound="dual", radius=None))
    forget_cpu = CPU_SECONDS[-1]
    load_before = load1()
    audit_s, result = timed(lambda: audit(res.model, res.certificate, points=X, labels=y,
                                          locality_inputs=ds.X_test))
    audit_cpu = CPU_SECONDS[-1]
    row = {"architecture": "784-256x6-10, 8 constant neurons per hidden layer", "train_seconds": train_s,
           "test_accuracy": acc, "forget_dual_500_s": forget_s, "forget_dual_500_cpu_s": forget_cpu,
           "audit_cpu_seconds": audit_cpu,
           "certified_region": res.report.n_certified_region, "audit_seconds": audit_s,
           "audit_passed": result.passed, "audit_timings": result.timings, "exact_backend": result.exact_backend,
           "counts": {k: list(v) for k, v in result.counts().items()}, "torch_threads": 1,
           "load1_before": load_before, "load1_after": load1()}
    print(result.summary(), flush=True)
    print(json.dumps(row), flush=True)
    out["audit6"] = row


def peak_rss_of(code: str, env: dict | None = None) -> dict:
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3000,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **(env or {})})
    if run.returncode:
        raise RuntimeError(run.stderr[-3000:])
    return json.loads(run.stdout.strip().splitlines()[-1])


_FORGET_10K = """
import json, os, resource, time, torch
threads = int(os.environ.get("PRUNE_THREADS", "1"))
torch.set_num_threads(threads)
from safetensors.torch import load_file
from prune_unlearn import forget, load, load_dataset, save
ds = load_dataset("mnist", os.environ.get("PRUNE_DATA_DIR"))
model = load({model!r})
pts = load_file({points!r})
X, y = pts["X"], pts["y"]
forget(model, X[:2], labels=y[:2], bound={bound!r}, radius=None)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
load_before = os.getloadavg()[0]
t, c = time.perf_counter(), time.process_time()
res = forget(model, X, labels=y, bound={bound!r}, radius=None)
sec, cpu = time.perf_counter() - t, time.process_time() - c
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
load_after = os.getloadavg()[0]
idx = torch.randperm(len(ds.y_train), generator=torch.Generator().manual_seed(0))[:10_000]
keep = torch.ones(len(ds.y_train), dtype=torch.bool); keep[idx] = False
with torch.no_grad():
    def preds(m, Z):
        return torch.cat([m(Z[i:i + 8192]).argmax(1) for i in range(0, len(Z), 8192)])
    ch_test = int((preds(model, ds.X_test) != preds(res.model, ds.X_test)).sum())
    ch_rem = int((preds(model, ds.X_train[keep]) != preds(res.model, ds.X_train[keep])).sum())
    still = int((preds(res.model, X) == y).sum())
if {save_dual!r} and {bound!r} == "dual":
    save(res.model, {dual_model!r})
    res.certificate.to_json({dual_cert!r})
print(json.dumps({{"bound": {bound!r}, "seconds": sec, "cpu_seconds": cpu, "certified_region": res.report.n_certified_region,
                  "failed": res.report.n_failed, "regions": res.report.n_regions_new,
                  "changed_test": ch_test, "changed_remaining": ch_rem, "still_predicted": still,
                  "rss_before_mb": before / 1024, "peak_rss_mb": peak / 1024, "timings": res.report.timings,
                  "patch_linf_mean": res.report.patch_linf_mean, "prune_threads": threads,
                  "load1_before": load_before, "load1_after": load_after}}))
"""


def section_mnist10k(out: dict, out_dir: Path, threads: int = 1) -> None:
    """Forget 10,000 random MNIST training points (box, dual) and retrain on the rest, both with ``threads``:
    torch threads for the retraining, the library's ``PRUNE_THREADS`` workers for ``forget``. The base model
    and the points are cached in ``out_dir`` (trained once); the retraining runs every time, so each ratio is
    against a retraining measured in the same run with the same thread setting."""
    from prune_unlearn import load
    from prune_unlearn.core.models import default_architecture
    from prune_unlearn.experiments.training import recipe_for, train_from_spec
    from safetensors.torch import save_file

    torch.set_num_threads(threads)
    ds = _mnist()
    spec = default_architecture(ds.name, ds.input_dim, ds.num_classes)
    recipe = recipe_for(ds.name, seed=0)
    model_path = out_dir / "mnist-base-verify.safetensors"
    train_s = None
    if model_path.exists():
        load(model_path)  # the cached base (trained once with this recipe, 1 torch thread)
    else:
        train_s, base = timed(lambda: train_from_spec(spec, ds.X_train, ds.y_train, recipe).model)
        save(base, model_path)
    idx = torch.randperm(len(ds.y_train), generator=torch.Generator().manual_seed(0))[:10_000]
    X_rem, y_rem = ds.remaining(idx)
    load_before = load1()
    retrain_s, _ = timed(lambda: train_from_spec(spec, X_rem, y_rem, recipe))
    retrain_cpu = CPU_SECONDS[-1]
    print(f"MNIST retraining on 50,000 points {retrain_s:.1f} s wall / {retrain_cpu:.1f} s CPU "
          f"({threads} torch threads, load {load_before:.2f} → {load1():.2f})", flush=True)
    pts_path = out_dir / "mnist-10k-points.safetensors"
    if not pts_path.exists():
        save_file({"X": ds.X_train[idx].contiguous(), "y": ds.y_train[idx].contiguous()}, str(pts_path))
    rows = []
    for bound in ("box", "dual"):
        code = _FORGET_10K.format(model=str(model_path), points=str(pts_path), bound=bound, save_dual=threads == 1,
                                  dual_model=str(out_dir / "mnist-10k-dual.safetensors"),
                                  dual_cert=str(out_dir / "mnist-10k-dual.certificate.json"))
        row = peak_rss_of(code, {"PRUNE_THREADS": str(threads)})
        row.update({"retrain_seconds": retrain_s, "retrain_cpu_seconds": retrain_cpu, "retrain_torch_threads": threads,
                    "retrain_load1_before": load_before, "ratio": row["seconds"] / retrain_s,
                    "cpu_ratio": row["cpu_seconds"] / retrain_cpu})
        rows.append(row)
        print(json.dumps(row), flush=True)
    out[f"mnist10k-threads{threads}"] = {"train_seconds": train_s, "retrain_seconds": retrain_s,
                                         "retrain_cpu_seconds": retrain_cpu, "rows": rows}


def section_export(out: dict, out_dir: Path) -> None:
    from prune_unlearn import load
    from prune_unlearn.verify.bundle import export_bundle

    torch.set_num_threads(1)
    ds = _mnist()
    model_path = out_dir / "mnist-base-verify.safetensors"
    if not model_path.exists():
        raise SystemExit("run the mnist10k section first (it trains the model this section uses)")
    base = load(model_path)
    idx = torch.randperm(len(ds.y_train), generator=torch.Generator().manual_seed(1))[:500]
    res = forget(base, ds.X_train[idx], labels=ds.y_train[idx], bound="dual", radius=None)
    rows = {}
    for compress in (False, True):
        folder = out_dir / f"export-500{'-gz' if compress else ''}"
        sec, doc = timed(lambda: export_bundle(res.model, folder, certificate=res.certificate, compress=compress))
        rows["gzip" if compress else "plain"] = {"seconds": sec, "cpu_seconds": CPU_SECONDS[-1], "files": len(doc["files"]) + 1,
                                                 "mb_total": doc["bytes_total"] / 1e6,
                                                 "properties": len(doc["properties"])}
        print(json.dumps(rows), flush=True)
    # Marabou on sampled properties (a child process per property, 60 s limit each)
    folder = out_dir / "export-500"
    doc = json.loads((folder / "export.json").read_text())
    sample = [doc["properties"][k]["vnnlib"] for k in (0, 100, 250, 400, 499) if k < len(doc["properties"])]
    marabou = []
    for prop in sample:
        code = f"""
import json, time, warnings
warnings.simplefilter("ignore")
from maraboupy import Marabou
t = time.perf_counter()
net = Marabou.read_onnx("region_network.onnx")
read = time.perf_counter() - t
code, _, _ = net.solve(propertyFilename={prop!r}, verbose=False,
                       options=Marabou.createOptions(verbosity=0, timeoutInSeconds=60))
print(json.dumps({{"property": {prop!r}, "result": code, "read_s": read, "total_s": time.perf_counter() - t}}))
"""
        run = subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=300)
        row = json.loads(run.stdout.strip().splitlines()[-1]) if run.returncode == 0 else \
            {"property": prop, "error": run.stderr[-500:], "returncode": run.returncode}
        row["load1"] = load1()
        marabou.append(row)
        print(json.dumps(row), flush=True)
    out["export"] = {"regions": len(res.model.patches), "sizes": rows, "marabou": marabou}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/bench")
    ap.add_argument("--only", default="threads,audit6,mnist10k,export")
    ap.add_argument("--threads", type=int, default=1,
                    help="mnist10k: torch threads of the retraining and PRUNE_THREADS workers of forget")
    ap.add_argument("--scratch", default="/tmp/prune-bench-verify",
                    help="folder for models, certificates and exports (large; not results)")
    args = ap.parse_args()
    out_dir = Path(args.scratch)
    out_dir.mkdir(parents=True, exist_ok=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / f"verify-{args.only.replace(',', '-')}.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                          "python": platform.python_version()}
    results["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    for name in args.only.split(","):
        t = time.perf_counter()
        {"threads": lambda: section_threads(results), "audit6": lambda: section_audit6(results, out_dir),
         "mnist10k": lambda: section_mnist10k(results, out_dir, args.threads),
         "export": lambda: section_export(results, out_dir)}[name]()
        print(f"[{name}] {time.perf_counter() - t:.0f} s", flush=True)
        path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {path}; peak RSS of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
