"""The unlearning methods PRUNE is compared with (paper §V): Retrain, SISA, Amnesiac ML and FU.

Each is an estimator: ``method.fit(spec, X, y, recipe)`` trains (timed as ``train_seconds_``),
``method.forget(indices)`` unlearns rows of that ``X`` and returns a :class:`BaselineResult`
``(model, train_seconds, unlearn_seconds, info)``.

>>> from prune_unlearn.baselines import create_baseline, baseline_names   # doctest: +SKIP
>>> sisa = create_baseline("sisa", shards=5, slices=5).fit(spec, X, y, recipe)  # doctest: +SKIP
>>> model, train_s, unlearn_s, info = sisa.forget([3, 14, 15])                   # doctest: +SKIP
"""

from .amnesiac import Amnesiac
from .base import BaselineResult, UnlearningMethod
from .influence import FU
from .registry import baseline_names, create_baseline, register_baseline
from .retrain import Retrain
from .sisa import SISA, MajorityVote

__all__ = [
    "UnlearningMethod",
    "BaselineResult",
    "Retrain",
    "SISA",
    "MajorityVote",
    "Amnesiac",
    "FU",
    "create_baseline",
    "register_baseline",
    "baseline_names",
]
