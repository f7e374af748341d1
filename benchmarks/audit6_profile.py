"""Profile the default audit of 500 points on a 6-hidden-layer MNIST head (issue 15, target ≤ 60 s).

The model, points and certificate are those of ``bench_verify.py --only audit6`` (same seeds: 784-256×6-10,
2 epochs, 8 constant neurons per hidden layer, 500 random training points forgotten with the dual bound);
they are built once into ``--scratch`` and reused. Prints wall and process CPU time, the CPU time the whole
machine spent meanwhile (``/proc/stat``: on a quiet machine, the audit and its worker processes), the load,
the audit's stage timings and (``--prof``) the 45 most expensive calls of the calling process. One torch
thread per process; ``--workers`` processes for the exact bounds and the LPs (default: the library's setting).

    PRUNE_DATA_DIR=../shared/data python benchmarks/audit6_profile.py --prof
    PRUNE_DATA_DIR=../shared/data python benchmarks/audit6_profile.py --workers 2
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scratch", default="/tmp/prune-bench-verify/audit6")
    ap.add_argument("--prof", action="store_true")
    ap.add_argument("--workers", type=int, default=None, help="processes for exact bounds and LPs (audit(workers=))")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from prune_unlearn import forget, load, load_dataset, save
    from prune_unlearn.verify.audit import audit
    from prune_unlearn.verify.certificate import Certificate

    ds = load_dataset("mnist", os.environ.get("PRUNE_DATA_DIR"))
    out = Path(args.scratch)
    files = out / "deep6.safetensors", out / "deep6.certificate.json", out / "deep6.points.pt"
    if not all(f.exists() for f in files):
        from bench_verify import deep_mnist_model

        out.mkdir(parents=True, exist_ok=True)
        model = deep_mnist_model(ds)
        idx = torch.randperm(len(ds.y_train), generator=torch.Generator().manual_seed(0))[:500]
        X, y = ds.X_train[idx], ds.y_train[idx]
        res = forget(model, X, labels=y, bound="dual", radius=None)  # region patches, as measured
        save(res.model, files[0])
        res.certificate.to_json(files[1])
        torch.save({"X": X, "y": y}, files[2])
    model, cert = load(files[0]), Certificate.from_json(files[1])
    pts = torch.load(files[2], weights_only=True)
    prof = cProfile.Profile() if args.prof else None
    load_before = os.getloadavg()[0]
    busy = machine_busy_seconds()
    t, c = time.perf_counter(), time.process_time()
    if prof:
        prof.enable()
    result = audit(model, cert, points=pts["X"], labels=pts["y"], locality_inputs=ds.X_test, workers=args.workers)
    if prof:
        prof.disable()
    print(f"audit wall {time.perf_counter() - t:.1f} s, CPU {time.process_time() - c:.1f} s (calling process), "
          f"{machine_busy_seconds() - busy:.1f} s (whole machine), torch threads 1, {result.workers} process(es) "
          f"for the stages, load {load_before:.2f} -> {os.getloadavg()[0]:.2f}")
    print(result.passed, {k: round(v, 1) for k, v in result.timings.items()},
          {k: list(v) for k, v in result.counts().items()})
    if prof:
        pstats.Stats(prof).sort_stats("cumulative").print_stats(45)


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return (sum(fields[:3]) + sum(fields[5:8])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    main()
