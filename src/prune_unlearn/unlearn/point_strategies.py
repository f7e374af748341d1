"""Point strategies: which linear regions of the requested points get which patch rows.

A strategy is an object with ``name`` and ``rows(problem, units) -> PatchRows``: given a
:class:`~prune_unlearn.unlearn.problem.PointProblem` and the units (linear regions) to forget, it
returns new point rows with their proofs and the points each row covers. ``forget`` chooses one by
name from ``POINT_STRATEGIES`` (built with :meth:`from_options` from forget's keywords), so a new
strategy is one more class there.

``"per-point"``
    Theorem 1 for every region: a support on the region and a confusion patch proven to make a
    wrong label win on the whole tightened region. Points sharing a region share one row.
``"cluster"``
    The paper's Algorithm 1: K-means on the points (in feature space); the point nearest each
    centroid is the representative; its region gets a certified patch; every member that the same
    patch value flips gets a support on its own region with that value (certified at the point);
    the rest go to the next round, until the forgotten share reaches ``delta``. With
    ``delta = 1`` every straggler left after ``max_rounds`` gets a per-point patch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..core.patches import BOUND_CODES
from .problem import PointProblem
from .region_patches import FLOAT32_SAFETY, float32_scale, point_gate_lambda, point_margin, region_patches
from .rows import PatchRows
from .targets import choose_targets

__all__ = ["POINT_STRATEGIES", "PerPoint", "Cluster", "region_rows"]


def region_rows(problem: PointProblem, unit_ids: list[int], keep_targets: torch.Tensor | None = None) -> PatchRows:
    """Theorem 1 for each unit: one row per region, certified on the whole tightened region."""
    p = problem
    if not unit_ids:
        return PatchRows.empty(p.head.num_hidden, p.units.excluded.shape[1])
    ids = torch.tensor(unit_ids, dtype=torch.int64)
    units = p.units
    targets = choose_targets(p, unit_ids, keep_targets)
    first = torch.stack([units.members[u][0] for u in unit_ids])
    scale = float32_scale(p.head, units.masks[ids], p.features[first], p.box.lower, p.box.upper)
    solved = region_patches(p.head, units.masks[ids], units.min_slack[ids], units.f32_error[ids] * scale, targets,
                            p.box.lower, p.box.upper, p.bound, p.epsilon, p.dual_steps, p.offsets)
    r = len(unit_ids)
    rows = PatchRows(
        p.head.num_hidden, units.excluded.shape[1], masks=units.masks[ids], gate_lambda=solved.gate_lambda,
        values=solved.values.to(torch.float32), targets=targets, excluded=units.excluded[ids],
        point_min_slack=units.min_slack[ids].clone(), region_threshold=solved.threshold.to(torch.float64),
        certified_margin=solved.margins.to(torch.float64),
        bound_code=torch.full((r,), BOUND_CODES[p.bound], dtype=torch.uint8), float32_robust=solved.robust.clone(),
        multipliers=solved.multipliers, covers=[units.members[u] for u in unit_ids])
    p.progress.update(r)
    return rows


def point_row(problem: PointProblem, unit: int, value: torch.Tensor, target: int, margin: float) -> PatchRows:
    """One row claimed only at its points: the unit's own region with a patch value proven elsewhere."""
    units = problem.units
    slack = float(units.min_slack[unit])
    lam = point_gate_lambda(slack)
    return PatchRows(
        problem.head.num_hidden, units.excluded.shape[1], masks=units.masks[unit: unit + 1],
        gate_lambda=torch.tensor([lam], dtype=torch.float32), values=value.unsqueeze(0).to(torch.float32),
        targets=torch.tensor([target], dtype=torch.int64), excluded=units.excluded[unit: unit + 1],
        point_min_slack=torch.tensor([slack], dtype=torch.float64),
        region_threshold=torch.tensor([float("nan")], dtype=torch.float64),
        certified_margin=torch.tensor([margin], dtype=torch.float64),
        bound_code=torch.tensor([BOUND_CODES["point"]], dtype=torch.uint8),
        float32_robust=torch.tensor([FLOAT32_SAFETY * float(units.f32_error[unit]) <= 3.0 / lam]),
        covers=[units.members[unit]])


class PerPoint:
    """Theorem 1 for every requested region (the default)."""

    name = "per-point"

    @classmethod
    def from_options(cls, **options) -> "PerPoint":
        return cls()

    def rows(self, problem: PointProblem, units: list[int]) -> PatchRows:
        return region_rows(problem, units)


