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
from safetensors.torch import load_file  # noqa: E402

from prune_unlearn import load  # noqa: E402
from prune_unlearn.core import dual_search  # noqa: E402
from prune_unlearn.core.confusion import margin_upper_bounds  # noqa: E402
from prune_unlearn.core.patches import PatchedModel  # noqa: E402
from prune_unlearn.core.regions import HeadNetwork, point_regions  # noqa: E402
from prune_unlearn.core.split import split_model  # noqa: E402

SCRATCH = os.environ.get("PRUNE_BENCH_SCRATCH", "/tmp/prune-bench-verify")
if not os.path.exists(f"{SCRATCH}/mnist-10k-points.safetensors"):
    raise SystemExit(f"no cached model and points in {SCRATCH}: run `python benchmarks/bench_verify.py --only mnist10k` "
                     "first (or set PRUNE_BENCH_SCRATCH to its --scratch folder)")
model = load(f"{SCRATCH}/mnist-base-verify.safetensors")
pts = load_file(f"{SCRATCH}/mnist-10k-points.safetensors")
N = int(os.environ.get("FLOOR_POINTS", "10000"))
X, y = pts["X"][:N], pts["y"][:N]
patched = PatchedModel.wrap(model, head=None)
split = split_model(patched.base, None)
head = HeadNetwork.from_split(split)
feats = split.features(X)
pr = point_regions(head, split, feats)
masks, theta = pr.masks, pr.min_slack / 2
targets = (y + torch.randint(1, 10, (len(y),), generator=torch.Generator().manual_seed(0))) % 10
lo, hi = torch.zeros(784, dtype=torch.float64), torch.ones(784, dtype=torch.float64)


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
# the dual search: count pair-steps by wrapping the forward pass of its head
count = {"pairs": 0}
forward = dual_search._Head.forward


def counting(self, mask_blocks, u):
    count["pairs"] += u.shape[0]
    return forward(self, mask_blocks, u)


dual_search._Head.forward = counting
c = time.process_time()
res = margin_upper_bounds(head, masks, theta, targets, lo, hi, "dual", dual_steps=steps)
row["dual_bound_s"] = time.process_time() - c
row["dual_steps"] = steps
row["dual_pair_steps_per_region"] = count["pairs"] / len(masks)
row["dual_mean_linf"] = float(((res.upper.max(1).values + 0.05) / 2).mean())
row["search_dtype"] = str(dual_search.search_dtype())
row["load1"] = [load_before, os.getloadavg()[0]]
print(json.dumps(row))
