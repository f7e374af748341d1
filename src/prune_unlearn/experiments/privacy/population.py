"""Population attacks: one score per point, one threshold for everybody, read off a ROC curve.

The attacker ranks points by a score computed from the model's output and calls the top of the
ranking "forgotten" (trained on, then withdrawn). Three scores, all from log-probabilities
``log p(x)`` (so that SISA's vote ensemble, scored by its mean softmax, fits the same mould):

* ``loss``: cross-entropy ``−log p_y``; a member has a *low* loss (Yeom et al.).
* ``confidence``: the top probability ``max_j p_j``; needs no label.
* ``margin``: the logit margin ``log p_y − max_{j≠y} log p_j`` (softmax shifts every logit by the same
  constant, so this is exactly the logit margin of a plain network).

Each is oriented so that a higher *membership score* means "more member-like" (the loss enters as
``−loss``). :func:`roc_summary` reports the ROC AUC and the TPR at fixed false-positive rates, with
the number of points behind each rate: a TPR at FPR ``α`` needs at least ``1/α`` negatives (0.1%
FPR: 1,000 unseen points), otherwise it is reported as ``None``.

An AUC below 0.5 is a finding, not noise: the forgotten points are *less* member-like than unseen
ones (PRUNE's misprediction patches give them huge losses). An attacker who knows the method flips
the test, so :func:`roc_summary` also gives the TPRs of the better direction.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from ..._hashing import points_sha256
from ..._validation import as_float_tensor, as_label_tensor, param_error
from ...errors import InputValidationError

__all__ = [
    "log_probabilities",
    "label_array",
    "membership_scores",
    "scaled_confidence",
    "SCORES",
    "RocSummary",
    "roc_summary",
    "tpr_at_fpr",
    "check_disjoint",
    "population_attack",
    "DEFAULT_FPRS",
]

SCORES = ("loss", "confidence", "margin")
DEFAULT_FPRS = (0.01, 0.001)


def log_probabilities(model: nn.Module, X, *, batch_size: int = 8192, caller: str = "log_probabilities") -> np.ndarray:
    """Log-probabilities (float64, shape (n, C)) of ``model`` in eval mode.

    A model with a ``log_probabilities(x)`` method (SISA's :class:`MajorityVote`) is scored with it;
    any other with ``log_softmax`` of its logits, taken in float64 so that a loss near 0 keeps its digits.
    """
    X = as_float_tensor(X, "X", caller)
    was_training = model.training
    model.eval()
    parts = []
    try:
        with torch.no_grad():
            for i in range(0, len(X), batch_size):
                xb = X[i: i + batch_size]
                if hasattr(model, "log_probabilities"):
                    parts.append(model.log_probabilities(xb).double())
                else:
                    parts.append(torch.log_softmax(model(xb).double(), dim=1))
    finally:
        model.train(was_training)
    if not parts:
        raise param_error("X", caller, "a non-empty batch of inputs", "0 rows")
    return torch.cat(parts).numpy()


def label_array(logp: np.ndarray, y, caller: str) -> np.ndarray:
    """``y`` as an int64 array, checked against the rows and classes of ``logp``."""
    return as_label_tensor(y, len(logp), logp.shape[1], "y", caller).numpy()


def scaled_confidence(logp: np.ndarray, y) -> np.ndarray:
    """LiRA's logit-scaled confidence ``log(p_y / (1 − p_y))``, computed stably in log space."""
    y = label_array(logp, y, "scaled_confidence")
    rows = np.arange(len(y))
    own = logp[rows, y]
    others = logp.copy()
    others[rows, y] = -np.inf
    return own - np.logaddexp.reduce(others, axis=1)


def membership_scores(logp: np.ndarray, y) -> dict[str, np.ndarray]:
    """The three population scores (higher = more member-like) of points with log-probabilities ``logp``."""
    y = label_array(logp, y, "membership_scores")
    rows = np.arange(len(y))
    own = logp[rows, y]
    others = logp.copy()
    others[rows, y] = -np.inf
    return {"loss": own, "confidence": np.exp(logp.max(axis=1)), "margin": own - others.max(axis=1)}


class RocSummary(NamedTuple):
    """ROC AUC of positives against negatives, and TPRs at fixed FPRs.

    ``tpr[α]`` is the largest TPR among thresholds whose FPR is at most ``α`` with the score's own
    direction (higher = positive); ``tpr_best[α]`` the same in the direction whose AUC is ≥ 0.5.
    Both are ``None`` when ``α · n_neg < 1`` (the rate would allow no false positive at all).
    ``max_false_positives[α] = ⌊α · n_neg⌋``.
    """

    auc: float
    tpr: dict
    tpr_best: dict
    n_pos: int
    n_neg: int
    max_false_positives: dict

    def to_dict(self) -> dict:
        key = lambda a: f"{a:g}"  # noqa: E731 - JSON keys
        return {"auc": self.auc, "tpr": {key(a): v for a, v in self.tpr.items()},
                "tpr_best": {key(a): v for a, v in self.tpr_best.items()}, "n_pos": self.n_pos,
                "n_neg": self.n_neg, "max_false_positives": {key(a): v for a, v in self.max_false_positives.items()}}


def tpr_at_fpr(pos, neg, fpr: float) -> float | None:
    """Largest TPR of the rule "positive iff score ≥ t" over thresholds ``t`` whose FPR is ≤ ``fpr``.

    Ties move together (scikit-learn's ``roc_curve``). ``None`` if ``fpr · len(neg) < 1``.
    """
    from sklearn.metrics import roc_curve

    pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    if math.floor(fpr * len(neg) + 1e-9) < 1:
        return None
    labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    f, t, _ = roc_curve(labels, np.r_[pos, neg], drop_intermediate=False)
    return float(t[f <= fpr + 1e-12].max())


def roc_summary(pos, neg, fprs=DEFAULT_FPRS) -> RocSummary:
    """:class:`RocSummary` of scores ``pos`` (positives) against ``neg`` (negatives); higher = positive."""
    from sklearn.metrics import roc_auc_score

    pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    if len(pos) == 0 or len(neg) == 0:
        raise param_error("pos/neg", "roc_summary", "non-empty score arrays", f"{len(pos)} and {len(neg)} scores")
    if not (np.isfinite(pos).all() and np.isfinite(neg).all()):
        # +inf/-inf are legitimate ranks (e.g. a log-probability of exactly 0); NaN is not
        if np.isnan(pos).any() or np.isnan(neg).any():
            raise param_error("pos/neg", "roc_summary", "scores without NaN", "NaN")
        big = np.finfo(np.float64).max
        pos, neg = np.clip(pos, -big, big), np.clip(neg, -big, big)
    auc = float(roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]))
    sign = 1.0 if auc >= 0.5 else -1.0
    tpr = {a: tpr_at_fpr(pos, neg, a) for a in fprs}
    best = tpr if sign > 0 else {a: tpr_at_fpr(-pos, -neg, a) for a in fprs}
    return RocSummary(auc, tpr, best, len(pos), len(neg), {a: math.floor(a * len(neg) + 1e-9) for a in fprs})


