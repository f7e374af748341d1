"""The estimator shape every baseline shares: store params, ``fit`` from a spec, ``forget`` indices.

Baselines are what PRUNE is compared against (paper §V, "Baselines"), so they must be timed the same
way: ``fit`` times the training phase (including any bookkeeping a method needs for later
unlearning), ``forget`` times the unlearning phase. Both phases together are what the paper's
efficiency figure normalises by plain retraining.
"""

from __future__ import annotations

import abc
import copy
import inspect
import time
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
from torch import nn

from ..._validation import (
    as_float_tensor,
    as_label_tensor,
    check_positive_float,
    check_positive_int,
    param_error,
)
from ...errors import InputValidationError, NotFittedError
from ...core.models import architecture_of, build_model
from ..training import Recipe

__all__ = ["UnlearningMethod", "BaselineResult", "derive_seed"]


class BaselineResult(NamedTuple):
    """``(model, train_seconds, unlearn_seconds, info)`` of one ``forget`` call.

    ``model`` is a snapshot: later ``forget`` calls build new modules instead of mutating it.
    ``train_seconds`` is the method's training phase (from ``fit``), repeated here so one result is
    enough to report both phases. ``info`` holds method-specific bookkeeping (plain Python values).
    """

    model: nn.Module
    train_seconds: float
    unlearn_seconds: float
    info: dict


