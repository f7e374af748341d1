"""Algorithm 2 (whole-class unlearning, Eq. 11) as a strategy: the class's members in, class rows out.

Round k: the pending member nearest to the pending members' centroid (in the head's input space) is
the representative; its linear region gets a confusion patch ``d_k`` (target: random other label,
seeded). Every pending member that ``d_k`` flips at the point is to be covered by a support of
group k. Supports are built greedily, in order of distance to the centroid: for a batch of still
uncovered members, CROWN finds (by bisection) the largest L∞ radius on which the base model still
provably predicts the class; the ball is widened by ``radius_scale``; neurons CROWN proves
sign-stable on it keep their constraint, the others are dropped. Members a relaxed support already
covers need no support of their own; ``max_relaxed`` caps them, and members left uncovered get the
exact support of their own linear region (a point row). Rounds repeat on the members still
predicted as the class, until ``delta``. See :mod:`~prune_unlearn.unlearn.whole_class` for the
decision gate and what is claimed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..core.bounds import certified_radius, stable_neurons
from ..core.patches import BOUND_CODES, ClassPatchSet, label_lead
from ..core.regions import HeadNetwork, PointRegions
from .problem import DomainBox
from .region_patches import GATE_HEADROOM, point_gate_lambda, region_patches
from .rows import ClassRows, PatchRows, class_patch_set

__all__ = ["ClassProblem", "WholeClass", "DECISION_MARGIN"]

# λ_d of the decision gate: the gate is fully open once the class leads by this much (float32, as evaluated).
DECISION_MARGIN = 1e-3


@dataclass
class ClassProblem:
    """What Algorithm 2 reads: the class's members (head inputs ``features`` in float64, their regions,
    hidden pre-activations ``z`` and ``base_logits`` as the float32 head computes them), the box, the run's
    random generator and a progress bar (``update(n)``)."""

    head: HeadNetwork
    label: int
    features: torch.Tensor
    regions: PointRegions
    z: torch.Tensor
    base_logits: torch.Tensor
    box: DomainBox
    rng: np.random.Generator
    progress: Any

    @property
    def n(self) -> int:
        return int(self.features.shape[0])

    @property
    def num_classes(self) -> int:
        return self.head.num_classes


@dataclass
class WholeClass:
    """Algorithm 2's options (see :func:`~prune_unlearn.forget_class` for each); :meth:`rows` runs it."""

    target: Any = "random"
    delta: float = 1.0
    epsilon: float = 0.05
    bound: str = "box"
    radius_scale: float = 1.0
    radius: str = "per-member"
    calibration_points: int = 32
    crown_iterations: int = 8
    radius_rtol: float = 0.06
    intermediate: str = "crown"
    decision_gate: bool = True
    max_relaxed: int = 1024
    batch_size: int = 64
    max_rounds: int = 5
    name = "class"

    def rows(self, problem: ClassProblem) -> ClassRows:
        run = _ClassRun(self, problem)
        run.calibrate()
        for rnd in range(1, self.max_rounds + 1):
            if run.reached(self.delta):
                break
            run.round(rnd)
        return run.result()