def check_disjoint(X_a, X_b, name_a: str, name_b: str, caller: str) -> None:
    """Refuse two point sets that share an input (compared by content hash, as certificates name points)."""
    a = as_float_tensor(X_a, name_a, caller)
    b = as_float_tensor(X_b, name_b, caller)
    seen = {h: i for i, h in enumerate(points_sha256(a))}
    shared = [(seen[h], j) for j, h in enumerate(points_sha256(b)) if h in seen]
    if shared:
        i, j = shared[0]
        raise InputValidationError(
            f"{caller}: {len(shared)} point(s) of {name_b!r} are also in {name_a!r} (first: row {j} of {name_b} = "
            f"row {i} of {name_a}). HINT: {name_b} must hold points the model never trained on; draw it from held-out "
            f"data that excludes the forgotten points.")


def population_attack(model: nn.Module, X_forgotten, y_forgotten, X_unseen, y_unseen, *,
                      fprs=DEFAULT_FPRS) -> dict[str, RocSummary]:
    """Loss, confidence and margin attacks of forgotten (positives) against unseen points (negatives).

    Parameters
    ----------
    model : nn.Module
        The model after unlearning.
    X_forgotten, y_forgotten : the withdrawn training points and their labels.
    X_unseen, y_unseen : points the model never trained on (e.g. test points), disjoint from the forgotten ones.
    fprs : false-positive rates for the TPRs (each needs at least ``1/α`` unseen points).

    Returns
    -------
    dict
        ``{"loss" | "confidence" | "margin": RocSummary}``.
    """
    caller = "population_attack"
    check_disjoint(X_forgotten, X_unseen, "X_forgotten", "X_unseen", caller)
    pos = membership_scores(log_probabilities(model, X_forgotten, caller=caller), y_forgotten)
    neg = membership_scores(log_probabilities(model, X_unseen, caller=caller), y_unseen)
    return {name: roc_summary(pos[name], neg[name], fprs) for name in SCORES}
