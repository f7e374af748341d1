"""Compute floors of the 10,000-point forget (``bench_verify.py --only mnist10k``'s cached model and points), one torch
thread: the matrix products the box bound cannot avoid, the forward passes every forget runs, and the dual
search's work (pair-steps) with its cost per pair-step.

    PYTHONPATH=src python benchmarks/floor_10k.py
    FLOOR_DUAL_STEPS=30 FLOOR_ONLY_DUAL=1 PYTHONPATH=src python benchmarks/floor_10k.py   # the dual at another budget

Prints one JSON line (seconds are the best of 3 CPU-time measurements; load before/after).
"""

import json
import os
import time

import torch

torch.set_num_threads(1)
from cached_10k import PairSteps, cached_regions  # noqa: E402

from prune_unlearn.core import dual_search  # noqa: E402
from prune_unlearn.core.confusion import margin_upper_bounds  # noqa: E402
from prune_unlearn.core.regions import point_regions  # noqa: E402

cached = cached_regions(int(os.environ.get("FLOOR_POINTS", "10000")))
split, head, feats, masks = cached.split, cached.head, cached.features, cached.masks
theta, targets, lo, hi = cached.theta, cached.targets, cached.lower, cached.upper


def best(fn, n=3):
    fn()
    times = []
    for _ in range(n):
        c = time.process_time()
        fn()
        times.append(time.process_time() - c)
    return min(times)


w32 = [w.to(torch.float32) for w in head.weights]
m32 = masks.to(torch.float32)


def box_products(dtype):
    """The three masked products of the box bound's rows (9 per region), chunks of 128 regions."""
    ws = [w.to(dtype) for w in w32]
    out = torch.randn(128, 9, 10).to(dtype)
    for s in range(0, len(masks), 128):
        m2, m1 = m32[s: s + 128, 256:].to(dtype).unsqueeze(1), m32[s: s + 128, :256].to(dtype).unsqueeze(1)
        g = (out[: len(m1)] @ ws[2]) * m2
        g = (g @ ws[1]) * m1
        g @ ws[0]


load_before = os.getloadavg()[0]
only_dual = bool(os.environ.get("FLOOR_ONLY_DUAL"))
steps = int(os.environ.get("FLOOR_DUAL_STEPS", "60"))
row = {} if only_dual else {
    "box_products_float32_s": best(lambda: box_products(torch.float32)),
    "box_products_bfloat16_s": best(lambda: box_products(torch.bfloat16)),
    "forward_float32_10k_s": best(lambda: split.head_forward(feats)),
    "forward_float64_10k_s": best(lambda: head.forward(feats.double())),
    "point_regions_s": best(lambda: point_regions(head, split, feats)),
    "box_bound_s": best(lambda: margin_upper_bounds(head, masks, theta, targets, lo, hi, "box")),
}
count = PairSteps()
c = time.process_time()
res = margin_upper_bounds(head, masks, theta, targets, lo, hi, "dual", dual_steps=steps)
row["dual_bound_s"] = time.process_time() - c
row["dual_steps"] = steps
row["dual_pair_steps_per_region"] = count.pairs / len(masks)
row["dual_mean_linf"] = float(((res.upper.max(1).values + 0.05) / 2).mean())
row["search_dtype"] = str(dual_search.search_dtype())
row["load1"] = [load_before, os.getloadavg()[0]]
print(json.dumps(row))
