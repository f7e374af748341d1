"""Serving cost of certified neighbourhoods (issue 11): patched inference against the base model.

Forgets ``--n`` random training points with ``radius`` (default 12/255, so every point gets one ball row) and
times the base and the patched model on the test images at batch sizes 1 and 1000 (and the whole test set),
median of repeats, one torch thread by default.

    python benchmarks/bench_ball_inference.py --model mnist-base.safetensors --data-dir ../shared/data

A saved base model is required (``bench_neighbourhood.py`` writes one); the JSON records threads and load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from prune_unlearn import forget, load, load_dataset


def _per_batch(fn, batches) -> float:
    t = time.perf_counter()
    for b in batches:
        fn(b)
    return (time.perf_counter() - t) / len(batches)


def time_inference(base, patched, X: torch.Tensor, batch_sizes=(1, 1000, 10000), *, repeats: int = 9,
                   singles: int = 300) -> list[dict]:
    """Base and patched milliseconds per batch for each batch size (batch 1: the first ``singles`` test images),
    medians over ``repeats``; base and patched alternate so a change in machine load hits both alike."""
    out = []
    with torch.no_grad():
        for bs in batch_sizes:
            batches = list(X[:singles if bs == 1 else max(bs, len(X))].split(bs))
            _per_batch(base, batches[:2]), _per_batch(patched, batches[:2])
            tb, tp = [], []
            for _ in range(repeats):
                tb.append(_per_batch(base, batches))
                tp.append(_per_batch(patched, batches))
            b, p = statistics.median(tb), statistics.median(tp)
            out.append({"batch": bs, "base_ms": 1000 * b, "patched_ms": 1000 * p, "ratio": p / b})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default="mnist")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--radius", type=float, default=12 / 255)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = load_dataset(args.data, args.data_dir)
    base = load(args.model).eval()
    idx = torch.randperm(len(ds.y_train), generator=torch.Generator().manual_seed(args.seed))[:args.n]
    res = forget(base, ds.X_train[idx], labels=ds.y_train[idx], radius=args.radius, seed=args.seed,
                 domain=(ds.domain_lower, ds.domain_upper))
    patched = res.model.eval()
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "torch_threads": args.threads,
              "load_average_start": os.getloadavg(), "dataset": ds.name, "rows": len(patched.neighbourhoods),
              "timings": time_inference(base, patched, ds.X_test), "load_average_end": os.getloadavg()}
    for t in result["timings"]:
        print(f"batch {t['batch']:5d}: base {t['base_ms']:.3f} ms, patched {t['patched_ms']:.3f} ms "
              f"({t['ratio']:.2f}x)", flush=True)
    print(f"{result['rows']} ball rows, {args.threads} thread(s), load {result['load_average_start']} -> "
          f"{result['load_average_end']}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
