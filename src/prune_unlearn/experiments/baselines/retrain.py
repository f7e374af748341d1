"""Retraining from scratch on ``D \\ D_U``: exact unlearning, and the yardstick for every other method."""

from __future__ import annotations

import torch

from ..training import train_from_spec
from .base import UnlearningMethod

__all__ = ["Retrain"]


class Retrain(UnlearningMethod):
    """Forget by training a fresh model, same recipe and seed, on the remaining data.

    Same seed and same data order as ``fit`` make the result reproducible: it is bit for bit what
    ``train_from_spec(spec, X[keep], y[keep], recipe)`` returns, so other methods can be compared
    with the exact answer.

    Examples
    --------
    >>> r = Retrain().fit(spec, X, y, Recipe(epochs=3))   # doctest: +SKIP
    >>> model, train_s, unlearn_s, info = r.forget([0, 5, 9])  # doctest: +SKIP
    """

    def __init__(self):
        pass

    def _fit(self) -> None:
        self._model = train_from_spec(self.spec_, self.X_, self.y_, self.recipe_).model

    def _forget(self, idx: torch.Tensor, keep: torch.Tensor) -> dict:
        self._model = train_from_spec(self.spec_, self.X_[keep], self.y_[keep], self.recipe_).model
        return {"epochs": self.recipe_.epochs}
