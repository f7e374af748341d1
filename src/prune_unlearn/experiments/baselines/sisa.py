"""SISA: Sharded, Isolated, Sliced, Aggregated training (Bourtoule et al., IEEE S&P 2021).

Training schedule (what ``fit`` does, and what ``forget`` replays):

* The training set is randomly permuted (``torch.randperm`` seeded by ``recipe.seed``) and cut into
  ``shards`` near-equal shards; each shard, in that order, into ``slices`` near-equal slices.
* Shard ``k`` starts from ``build_model(spec, seed=derive_seed(recipe.seed, 0, k))`` (every shard
  has its own initialisation). For slice ``r = 0 … R-1`` (0-based) it trains ``epochs_per_slice``
  epochs with ``train_model`` on the union of slices ``0 … r`` of its *current* data, with
  ``recipe`` except ``epochs = epochs_per_slice`` and ``seed = derive_seed(recipe.seed, 1, k, r)``.
* Checkpoint ``j`` of shard ``k`` is its state dict after slices ``0 … j-1`` (checkpoint 0 = the
  initial weights), so each shard keeps ``R + 1`` state dicts in memory: ``S·(R+1)`` copies of the
  model in all.
* ``epochs_per_slice=None`` uses SISA's rule ``round(2·E / (R+1))`` (at least 1), which makes the
  number of sample passes per shard about ``E`` epochs over the shard.

Each slice stage starts a fresh SGD optimiser (its momentum buffer is not carried over), so a
weights-only checkpoint determines everything that follows: retraining from checkpoint ``j`` is
exactly what ``fit`` would have done on the reduced data from that point on.

Unlearning: a shard whose first affected slice is ``j`` (0-based) drops the forgotten points, loads
checkpoint ``j`` (saved before slice ``j``) and replays slices ``j … R-1``; unaffected shards are
not touched at all. Prediction is a hard majority vote of the shard models (ties go to the smallest
label); a shard left without any data does not vote.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from torch import nn

from ..._validation import param_error
from ...core.models import build_model
from ..training import train_model
from .base import UnlearningMethod, derive_seed, positive_int, positive_int_or_none

__all__ = ["SISA", "MajorityVote"]


class MajorityVote(nn.Module):
    """Hard-vote ensemble of classifiers.

    ``forward`` returns vote shares of shape (n, C) (rows sum to 1), not logits: ``argmax`` is the
    majority label, and ``torch.argmax`` returns the first maximum, so ties go to the smallest
    label. :meth:`log_probabilities` gives the mean softmax of the members, which is what a loss
    (e.g. a membership-inference attack) should use.
    """

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("MajorityVote needs at least one member.")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [m(x) for m in self.members]
        num_classes = outs[0].shape[1]
        votes = torch.stack([o.argmax(1) for o in outs])            # (S, n)
        counts = nn.functional.one_hot(votes, num_classes).sum(0)   # (n, C)
        return counts.to(outs[0].dtype) / len(outs)

    def log_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([torch.softmax(m(x), dim=1) for m in self.members]).mean(0)
        return torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))


def _state(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class SISA(UnlearningMethod):
    """SISA training: shard models trained slice by slice, with a checkpoint after every slice.

    Parameters
    ----------
    shards : int, default=5
        Number of disjoint shards ``S`` (one model each).
    slices : int, default=5
        Number of slices ``R`` per shard (one checkpoint each).
    epochs_per_slice : int or None, default=None
        Epochs trained after adding each slice; ``None`` means ``max(1, round(2·E/(R+1)))`` with
        ``E = recipe.epochs``, SISA's rule for the same number of sample passes as ``E`` epochs.

    Attributes
    ----------
    shards_ : list of list of LongTensor
        ``shards_[k][r]``: training-set indices currently in slice ``r`` of shard ``k``.
    shard_models_ : list of nn.Module
    checkpoints_ : list of list of dict
        ``checkpoints_[k][j]``: state dict of shard ``k`` after slices ``0 … j-1``.
    epochs_per_slice_ : int

    Notes
    -----
    See the module docstring for the exact schedule. Memory: ``S·(R+1)`` state dicts.
    """

    _parameter_constraints: ClassVar[dict] = {
        "shards": positive_int,
        "slices": positive_int,
        "epochs_per_slice": positive_int_or_none,
    }

    def __init__(self, *, shards: int = 5, slices: int = 5, epochs_per_slice: int | None = None):
        self.shards = shards
        self.slices = slices
        self.epochs_per_slice = epochs_per_slice

    # --- training schedule ----------------------------------------------------------------------

    def _init_seed(self, k: int) -> int:
        return derive_seed(self.recipe_.seed, 0, k)

    def _slice_recipe(self, k: int, r: int):
        return dataclasses.replace(self.recipe_, epochs=self.epochs_per_slice_,
                                   seed=derive_seed(self.recipe_.seed, 1, k, r))

    def _train_shard(self, k: int, start: int) -> None:
        """Replay slices ``start … R-1`` of shard ``k`` from checkpoint ``start``."""
        model = build_model(self.spec_, seed=self._init_seed(k))
        model.load_state_dict(self.checkpoints_[k][start])
        checkpoints = self.checkpoints_[k][: start + 1]
        for r in range(start, self.slices):
            rows = torch.cat(self.shards_[k][: r + 1])
            train_model(model, self.X_[rows], self.y_[rows], self._slice_recipe(k, r))
            checkpoints.append(_state(model))
        self.checkpoints_[k] = checkpoints
        self.shard_models_[k] = model.eval()

    def _rebuild_vote(self) -> None:
        members = [m for m, slices in zip(self.shard_models_, self.shards_) if sum(len(s) for s in slices)]
        self._model = MajorityVote(members).eval()

    def _fit(self) -> None:
        n = self.n_train_
        if n < self.shards * self.slices:
            raise param_error("shards", "SISA.fit", f"at most n / slices = {n // self.slices} for {n} training "
                              f"points and {self.slices} slices", self.shards,
                              hint="every slice needs at least one point; use fewer shards or slices.")
        self.epochs_per_slice_ = (self.epochs_per_slice if self.epochs_per_slice is not None
                                  else max(1, round(2 * self.recipe_.epochs / (self.slices + 1))))
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.recipe_.seed))
        self.shards_ = [list(shard.tensor_split(self.slices)) for shard in perm.tensor_split(self.shards)]
        self.shard_models_ = [None] * self.shards
        self.checkpoints_ = []
        for k in range(self.shards):
            self.checkpoints_.append([_state(build_model(self.spec_, seed=self._init_seed(k)))])
            self._train_shard(k, 0)
        self._rebuild_vote()

    def _forget(self, idx: torch.Tensor, keep: torch.Tensor) -> dict:
        drop = torch.zeros(self.n_train_, dtype=torch.bool)
        drop[idx] = True
        restarts = {}
        for k, slices in enumerate(self.shards_):
            hit = [bool(drop[s].any()) for s in slices]
            if not any(hit):
                continue
            first = hit.index(True)
            self.shards_[k] = [s[~drop[s]] for s in slices]
            self._train_shard(k, first)
            restarts[k] = first
        self._rebuild_vote()
        return {
            "retrained_shards": sorted(restarts),
            "restart_slice": restarts,          # shard -> first affected slice = checkpoint restored
            "slices_retrained": sum(self.slices - j for j in restarts.values()),
            "voting_shards": len(self._model.members),
        }
