"""The 10,000-point benchmark's cached regions, for the scripts that study its bounds (``floor_10k.py``,
``dual_search_sweep.py``): ``bench_verify.py --only mnist10k`` trains the model and draws the points once, into
its ``--scratch`` folder (``PRUNE_BENCH_SCRATCH``, default ``/tmp/prune-bench-verify``)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from safetensors.torch import load_file

from prune_unlearn import load
from prune_unlearn.core import dual_search
from prune_unlearn.core.patches import PatchedModel
from prune_unlearn.core.regions import HeadNetwork, point_regions
from prune_unlearn.core.split import split_model

SCRATCH = os.environ.get("PRUNE_BENCH_SCRATCH", "/tmp/prune-bench-verify")


@dataclass
class CachedRegions:
    """The first ``n`` cached points' regions, tightening ``θ`` (half the smallest slack) and random targets
    (``y + U{1..9} mod 10``, seed 0), over MNIST's box [0, 1]^784."""

    split: object
    head: HeadNetwork
    features: torch.Tensor
    masks: torch.Tensor
    theta: torch.Tensor
    targets: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor


def cached_regions(n: int) -> CachedRegions:
    if not os.path.exists(f"{SCRATCH}/mnist-10k-points.safetensors"):
        raise SystemExit(f"no cached model and points in {SCRATCH}: run `python benchmarks/bench_verify.py --only "
                         "mnist10k` first (or set PRUNE_BENCH_SCRATCH to its --scratch folder)")
    model = load(f"{SCRATCH}/mnist-base-verify.safetensors")
    pts = load_file(f"{SCRATCH}/mnist-10k-points.safetensors")
    X, y = pts["X"][:n], pts["y"][:n]
    split = split_model(PatchedModel.wrap(model, head=None).base, None)
    head = HeadNetwork.from_split(split)
    feats = split.features(X)
    pr = point_regions(head, split, feats)
    targets = (y + torch.randint(1, 10, (len(y),), generator=torch.Generator().manual_seed(0))) % 10
    box = torch.zeros(784, dtype=torch.float64), torch.ones(784, dtype=torch.float64)
    return CachedRegions(split, head, feats, pr.masks, pr.min_slack / 2, targets, *box)


class PairSteps:
    """Counts the dual search's pair-steps (one masked forward pass of one (region, label) pair each)."""

    def __init__(self):
        self.pairs = 0
        forward = dual_search._Head.forward

        def counting(net, mask_blocks, u):
            self.pairs += u.shape[0]
            return forward(net, mask_blocks, u)

        dual_search._Head.forward = counting