@dataclass
class Cluster:
    """The paper's Algorithm 1 (see the module docstring): rounds of K-means representatives until ``delta``."""

    delta: float = 1.0
    n_clusters: int | None = None
    max_rounds: int = 10
    name = "cluster"

    @classmethod
    def from_options(cls, *, delta: float = 1.0, n_clusters: int | None = None, max_rounds: int = 10,
                     **_) -> "Cluster":
        return cls(delta=delta, n_clusters=n_clusters, max_rounds=max_rounds)

    def rows(self, problem: PointProblem, units: list[int]) -> PatchRows:
        pending = list(units)
        n_fresh = sum(len(problem.units.members[u]) for u in units)
        parts: list[PatchRows] = []
        log = [self._log(problem, 0, pending, n_fresh, 0, 0, 0, 0.0)]
        k_default = self.n_clusters or max(1, math.ceil(n_fresh / 10))
        for rnd in range(1, self.max_rounds + 1):
            forgotten = n_fresh - sum(len(problem.units.members[u]) for u in pending)
            if not pending or (n_fresh and forgotten / n_fresh >= self.delta):
                break
            t_round = time.perf_counter()
            k = min(k_default, len(pending))
            new_rows, flipped = self._round(problem, pending, k, rnd)
            parts += new_rows
            pending = [u for u in pending if u not in flipped]
            log.append(self._log(problem, rnd, pending, n_fresh, k, len(new_rows[0]), sum(len(r) for r in new_rows),
                                 time.perf_counter() - t_round))
        if pending and self.delta >= 1.0:
            t_round = time.perf_counter()
            parts.append(region_rows(problem, list(pending)))  # stragglers: Theorem 1 for each
            entry = self._log(problem, len(log), [], n_fresh, 0, 0, len(pending), 0.0)
            entry.update(seconds=time.perf_counter() - t_round, fallback="per-point")
            log.append(entry)
        rows = PatchRows.concat(parts) if parts else PatchRows.empty(problem.head.num_hidden,
                                                                     problem.units.excluded.shape[1])
        rows.rounds = log
        return rows

    def _round(self, problem: PointProblem, pending: list[int], k: int, rnd: int) -> tuple[list[PatchRows], set]:
        """One round: the representatives' region rows (first), then point rows for the members their patches
        flip; returns the rows and the units now forgotten."""
        from sklearn.cluster import KMeans

        units, pr, y = problem.units, problem.regions, problem.labels
        rep_feats = torch.stack([problem.features[units.members[u][0]] for u in pending]).to(torch.float64).numpy()
        km = KMeans(n_clusters=k, n_init=1, random_state=problem.seed + rnd).fit(rep_feats)
        assign = km.labels_
        dist = np.linalg.norm(rep_feats - km.cluster_centers_[assign], axis=1)
        reps = []
        for c in range(k):
            idx = np.nonzero(assign == c)[0]
            if len(idx):
                reps.append(pending[int(idx[np.argmin(dist[idx])])])
        rep_rows = region_rows(problem, reps)
        rows, flipped = [rep_rows], set(reps)
        rep_of_cluster = {int(assign[pending.index(r)]): k_rep for k_rep, r in enumerate(reps)}
        for pos, u in enumerate(pending):
            rep = rep_of_cluster.get(int(assign[pos]))
            if u in flipped or rep is None:
                continue
            value = rep_rows.values[rep]
            m = units.members[u]
            margin, pred = point_margin(pr.logits[m], y[m], value.unsqueeze(0).expand(len(m), -1))
            if bool((margin >= problem.epsilon).all()):
                rows.append(point_row(problem, u, value, int(pred[0]), float(margin.min())))
                flipped.add(u)
                problem.progress.update(1)
        return rows, flipped

    @staticmethod
    def _log(problem: PointProblem, rnd: int, pending: list[int], n_fresh: int, clusters: int, representatives: int,
             new_regions: int, seconds: float) -> dict:
        """One round's entry; ``A_u`` counts pending points, which keep the base model's prediction."""
        members = problem.units.members
        still = sum(len(members[u]) for u in pending)
        base_correct = problem.regions.logits.argmax(1) == problem.labels
        correct = sum(int(base_correct[members[u]].sum()) for u in pending)
        return {"round": rnd, "clusters": clusters, "representatives": representatives, "new_regions": new_regions,
                "forgotten_share": (n_fresh - still) / n_fresh if n_fresh else (0.0 if rnd == 0 else 1.0),
                "pending_points": still, "A_u": correct / problem.n_points if problem.n_points else 0.0,
                "seconds": seconds}


POINT_STRATEGIES = {PerPoint.name: PerPoint, Cluster.name: Cluster}
