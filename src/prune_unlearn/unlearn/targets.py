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
    targets = []
    for k, u in enumerate(unit_ids):
        excluded = problem.units.excluded[u]
        if keep is not None and keep[k] >= 0 and not excluded[keep[k]]:
            targets.append(int(keep[k]))
        else:
            targets.append(rule(problem, u, (~excluded).nonzero().flatten()))
    return torch.tensor(targets, dtype=torch.int64)
