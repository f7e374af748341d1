"""Target rules: which wrong label a patch makes win on a region.

A rule is a function ``rule(problem, unit, allowed) -> label`` that picks one of the ``allowed`` labels
(never a label of the region's forgotten points) for one unit (linear region) of a
:class:`~prune_unlearn.unlearn.problem.PointProblem`; it may read anything the problem holds (its
random generator, the base model's logits, the points' features). A new forgetting target is one
more function in ``TARGET_RULE_FUNCTIONS``.
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["TARGET_RULES", "TARGET_RULE_FUNCTIONS", "FORGET_TARGETS", "choose_targets"]


def random_target(problem, unit: int, allowed: torch.Tensor) -> int:
    """A uniformly random allowed label (the run's seeded generator)."""
    return int(allowed[problem.rng.integers(len(allowed))])


def runner_up_target(problem, unit: int, allowed: torch.Tensor) -> int:
    """The allowed label the base model already ranks highest at the region's first point."""
    logits = problem.regions.logits[problem.units.members[unit][0]]
    return int(allowed[logits[allowed].argmax()])


TARGET_RULE_FUNCTIONS: dict[str, Callable] = {"random": random_target, "runner-up": runner_up_target}
TARGET_RULES = tuple(TARGET_RULE_FUNCTIONS)
# Every forgetting target: the misprediction rules above, and "unseen" (answer as a model that never saw the
# point: :mod:`~prune_unlearn.unlearn.unseen`, which needs reference models instead of a label rule).
FORGET_TARGETS = TARGET_RULES + ("unseen",)


def choose_targets(problem, unit_ids: list[int], keep: torch.Tensor | None = None) -> torch.Tensor:
    """One target label per unit, never an excluded label. ``keep[k]`` (-1 = none) is kept when allowed
    (a re-solved region keeps its earlier target); otherwise the problem's rule chooses."""
    rule = TARGET_RULE_FUNCTIONS[problem.target]
    if not unit_ids:
        return torch.zeros(0, dtype=torch.int64)
    ids = torch.as_tensor(unit_ids, dtype=torch.int64)
    excluded = problem.units.excluded[ids]
    targets = torch.full((len(unit_ids),), -1, dtype=torch.int64)
    if keep is not None:
        keep = torch.as_tensor(keep, dtype=torch.int64)
        kept = (keep >= 0) & ~excluded.gather(1, keep.clamp(min=0).unsqueeze(1)).squeeze(1)
        targets[kept] = keep[kept]
    todo = (targets < 0).nonzero().flatten().tolist()
    if rule is random_target and todo:
        # one draw per unit, in unit order, from the run's generator: the same draws as the loop below would make
        allowed = ~excluded[todo]
        pick = problem.rng.integers(0, allowed.sum(dim=1).numpy())
        # the pick-th allowed label: the first label whose running count of allowed labels exceeds pick
        running = allowed.cumsum(dim=1)
        targets[todo] = (running <= torch.as_tensor(pick).unsqueeze(1)).sum(dim=1)
        return targets
    for k in todo:
        targets[k] = rule(problem, unit_ids[k], (~excluded[k]).nonzero().flatten())
    return targets
