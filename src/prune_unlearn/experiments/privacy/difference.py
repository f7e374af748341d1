"""The model-difference attack: an attacker who holds the model before *and* after the withdrawal.

Chen et al. ("When machine unlearning jeopardizes privacy", CCS 2021) show that the pair of models
leaks more than either alone: the points whose output moved the most are the likely forgotten ones.
The attacker ranks candidate points by how much their output changed,

* ``loss_increase``: ``loss_after − loss_before`` (a forgotten point loses its member-level fit), and
* ``posterior_shift``: ``‖p_after − p_before‖₁`` (any change of the probability vector, label-free),

and we report ROC AUC, TPR at low FPR and precision at ``k = |D_U|`` (the share of forgotten points among
the ``k`` top-ranked candidates) for finding the forgotten points among the remaining training points
and among unseen points. :func:`learned_difference_attack` is Chen et al.'s own form: a classifier
(a random forest) trained on shadow pairs of models, on features of both output vectors (sorted
probabilities before and after, their difference, and the true label's scaled confidence and loss).

No patch can hide from this attacker: a patch that changes the output on a point's region and
nowhere else singles out that region by construction, and even exact retraining moves the
forgotten points more than the others. The reference is therefore Retrain's number, not 0.5.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from .population import (DEFAULT_FPRS, RocSummary, check_disjoint, label_array, log_probabilities, roc_summary,
                         scaled_confidence)

__all__ = ["DIFFERENCE_SCORES", "difference_scores", "precision_at_k", "model_difference_attack",
           "difference_summary", "pair_features", "learned_difference_attack"]

DIFFERENCE_SCORES = ("loss_increase", "posterior_shift")


def difference_scores(logp_before: np.ndarray, logp_after: np.ndarray, y) -> dict[str, np.ndarray]:
    """Both change scores (higher = more likely forgotten) of points with the given log-probabilities."""
    y = label_array(logp_before, y, "difference_scores")
    rows = np.arange(len(y))
    increase = logp_before[rows, y] - logp_after[rows, y]
    shift = np.abs(np.exp(logp_after) - np.exp(logp_before)).sum(axis=1)
    return {"loss_increase": increase, "posterior_shift": shift}


def precision_at_k(pos, neg, k: int | None = None) -> float:
    """Share of positives among the ``k`` highest scores (default ``k = len(pos)``); ties count pro rata."""
    pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    k = len(pos) if k is None else int(k)
    scores = np.r_[pos, neg]
    kth = np.sort(scores)[::-1][k - 1]
    above_pos, above_neg = int((pos > kth).sum()), int((neg > kth).sum())
    tied_pos, tied_neg = int((pos == kth).sum()), int((neg == kth).sum())
    # the k − (strictly above) places left go to the tied points in proportion
    left = k - above_pos - above_neg
    return float(above_pos + left * tied_pos / (tied_pos + tied_neg)) / k


def difference_summary(pos: dict, neg: dict, fprs=DEFAULT_FPRS) -> dict[str, dict]:
    """ROC summary and precision at ``|pos|`` of each score (dicts from :func:`difference_scores`)."""
    out = {}
    for name in DIFFERENCE_SCORES:
        roc: RocSummary = roc_summary(pos[name], neg[name], fprs)
        out[name] = {**roc.to_dict(), "precision_at_k": precision_at_k(pos[name], neg[name]), "k": len(pos[name])}
    return out


def model_difference_attack(before: nn.Module, after: nn.Module, X_forgotten, y_forgotten, X_others, y_others, *,
                            fprs=DEFAULT_FPRS) -> dict[str, dict]:
    """Find the forgotten points among ``X_others`` (remaining training points, or unseen points) by output change.

    Returns ``{score name: {auc, tpr, tpr_best, n_pos, n_neg, max_false_positives, precision_at_k, k}}``.
    """
    caller = "model_difference_attack"
    check_disjoint(X_forgotten, X_others, "X_forgotten", "X_others", caller)
    pos = difference_scores(log_probabilities(before, X_forgotten, caller=caller),
                            log_probabilities(after, X_forgotten, caller=caller), y_forgotten)
    neg = difference_scores(log_probabilities(before, X_others, caller=caller),
                            log_probabilities(after, X_others, caller=caller), y_others)
    return difference_summary(pos, neg, fprs)


def pair_features(logp_before: np.ndarray, logp_after: np.ndarray, y) -> np.ndarray:
    """Features of one point's pair of outputs (Chen et al.'s sorted posteriors and their difference, plus
    the true label's scaled confidence before/after and the loss increase), shape (n, 3C + 3)."""
    y = label_array(logp_before, y, "pair_features")
    pb = -np.sort(-np.exp(logp_before), axis=1)
    pa = -np.sort(-np.exp(logp_after), axis=1)
    phi_b, phi_a = scaled_confidence(logp_before, y), scaled_confidence(logp_after, y)
    inc = difference_scores(logp_before, logp_after, y)["loss_increase"]
    return np.column_stack([pb, pa, pb - pa, phi_b, phi_a, inc])


def learned_difference_attack(shadow_before, shadow_after, shadow_in, y, target_before, target_after, positive, *,
                              n_estimators: int = 200, seed: int = 0, fprs=DEFAULT_FPRS) -> dict:
    """Chen et al.'s attack: learn "forgotten vs never seen" from shadow pairs, apply it to the target pair.

    Parameters
    ----------
    shadow_before, shadow_after : arrays (M, n, C)
        Log-probabilities of every shadow's model before and after its withdrawal, on the candidates.
    shadow_in : bool array (M, n)
        Which candidates each shadow trained on and then withdrew (the classifier's positives).
    y : labels (n,)
    target_before, target_after : arrays (n, C)
        The target's pair of models on the same candidates.
    positive : bool array (n,)
        Candidates the target withdrew (the evaluation's positives; the rest it never saw).
    n_estimators : int, default=200
        Trees of the forest.

    Returns
    -------
    dict
        The ROC summary (as a dict) with ``precision_at_k`` and ``k``.
    """
    from sklearn.ensemble import RandomForestClassifier

    sb, sa = np.asarray(shadow_before), np.asarray(shadow_after)
    X = np.concatenate([pair_features(b, a, y) for b, a in zip(sb, sa)])
    labels = np.asarray(shadow_in, dtype=bool).reshape(-1)
    big = np.finfo(np.float32).max / 2  # the forest works in float32: clip scaled confidences of ±huge
    forest = RandomForestClassifier(n_estimators=n_estimators, min_samples_leaf=5, random_state=seed, n_jobs=1)
    forest.fit(np.clip(X, -big, big), labels)
    score = forest.predict_proba(np.clip(pair_features(np.asarray(target_before), np.asarray(target_after), y),
                                         -big, big))[:, 1]
    positive = np.asarray(positive, dtype=bool)
    roc = roc_summary(score[positive], score[~positive], fprs)
    return {**roc.to_dict(), "precision_at_k": precision_at_k(score[positive], score[~positive]),
            "k": int(positive.sum())}
