"""Amnesiac Machine Learning (Graves, Nagisetty and Ganesh, AAAI 2021): undo the batches that saw the data.

Training records, for every SGD step ``b``, the parameter update ``Δθ_b = θ_after − θ_before``
(float32, flattened with ``parameters_to_vector``; with momentum it is the whole step actually
taken, not the raw gradient) and the training-set ids of the batch. Unlearning ``D_U`` then is

    θ ← θ_final − Σ_{b : batch b contains a point of D_U} Δθ_b

followed by ``recovery_epochs`` epochs of ordinary training on ``D \\ D_U`` (fresh SGD with the
recipe's lr, momentum, weight decay and batch size; seed ``derive_seed(recipe.seed, 2, call)``).
This is not gradient ascent: it removes the recorded steps exactly and lets a short retraining
repair the damage. Since ``Σ_b Δθ_b = θ_final − θ_init`` (the updates telescope), subtracting every
batch would give back the initial weights.

Memory: one float32 vector per recorded step, i.e. ``4 · n_params · epochs · ⌈n / batch_size⌉``
bytes when everything is recorded (FC(256×256) on MNIST for 20 epochs: ≈ 20 GB), plus 8 bytes per
sample id. ``record_candidates`` limits recording to the steps whose batch holds at least one
candidate point (the paper's "batches that include the unlearning data"); only candidates can
then be forgotten. Recovery steps are recorded under the same rule, so later requests also undo
them. Only parameters are recorded (no buffers such as BatchNorm statistics).

``request_sets`` is the memory-light mode for experiments whose requests are known at training time
(the paper's setup: "the parameter updates for each batch that includes the unlearning data"):
instead of one vector per step it keeps, per request set, the running sum of the updates of the
steps whose batch holds a point of that set (one float64 vector per set). ``forget`` must then be
called with exactly one of those sets, once.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from ..._validation import param_error
from ...errors import InputValidationError
from ...core.models import build_model
from ..training import train_model
from .base import UnlearningMethod, derive_seed, non_negative_int

__all__ = ["Amnesiac"]


def _candidates_or_none(name: str, caller: str, value) -> None:
    if value is None:
        return
    arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer) or arr.ndim != 1 or arr.size == 0:
        raise param_error(name, caller, "None or a non-empty 1-D array of training-set indices",
                          value if arr.size < 6 else f"array of shape {arr.shape}, dtype {arr.dtype}")


def _flat(params: list) -> torch.Tensor:
    """``parameters_to_vector`` that also reads channels-last weights (in the same, logical element order)."""
    with torch.no_grad():
        return torch.cat([p.detach().reshape(-1) for p in params])


class Amnesiac(UnlearningMethod):
    """Amnesiac ML: subtract the recorded updates of every batch that contained forgotten data.

    Parameters
    ----------
    recovery_epochs : int, default=1
        Epochs of training on the remaining data after the subtraction (0: none).
    record_candidates : array-like of int or None, default=None
        Record only steps whose batch contains one of these training-set indices; ``None`` records
        every step (needed when any point may be forgotten, which is the memory-heavy case).
    recovery_steps : int or None, default=None
        If set, the recovery training is this many SGD steps (batches) instead of ``recovery_epochs``
        epochs: the "short" recovery of the original paper.
    request_sets : list of array-like of int, or None, default=None
        Known future requests: keep one summed update per set instead of per-step records.

    Attributes
    ----------
    initial_parameters_ : torch.Tensor
        Flat float32 parameters before training.
    batch_ids_ : list of LongTensor
        Training-set ids of each recorded step's batch, in training order.
    batch_updates_ : list of torch.Tensor
        Flat float32 update ``θ_after − θ_before`` of each recorded step.
    batch_phase_ : list of str
        ``"train"`` or ``"recovery-<call>"`` for each recorded step.
    batch_removed_ : torch.BoolTensor
        Steps already subtracted by earlier ``forget`` calls.
    recorded_bytes_ : int
        Memory held by the records.

    Notes
    -----
    With ``record_candidates=None`` the training trajectory is exactly ``train_model``'s (same
    shuffling, same steps); recording only reads the parameters.
    """

    _parameter_constraints: ClassVar[dict] = {
        "recovery_epochs": non_negative_int,
        "recovery_steps": lambda name, caller, v: None if v is None else non_negative_int(name, caller, v),
        "record_candidates": _candidates_or_none,
    }

    def __init__(self, *, recovery_epochs: int = 1, recovery_steps: int | None = None, record_candidates=None,
                 request_sets=None):
        self.recovery_epochs = recovery_epochs
        self.recovery_steps = recovery_steps
        self.record_candidates = record_candidates
        self.request_sets = request_sets

    def _train_recording(self, model: nn.Module, rows: torch.Tensor, recipe, phase: str,
                         max_steps: int | None = None) -> None:
        """``train_model`` on ``X_[rows]``, recording the steps selected by ``record_candidates``."""
        params = [p for p in model.parameters()]

        def hook(idx: torch.Tensor):
            ids = rows[idx]
            if self._set_masks is not None and phase == "train":
                hits = self._set_masks[:, ids].any(dim=1)
                if not bool(hits.any()):
                    return None
            elif self._set_masks is None and (self._candidate_mask is None or bool(self._candidate_mask[ids].any())):
                hits = None
            else:
                return None
            before = _flat(params)

            def record() -> None:
                if hits is not None:
                    self._set_sums[hits] += _flat(params).to(torch.float64) - before.to(torch.float64)
                    return
                self.batch_updates_.append((_flat(params) - before).to(torch.float32))
                self.batch_ids_.append(ids.clone())
                self.batch_phase_.append(phase)

            return record

        train_model(model, self.X_[rows], self.y_[rows], recipe, step_hook=hook, max_steps=max_steps)

    @property
    def recorded_bytes_(self) -> int:
        self._check_is_fitted()
        return sum(u.numel() * u.element_size() + i.numel() * i.element_size()
                   for u, i in zip(self.batch_updates_, self.batch_ids_))

    def _fit(self) -> None:
        if self.record_candidates is None:
            self._candidate_mask = None
        else:
            cand = torch.as_tensor(np.asarray(self.record_candidates), dtype=torch.int64)
            bad = cand[(cand < 0) | (cand >= self.n_train_)]
            if len(bad):
                raise param_error("record_candidates", "Amnesiac.fit", f"indices in [0, {self.n_train_ - 1}]",
                                  bad[:5].tolist())
            self._candidate_mask = torch.zeros(self.n_train_, dtype=torch.bool)
            self._candidate_mask[cand] = True
        self.batch_ids_, self.batch_updates_, self.batch_phase_ = [], [], []
        model = build_model(self.spec_, seed=self.recipe_.seed)
        self._set_masks = None
        if self.request_sets is not None:
            sets = [torch.as_tensor(np.asarray(s), dtype=torch.int64) for s in self.request_sets]
            if not sets or any(len(s) == 0 or int(s.min()) < 0 or int(s.max()) >= self.n_train_ for s in sets):
                raise param_error("request_sets", "Amnesiac.fit", f"a non-empty list of non-empty index arrays "
                                  f"in [0, {self.n_train_ - 1}]", "an invalid set")
            self._set_masks = torch.zeros(len(sets), self.n_train_, dtype=torch.bool)
            for j, st in enumerate(sets):
                self._set_masks[j, st] = True
            n_params = sum(p.numel() for p in model.parameters())
            self._set_sums = torch.zeros(len(sets), n_params, dtype=torch.float64)
            self._set_used = torch.zeros(len(sets), dtype=torch.bool)
        with torch.no_grad():
            self.initial_parameters_ = parameters_to_vector(model.parameters()).detach().clone().to(torch.float32)
        self._train_recording(model, torch.arange(self.n_train_), self.recipe_, "train")
        self.batch_removed_ = torch.zeros(len(self.batch_updates_), dtype=torch.bool)
        self._model = model

    def _affected_steps(self, idx: torch.Tensor) -> torch.Tensor:
        """Recorded, not yet subtracted steps whose batch holds any of ``idx``."""
        if not self.batch_ids_:
            return torch.zeros(0, dtype=torch.int64)
        hit = torch.zeros(self.n_train_, dtype=torch.bool)
        hit[idx] = True
        lengths = torch.tensor([len(b) for b in self.batch_ids_])
        step_of = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
        steps = torch.unique(step_of[hit[torch.cat(self.batch_ids_)]])
        return steps[~self.batch_removed_[steps]]

    def _forget(self, idx: torch.Tensor, keep: torch.Tensor) -> dict:
        if self._set_masks is not None:
            return self._forget_request_set(idx, keep)
        if self._candidate_mask is not None and not bool(self._candidate_mask[idx].all()):
            missing = idx[~self._candidate_mask[idx]]
            raise InputValidationError(
                f"Indices {missing[:5].tolist()}{' …' if len(missing) > 5 else ''} were not in 'record_candidates', "
                f"so the updates of their batches were not recorded and cannot be removed. HINT: fit with "
                f"record_candidates=None (records every step) or include every point that may be forgotten."
            )
        steps = self._affected_steps(idx)
        model = copy.deepcopy(self._model)
        params = list(model.parameters())
        with torch.no_grad():
            theta = parameters_to_vector(params).to(torch.float64)
            removed = torch.zeros_like(theta)
            for s in steps.tolist():
                removed += self.batch_updates_[s].to(torch.float64)
            vector_to_parameters((theta - removed).to(params[0].dtype), params)
        n_before = len(self.batch_updates_)
        self._recover(model, keep)
        self.batch_removed_ = torch.cat(
            [self.batch_removed_, torch.zeros(len(self.batch_updates_) - n_before, dtype=torch.bool)])
        self.batch_removed_[steps] = True
        model.eval()
        self._model = model
        return {
            "removed_steps": steps.tolist(),
            "n_removed_steps": len(steps),
            "removed_update_norm": float(removed.norm()),
            "recovery_epochs": int(self.recovery_epochs),
            "recorded_steps": len(self.batch_updates_),
        }

    def _recover(self, model: nn.Module, keep: torch.Tensor) -> None:
        """The short recovery training on the remaining data (epochs, or ``recovery_steps`` batches)."""
        if self.recovery_steps == 0 or (self.recovery_steps is None and self.recovery_epochs == 0):
            return
        # A short retraining at the recipe's base learning rate: a one-cycle schedule belongs to a full
        # training run, not to a few repair steps (the recovery of a constant-rate recipe is unchanged).
        epochs = max(self.recovery_epochs, 1) if self.recovery_steps is None else \
            max(1, -(-self.recovery_steps * self.recipe_.batch_size // int(keep.sum())))
        anneal = self.recipe_.anneal_epochs if self.recovery_steps is None else 0  # a few steps: no annealed tail
        recipe = dataclasses.replace(self.recipe_, epochs=epochs, schedule="constant", anneal_epochs=anneal,
                                     seed=derive_seed(self.recipe_.seed, 2, self._n_forget_calls))
        self._train_recording(model, keep.nonzero().flatten(), recipe, f"recovery-{self._n_forget_calls}",
                              max_steps=self.recovery_steps)

    def _forget_request_set(self, idx: torch.Tensor, keep: torch.Tensor) -> dict:
        want = torch.zeros(self.n_train_, dtype=torch.bool)
        want[idx] = True
        match = (self._set_masks == want).all(dim=1).nonzero().flatten()
        if len(match) == 0 or bool(self._set_used[match[0]]):
            raise InputValidationError(
                "With request_sets, forget must be called once with exactly one of the declared sets. HINT: fit "
                "with record_candidates=None (records every step) to forget arbitrary points.")
        j = int(match[0])
        model = copy.deepcopy(self._model)
        params = list(model.parameters())
        with torch.no_grad():
            theta = parameters_to_vector(params).to(torch.float64)
            vector_to_parameters((theta - self._set_sums[j]).to(params[0].dtype), params)
        self._recover(model, keep)
        self._set_used[j] = True
        model.eval()
        self._model = model
        return {"request_set": j, "removed_update_norm": float(self._set_sums[j].norm()),
                "recovery_epochs": int(self.recovery_epochs)}
