"""K-fold reference models for ``target="unseen"``, trained once, before any request.

The training set is split into K disjoint folds; reference ``k`` is trained on every row outside fold ``k``.
Every training point then has exactly one reference that never saw it (its own fold's), and
``forget(..., target="unseen", reference=refs)`` answers each forgotten point with that one
(:func:`~prune_unlearn.unlearn.reference.reference_logits` takes the first reference that never saw a point).
The cost is K trainings on (K−1)/K of the data, paid once like SISA's shards; a larger K gives references
closer to "the whole training set minus the point" (K = n would be leave-one-out).

Identical inputs are kept in one fold: a duplicate of ``x`` in another fold would let ``x``'s own
reference train on ``x``. Explicit folds that overlap, miss rows or split identical inputs are refused.
Every check runs before the first training.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from .._hashing import points_sha256
from .._validation import param_error
from ..errors import InputValidationError
from .reference import Reference

__all__ = ["assign_folds", "check_folds", "fold_references"]


def _check_k(folds, n_distinct: int, caller: str) -> int:
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise param_error("folds", caller, "an integer ≥ 2 (reference k trains on every row outside fold k)", folds,
                          hint="K = 5 is a good start; each reference then sees 80% of the data.")
    if folds > n_distinct:
        raise param_error("folds", caller, f"at most the {n_distinct} distinct training inputs (every fold needs a "
                          "point)", folds, hint="use fewer folds.")
    return folds


def _groups(X: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Group id of every row (rows with identical float32 inputs share one), and the number of groups."""
    ids: dict[str, int] = {}
    group = torch.tensor([ids.setdefault(h, len(ids)) for h in points_sha256(X)], dtype=torch.int64)
    return group, len(ids)


def assign_folds(X: torch.Tensor, folds: int, seed: int = 0) -> torch.Tensor:
    """The fold (0 … K−1) of every row of ``X``: distinct inputs dealt at random (``seed``) into K folds whose
    sizes differ by at most one input; identical inputs share a fold."""
    group, n_groups = _groups(torch.as_tensor(X))
    k = _check_k(folds, n_groups, "assign_folds")
    gen = torch.Generator().manual_seed(int(seed))
    return (torch.randperm(n_groups, generator=gen) % k)[group]


def check_folds(X: torch.Tensor, folds: Sequence, caller: str = "fold_references") -> torch.Tensor:
    """Explicit folds (K sequences of row indices) as a fold-of-row tensor; refuses overlapping folds, rows in no
    fold, indices out of range, empty folds and identical inputs in different folds."""
    n = len(X)
    if isinstance(folds, (str, bytes)) or not isinstance(folds, Sequence):
        raise param_error("folds", caller, "an integer K or a sequence of K index sequences", type(folds).__name__)
    _check_k(len(folds), n, caller)
    fold_of = torch.full((n,), -1, dtype=torch.int64)
    for k, rows in enumerate(folds):
        rows = torch.as_tensor(rows, dtype=torch.int64).flatten()
        if len(rows) == 0:
            raise param_error("folds", caller, "K non-empty index sequences", f"fold {k} is empty")
        if rows.min() < 0 or rows.max() >= n:
            raise param_error("folds", caller, f"row indices in [0, {n - 1}]", f"fold {k} holds {rows.tolist()[:5]}…")
        taken = fold_of[rows] >= 0
        if taken.any() or len(torch.unique(rows)) < len(rows):
            row = int(rows[taken][0]) if taken.any() else int(rows[0])
            raise InputValidationError(
                f"The folds of {caller} overlap: row {row} is in fold {k} and in an earlier fold (or twice in fold "
                f"{k}). A reference trained outside fold k must not see a row of fold k through another fold. "
                "HINT: pass disjoint folds, or an integer K for a random split; nothing was trained.")
        fold_of[rows] = k
    missing = (fold_of < 0).nonzero().flatten()
    if len(missing):
        raise InputValidationError(
            f"The folds of {caller} leave {len(missing)} row(s) out (first: {missing[:5].tolist()}): every reference "
            "would see them, so none could answer for them. HINT: put every row in exactly one fold; nothing was "
            "trained.")
    group, n_groups = _groups(torch.as_tensor(X))
    lo = torch.full((n_groups,), len(folds), dtype=torch.int64).scatter_reduce(0, group, fold_of, "amin")
    hi = torch.full((n_groups,), -1, dtype=torch.int64).scatter_reduce(0, group, fold_of, "amax")
    split = (lo[group] != hi[group]).nonzero().flatten()
    if len(split):
        raise InputValidationError(
            f"The folds of {caller} put identical inputs in different folds (rows {split[:5].tolist()}): the "
            "reference of one copy's fold would train on the other copy. HINT: keep identical inputs in one fold "
            "(assign_folds does); nothing was trained.")
    return fold_of


def fold_references(X: torch.Tensor, y: torch.Tensor, train: Callable[[torch.Tensor, torch.Tensor], nn.Module],
                    folds: int | Sequence = 5, *, seed: int = 0) -> list[Reference]:
    """K references for ``target="unseen"``: reference ``k`` is ``train(X[rows outside fold k], y[…])`` in eval mode.

    ``folds``: K (a random split, :func:`assign_folds` with ``seed``) or K explicit, disjoint index sequences
    covering every row. Bad input is refused before any training. Pass the result as ``forget(...,
    target="unseen", reference=refs)``: each forgotten training point is answered by its own fold's reference.
    """
    X, y = torch.as_tensor(X), torch.as_tensor(y)
    if len(X) != len(y) or len(X) == 0:
        raise param_error("X/y", "fold_references", "non-empty and of equal length", f"{len(X)} and {len(y)} rows")
    if not callable(train):
        raise param_error("train", "fold_references", "a function (X, y) -> model", type(train).__name__)
    fold_of = assign_folds(X, folds, seed) if isinstance(folds, int) and not isinstance(folds, bool) \
        else check_folds(X, folds)
    k = int(fold_of.max()) + 1
    refs = []
    for f in range(k):
        seen = fold_of != f
        model = train(X[seen], y[seen])
        if not isinstance(model, nn.Module):
            raise InputValidationError(f"fold_references: train() returned {type(model).__name__}, not a module.")
        refs.append(Reference(model.eval(), X[seen], name=f"fold {f} of {k} left out"))
    return refs