def derive_seed(*keys: int) -> int:
    """A 32-bit seed from a tuple of integers (independent streams per shard, slice, call…)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


# --- parameter constraints, declared as data (scikit-learn's `_parameter_constraints` idea) -----

def positive_int(name: str, caller: str, value: Any) -> None:
    check_positive_int(name, caller, value)


def positive_int_or_none(name: str, caller: str, value: Any) -> None:
    check_positive_int(name, caller, value, allow_none=True)


def non_negative_int(name: str, caller: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise param_error(name, caller, "a non-negative integer", value)


def non_negative_float(name: str, caller: str, value: Any) -> None:
    check_positive_float(name, caller, value, allow_zero=True)


def positive_float(name: str, caller: str, value: Any) -> None:
    check_positive_float(name, caller, value)


class UnlearningMethod(abc.ABC):
    """Base class of the baselines: scikit-learn's estimator conventions, for unlearning.

    The constructor only stores keyword parameters; they are validated in :meth:`fit`, so
    :meth:`set_params` and ``type(m)(**m.get_params())`` behave the same way. Attributes ending in
    ``_`` exist only after ``fit``.

    Indices given to :meth:`forget` always refer to rows of the ``X`` passed to ``fit``, also
    after earlier ``forget`` calls (requests accumulate).

    Attributes
    ----------
    model_ : nn.Module
        The current model (after the latest ``forget``).
    train_seconds_ : float
        Wall time of the training phase.
    forgotten_ : torch.LongTensor
        Every index forgotten so far, sorted.
    n_train_ : int
        Number of training points given to ``fit``.
    """

    #: parameter name -> checker(name, caller, value); subclasses extend it.
    _parameter_constraints: ClassVar[dict[str, Callable[[str, str, Any], None]]] = {}

    # --- scikit-learn plumbing ------------------------------------------------------------------

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values()
                if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

    def get_params(self, deep: bool = True) -> dict:
        """Constructor parameters by name (``deep`` is accepted for scikit-learn compatibility)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params) -> UnlearningMethod:
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise InputValidationError(
                    f"Invalid parameter {name!r} for {type(self).__name__}. Valid parameters are: {', '.join(valid)}."
                )
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        sig = inspect.signature(type(self).__init__)
        changed = []
        for name in self._param_names():
            default = sig.parameters[name].default
            value = getattr(self, name)
            if not (value is default or (type(value) is type(default) and _safe_eq(value, default))):
                changed.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(changed)})"

    def _validate_params(self) -> None:
        caller = type(self).__name__
        for name, check in self._parameter_constraints.items():
            check(name, caller, getattr(self, name))

    def _check_is_fitted(self) -> None:
        if not hasattr(self, "train_seconds_"):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with appropriate arguments "
                f"before using this method."
            )

    # --- public API -----------------------------------------------------------------------------

    def fit(self, spec: dict | nn.Module, X, y, recipe: Recipe | None = None) -> UnlearningMethod:
        """Train from scratch on ``(X, y)`` and keep what later unlearning needs.

        Parameters
        ----------
        spec : dict or nn.Module
            Architecture spec (see :func:`prune_unlearn.models.build_model`), or a model built by it
            (only its spec is used: baselines always train from scratch, seeded by ``recipe.seed``).
        X : tensor or ndarray of shape (n, ...)
        y : tensor or ndarray of shape (n,)
            Integer labels in ``[0, spec["num_classes"])``.
        recipe : Recipe, default=Recipe()
            Optimiser, batch size, epochs and seed.

        Returns
        -------
        self
        """
        caller = f"{type(self).__name__}.fit"
        for attr in ("train_seconds_",):
            self.__dict__.pop(attr, None)
        self._validate_params()
        if isinstance(spec, nn.Module):
            module_spec = architecture_of(spec)
            if module_spec is None:
                raise param_error("spec", caller, "an architecture spec or a model built by build_model",
                                  type(spec).__name__,
                                  hint="baselines retrain from scratch, so they need the spec; pass "
                                       "prune_unlearn.models.architecture_of(model) or a dict.")
            spec = module_spec
        build_model(spec)  # refuses an unknown or incomplete spec with a FormatError
        if recipe is None:
            recipe = Recipe()
        if not isinstance(recipe, Recipe):
            raise param_error("recipe", caller, "a prune_unlearn.training.Recipe or None", type(recipe).__name__)
        X = as_float_tensor(X, "X", caller).clone()
        y = as_label_tensor(y, len(X), int(spec["num_classes"]), "y", caller).clone()
        self.spec_ = copy.deepcopy(spec)
        self.recipe_ = recipe
        self.X_ = X
        self.y_ = y
        self.n_train_ = len(X)
        self._removed = torch.zeros(len(X), dtype=torch.bool)
        self._n_forget_calls = 0
        start = time.perf_counter()
        self._fit()
        self.train_seconds_ = time.perf_counter() - start
        return self

    def forget(self, indices) -> BaselineResult:
        """Unlearn the training points at ``indices`` (rows of the ``X`` given to ``fit``).

        Returns
        -------
        BaselineResult
            The new model, both phases' wall times in seconds, and method-specific ``info``.
        """
        self._check_is_fitted()
        idx = self._check_indices(indices)
        keep = ~self._removed
        keep[idx] = False
        start = time.perf_counter()
        info = self._forget(idx, keep)
        unlearn_seconds = time.perf_counter() - start
        self._removed = ~keep
        self._n_forget_calls += 1
        info = {"n_forget": len(idx), "n_remaining": int(keep.sum()), **info}
        return BaselineResult(self._model, float(self.train_seconds_), float(unlearn_seconds), info)

    def predict(self, X) -> torch.Tensor:
        """Predicted labels of the current model (an int64 tensor)."""
        self._check_is_fitted()
        X = as_float_tensor(X, "X", f"{type(self).__name__}.predict")
        model = self._model
        model.eval()
        with torch.no_grad():
            return model(X).argmax(1)

    @property
    def model_(self) -> nn.Module:
        self._check_is_fitted()
        return self._model

    @property
    def forgotten_(self) -> torch.Tensor:
        self._check_is_fitted()
        return self._removed.nonzero().flatten()

    # --- for subclasses -------------------------------------------------------------------------

    @abc.abstractmethod
    def _fit(self) -> None:
        """Train on ``self.X_, self.y_`` and set ``self._model`` (the timed training phase)."""

    @abc.abstractmethod
    def _forget(self, idx: torch.Tensor, keep: torch.Tensor) -> dict:
        """Unlearn ``idx`` (new requests only); ``keep`` marks the data that remains. Set ``self._model``."""

    def _check_indices(self, indices) -> torch.Tensor:
        caller = f"{type(self).__name__}.forget"
        constraint = f"a non-empty 1-D array of training-set indices in [0, {self.n_train_ - 1}]"
        if isinstance(indices, torch.Tensor):
            arr = indices.detach().cpu().numpy()
        else:
            arr = np.asarray(indices)
        if arr.dtype == bool or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise param_error("indices", caller, constraint, arr.dtype,
                              hint="pass integer row positions, e.g. mask.nonzero()[0] for a boolean mask.")
        arr = arr.reshape(-1).astype(np.int64)
        if arr.size == 0:
            raise param_error("indices", caller, constraint, [])
        bad = arr[(arr < 0) | (arr >= self.n_train_)]
        if bad.size:
            raise param_error("indices", caller, constraint, bad[:5].tolist())
        idx = torch.from_numpy(np.unique(arr))
        again = idx[self._removed[idx]]
        if len(again):
            raise InputValidationError(
                f"Indices {again[:5].tolist()}{' …' if len(again) > 5 else ''} were already forgotten by this "
                f"{type(self).__name__}. HINT: indices always refer to the rows given to 'fit'; see 'forgotten_'."
            )
        if int((~self._removed).sum()) == len(idx):
            raise InputValidationError(
                f"Cannot forget every remaining training point ({len(idx)}); nothing would be left to train on."
            )
        return idx


def _safe_eq(a, b) -> bool:
    try:
        return bool(a == b)
    except (TypeError, ValueError, RuntimeError):  # arrays and tensors: compare by identity only
        return False
