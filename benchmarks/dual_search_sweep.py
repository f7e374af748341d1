"""How fast the dual search tightens on the 10,000-point benchmark's regions, and whether it can start closer.

Uses ``bench_verify.py --only mnist10k``'s cached model and points (run that first), one torch thread:

1. the search's step size and first-moment decay (``dual_search.LR``, ``BETAS``) at several step budgets:
   pair-steps per region, mean over regions of the largest bound ``max_l U_l`` (the patch is half of it), CPU s;
2. a warm start for regions ``B`` from the multipliers found on regions ``A`` (60 steps): the mean multipliers of
   A's pairs with the same (target, label), and the mean over all of A's pairs, each evaluated soundly on B as is;
3. exact LPs (HiGHS) on the first 20 regions: CPU per region and how many halfspaces bind at the optimum, and
   the CPU time of a small LP (784 box-bounded columns, 30 random dense rows).

    PYTHONPATH=src python benchmarks/dual_search_sweep.py [--regions 1000]

Prints one JSON line per measurement.
"""

import argparse
import json
import os
import time

import torch

torch.set_num_threads(1)
from cached_10k import PairSteps, cached_regions  # noqa: E402

from prune_unlearn.core import dual_search  # noqa: E402
from prune_unlearn.core.confusion import (  # noqa: E402
    _dual_value, _label_rows, _other_labels, _region_terms, margin_upper_bounds)
from prune_unlearn.core.sound_backward import SoundBackward  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--regions", type=int, default=1000, help="regions per set (A and B)")
args = parser.parse_args()
n = args.regions
cached = cached_regions(2 * n)
head, masks, targets, lo, hi = cached.head, cached.masks, cached.targets, cached.lower, cached.upper
theta = cached.theta.to(torch.float64)
A, B = slice(0, n), slice(n, 2 * n)

count = PairSteps()


def dual(sl, steps):
    count.pairs = 0
    c = time.process_time()
    res = margin_upper_bounds(head, masks[sl], theta[sl], targets[sl], lo, hi, "dual", dual_steps=steps)
    return res, time.process_time() - c, count.pairs / (sl.stop - sl.start)


def emit(**row):
    row["load1"] = round(os.getloadavg()[0], 2)
    print(json.dumps(row), flush=True)


box = margin_upper_bounds(head, masks[B], theta[B], targets[B], lo, hi, "box")
emit(part="box", regions=n, mean_largest_bound=float(box.upper.max(1).values.mean()))
defaults = dual_search.LR, dual_search.BETAS
for lr in (0.02, 0.04, 0.08):
    for beta1 in (0.7, 0.9):
        dual_search.LR, dual_search.BETAS = lr, (beta1, 0.999)
        for steps in (15, 30, 45, 60):
            res, cpu, pair_steps = dual(B, steps)
            emit(part="sweep", lr=lr, beta1=beta1, steps=steps, pair_steps_per_region=round(pair_steps, 1),
                 mean_largest_bound=round(float(res.upper.max(1).values.mean()), 2), cpu_s=round(cpu, 3))
dual_search.LR, dual_search.BETAS = defaults  # the warm starts below use the library's own search

# warm start: A's multipliers (the target's row is zero) averaged per (target, label) and over all pairs
res_a, _, _ = dual(A, 60)
mu_a, n_hidden = res_a.multipliers, masks.shape[1]
used = mu_a.abs().sum(-1) > 0  # (n, C): the pairs whose bound the search improved on
table = torch.zeros(10, 10, n_hidden)
hits = torch.zeros(10, 10)
for label in range(10):
    table[:, label].index_add_(0, targets[A], mu_a[:, label] * used[:, label, None])
    hits[:, label].index_add_(0, targets[A], used[:, label].float())
table /= hits.clamp(min=1).unsqueeze(-1)
overall = mu_a[used].mean(0)

signs, _, w0, q = _region_terms(head, masks[B], theta[B])
others = _other_labels(targets[B], 10)
rows = _label_rows(targets[B], 10).gather(1, others.unsqueeze(-1).expand(-1, -1, 10))
w0_rows = (rows * w0.unsqueeze(1)).sum(-1)
sound = SoundBackward.build(head, lo, hi)
for name, mu in (("per (target, label) mean", table[targets[B].unsqueeze(1), others]),
                 ("mean over all pairs", overall.expand(n, 9, n_hidden).contiguous())):
    value, _ = _dual_value(head, masks[B], rows, signs, w0_rows, q, mu, lo, hi, sound, need_rows=False)
    emit(part="warm start (no steps)", init=name, regions=n,
         mean_largest_bound=round(float(value.max(1).values.mean()), 2))

# 3. exact LPs: how many halfspaces bind at the optimum (for the label that sets the patch), and what a small LP costs
lp_regions = slice(0, min(n, 20))
c = time.process_time()
exact = margin_upper_bounds(head, masks[lp_regions], theta[lp_regions], targets[lp_regions], lo, hi, "lp")
lp_cpu = (time.process_time() - c) / (lp_regions.stop - lp_regions.start)
largest = exact.upper.argmax(1)
binding = (exact.multipliers[torch.arange(len(largest)), largest] > 1e-6).sum(1)
emit(part="exact LP", regions=lp_regions.stop, cpu_s_per_region=round(lp_cpu, 3), halfspaces=masks.shape[1],
     binding_min=int(binding.min()), binding_max=int(binding.max()))

import highspy  # noqa: E402
import numpy as np  # noqa: E402

from prune_unlearn.core.highs import dense_to_csr, new_highs  # noqa: E402

rng, d, k, times = np.random.default_rng(0), 784, 30, []
for _ in range(50):
    rows_np, cost = rng.standard_normal((k, d)), rng.standard_normal(d)
    c = time.process_time()
    lp = new_highs()
    lp.addVars(d, np.zeros(d), np.ones(d))
    csr = dense_to_csr(rows_np)
    lp.addRows(k, -5 * np.abs(rng.standard_normal(k)), np.full(k, highspy.kHighsInf), csr[2].size, *csr)
    lp.changeObjectiveSense(highspy.ObjSense.kMaximize)
    lp.changeColsCost(d, np.arange(d, dtype=np.int32), cost)
    lp.run()
    times.append(time.process_time() - c)
emit(part="small HiGHS LP", columns=d, rows=k, cpu_ms_median_of_50=round(float(np.median(times)) * 1e3, 2))