class _ClassRun:
    """The state of one Algorithm 2 run: groups and supports so far, and what each member's logits are."""

    def __init__(self, options: WholeClass, problem: ClassProblem):
        self.o, self.p = options, problem
        p = problem
        n, c = p.n, p.num_classes
        self.y = torch.full((n,), p.label, dtype=torch.int64)
        self.others = [k for k in range(c) if k != p.label]
        self.already = label_lead(p.regions.logits, p.label) < 0  # mispredicted by the base model already
        self.pending = p.regions.consistent.clone() & ~self.already  # boundary members cannot get supports
        self.group_support = torch.zeros(n, 0)   # (n, G) largest relaxed support per group
        self.exact_extra = torch.zeros(n, c, dtype=torch.float64)
        self.group_values: list[torch.Tensor] = []
        self.group_targets: list[int] = []
        self.supports: dict[str, list] = {"patterns": [], "stable": [], "lambda": [], "group": []}
        self.exact_members: dict[bytes, dict] = {}
        self.rounds: list[dict] = []
        self.crown_points = 0
        self.common_radius: float | None = None
        self.proven_radii: list[torch.Tensor] = []  # positive radii so far: their median warm-starts the search
        self.decision_lambda = 1.0 / DECISION_MARGIN if options.decision_gate else 0.0

    # --- per-run --------------------------------------------------------------------------------------
    def reached(self, delta: float) -> bool:
        return self.p.n == 0 or not self.pending.any() or 1 - self.pending.float().mean().item() >= delta

    def calibrate(self) -> None:
        """``radius="calibrated"``: one radius for every member, the median over the members nearest the centroid."""
        p = self.p
        if self.o.radius != "calibrated" or not p.n:
            return
        ok = p.regions.consistent.nonzero().flatten()
        centre = p.features[ok].mean(dim=0)
        sample = ok[torch.argsort((p.features[ok] - centre).norm(dim=1))[:self.o.calibration_points]]
        radii = certified_radius(p.head, p.features[sample], self.y[sample], p.box.lower, p.box.upper,
                                 iterations=self.o.crown_iterations)
        self.crown_points += len(sample)
        self.common_radius = float(radii.median())

    def current(self) -> torch.Tensor:
        """float64 logits of the model built so far, at every member."""
        vals = torch.stack(self.group_values).double() if self.group_values else \
            torch.zeros(0, self.p.num_classes, dtype=torch.float64)
        return self.p.regions.logits + self.group_support.double() @ vals + self.exact_extra

    def lead_over_label(self, logits: torch.Tensor) -> torch.Tensor:
        return -label_lead(logits, self.p.label)

    # --- one round ------------------------------------------------------------------------------------
    def round(self, rnd: int) -> None:
        p, o = self.p, self.o
        t0 = time.perf_counter()
        idx = self.pending.nonzero().flatten()
        centre = p.features[idx].mean(dim=0)
        order = idx[torch.argsort((p.features[idx] - centre).norm(dim=1))]
        rep = int(order[0])
        tgt = int(p.rng.choice(self.others)) if o.target == "random" else int(o.target)
        # the representative's region patch, certified on its (tightened) exact linear region
        pr = p.regions
        d_k = region_patches(p.head, pr.masks[rep: rep + 1], pr.min_slack[rep: rep + 1], pr.float32_error[rep: rep + 1],
                             torch.tensor([tgt]), p.box.lower, p.box.upper, o.bound, o.epsilon, 60).values[0]
        group = len(self.group_values)
        self.group_values.append(d_k)
        self.group_targets.append(tgt)
        self.group_support = torch.cat([self.group_support, torch.zeros(p.n, 1)], dim=1)
        # members the patch flips at the point, on top of what earlier rounds added
        flipped = self.pending & (self.lead_over_label(self.current() + d_k.double()) >= o.epsilon)
        flipped[rep] = True
        to_cover = order[flipped[order]]  # nearest to the centroid first
        relaxed, uncovered, left = self.cover(group, tgt, to_cover)
        for i in uncovered + left:  # budget spent: the member's own exact region, a point row
            row = self.exact_members.setdefault(pr.masks[i].numpy().tobytes(), {"members": [], "group": group})
            row["members"].append(i)
            self.exact_extra[i] += d_k.double()
        lead = self.lead_over_label(self.current())
        newly = self.pending & (lead > 0)
        self.pending &= lead <= 0
        p.progress.update(int(newly.sum()))
        self.rounds.append({"round": rnd, "representative": rep, "target": tgt, "flipped_by_patch": int(flipped.sum()),
                            "relaxed_supports": relaxed, "exact_supports": len(uncovered) + len(left),
                            "pending_points": int(self.pending.sum()), "A_u": float((lead <= 0).float().mean()),
                            "seconds": time.perf_counter() - t0})

    def cover(self, group: int, tgt: int, to_cover: torch.Tensor) -> tuple[int, list[int], list[int]]:
        """Relaxed supports for ``to_cover``, batch by batch, until every member is covered or the budget is
        spent. Returns the supports built, members whose own support does not reach 1 at them (e.g. a
        half-open gate), and members never reached."""
        p, o = self.p, self.o
        relaxed, first, uncovered = 0, len(self.supports["patterns"]), []
        while len(to_cover) and relaxed < o.max_relaxed:
            b = to_cover[: min(o.batch_size, o.max_relaxed - relaxed)]
            stable = self.stable_sets(b)
            relaxed += len(b)
            new = self.relaxed_set(list(p.regions.masks[b]), list(stable), self.gate_lambdas(b, stable),
                                   [0] * len(b), tgt)
            with torch.no_grad():  # coverage is only needed where a support is still wanted
                got = new.group_support(p.z[to_cover], p.base_logits[to_cover])[:, 0].cpu()
            gs = self.group_support
            gs[to_cover, group] = torch.maximum(gs[to_cover, group], got)
            self.supports["patterns"] += list(p.regions.masks[b])
            self.supports["stable"] += list(stable)
            self.supports["lambda"] += new.gate_lambda.tolist()
            self.supports["group"] += [group] * len(b)
            uncovered += b[gs[b, group] != 1].tolist()
            to_cover = to_cover[len(b):]
            to_cover = to_cover[gs[to_cover, group] != 1]
        rest = (self.group_support[:, group] < 1).nonzero().flatten()
        count = len(self.supports["patterns"]) - first
        if count and len(rest):
            # the group's support at every member, for the bookkeeping; where a batch's supports already
            # reached 1 (the most a support can be) the group's support is 1, nothing to recompute
            s = {k: v[first:] for k, v in self.supports.items()}
            whole = self.relaxed_set(s["patterns"], s["stable"], s["lambda"], [0] * count, tgt)
            with torch.no_grad():
                self.group_support[rest, group] = whole.group_support(p.z[rest], p.base_logits[rest])[:, 0].cpu()
        return relaxed, uncovered, to_cover.tolist()

    def stable_sets(self, b: torch.Tensor) -> torch.Tensor:
        """(len(b), N) neurons CROWN proves sign-stable on each member's widened certified ball."""
        p, o = self.p, self.o
        lower, upper, x = p.box.lower, p.box.upper, p.features[b]
        if self.common_radius is None:
            found = torch.cat(self.proven_radii) if self.proven_radii else torch.zeros(0)
            rad = certified_radius(p.head, x, self.y[b], lower, upper, iterations=o.crown_iterations,
                                   rtol=o.radius_rtol, intermediate=o.intermediate, search_dtype=torch.float32,
                                   start=float(found.median()) if len(found) else None)
            self.proven_radii.append(rad[rad > 0])
            sa, si = stable_neurons(p.head, x, rad * o.radius_scale, lower, upper, intermediate=o.intermediate)
            self.crown_points += len(b)
        else:
            sa, si = stable_neurons(p.head, x, self.common_radius * o.radius_scale, lower, upper, intermediate="ibp")
        return sa | si

    def gate_lambdas(self, members: torch.Tensor, stable: torch.Tensor) -> torch.Tensor:
        """λ per support: GATE_HEADROOM over the member's smallest slack on the stable neurons."""
        slack = self.p.regions.slack[members]
        m = torch.where(stable, slack, torch.full_like(slack, float("inf"))).amin(dim=1) if stable.shape[1] \
            else torch.full((len(members),), float("inf"), dtype=torch.float64)
        lam = (GATE_HEADROOM / m).to(torch.float32)
        return torch.where(torch.isfinite(m), lam, torch.ones_like(lam))

    def relaxed_set(self, masks, stable, lambdas, groups, tgt: int) -> ClassPatchSet:
        """A one-group class patch set of these supports (its value is not needed: support only)."""
        p = self.p
        return class_patch_set(p.head.num_hidden, p.num_classes, masks, stable, lambdas, groups,
                               torch.zeros(1, p.num_classes), [tgt], p.label, self.decision_lambda).to(p.z.device)

    # --- the rows -------------------------------------------------------------------------------------
    def result(self) -> ClassRows:
        p, s = self.p, self.supports
        n_hidden, c = p.head.num_hidden, p.num_classes
        return ClassRows(
            n_hidden, c,
            patterns=torch.stack(s["patterns"]) if s["patterns"] else torch.zeros(0, n_hidden, dtype=torch.bool),
            stable=torch.stack(s["stable"]) if s["stable"] else torch.zeros(0, n_hidden, dtype=torch.bool),
            gate_lambda=torch.tensor(s["lambda"], dtype=torch.float32),
            group=torch.tensor(s["group"], dtype=torch.int64),
            values=torch.stack(self.group_values) if self.group_values else torch.zeros(0, c),
            targets=torch.tensor(self.group_targets, dtype=torch.int64), label=p.label,
            decision_lambda=self.decision_lambda, exact=self.exact_rows(), pending=self.pending,
            degenerate=~p.regions.consistent, already=self.already, rounds=self.rounds,
            crown_points=self.crown_points, common_radius=self.common_radius)

    def exact_rows(self) -> PatchRows:
        """Point rows for members left without a relaxed support: their exact region, their group's value."""
        p = self.p
        n_hidden, c = p.head.num_hidden, p.num_classes
        if not self.exact_members:
            return PatchRows.empty(n_hidden, c)
        entries = list(self.exact_members.values())
        slack = [float(p.regions.min_slack[e["members"]].min()) for e in entries]
        excluded = torch.zeros(len(entries), c, dtype=torch.bool)
        excluded[:, p.label] = True
        r = len(entries)
        return PatchRows(
            n_hidden, c, masks=torch.stack([p.regions.masks[e["members"][0]] for e in entries]),
            gate_lambda=torch.tensor([point_gate_lambda(m) for m in slack], dtype=torch.float32),
            values=torch.stack([self.group_values[e["group"]] for e in entries]).to(torch.float32),
            targets=torch.tensor([self.group_targets[e["group"]] for e in entries], dtype=torch.int64),
            excluded=excluded, point_min_slack=torch.tensor(slack, dtype=torch.float64),
            region_threshold=torch.full((r,), float("nan"), dtype=torch.float64),
            certified_margin=torch.zeros(r, dtype=torch.float64),
            bound_code=torch.full((r,), BOUND_CODES["point"], dtype=torch.uint8),
            float32_robust=torch.zeros(r, dtype=torch.bool),
            covers=[torch.tensor(e["members"], dtype=torch.int64) for e in entries])
