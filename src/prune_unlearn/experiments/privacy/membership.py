"""Membership inference (Yeom et al., CSF 2018), the attack the paper runs against unlearned models.

Yeom et al.'s attacker knows the model's average training loss ``τ`` and calls a point a member
iff its loss is at most ``τ`` (the *loss-threshold* attack); the simpler *correctness* attack
calls a point a member iff the model classifies it correctly. The paper's Table IV reports the
recall of the loss attack on ``D_U``: the share of forgotten points still flagged as members
(lower is better). :func:`mia_auc_tpr` adds the threshold-free view (ROC AUC and TPR at 1% FPR
of ``D_U`` against unseen points), which does not depend on the choice of ``τ``.

A model with a ``log_probabilities(x)`` method (e.g. SISA's :class:`~prune_unlearn.baselines.MajorityVote`,
whose forward returns votes, not logits) is scored with it; any other model with
``log_softmax(model(x))``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from ..._validation import as_float_tensor, as_label_tensor, check_choice, param_error

__all__ = [
    "per_example_loss",
    "mean_loss",
    "loss_threshold_attack",
    "AttackResult",
    "mia_recall",
    "mia_auc_tpr",
    "MIAScores",
    "ATTACK_VARIANTS",
]

ATTACK_VARIANTS = ("loss", "correctness")


class AttackResult(NamedTuple):
    """``members[i]``: point ``i`` of the evaluated set is called a member."""

    members: np.ndarray
    losses: np.ndarray
    threshold: float | None


class MIAScores(NamedTuple):
    auc: float
    tpr_at_1pct_fpr: float


def _log_probs(model: nn.Module, X, y, caller: str, xname: str = "X", yname: str = "y"):
    """Log-probabilities (n, C) and validated labels; the model is evaluated in eval mode."""
    X = as_float_tensor(X, xname, caller)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if hasattr(model, "log_probabilities"):
                logp = model.log_probabilities(X)
            else:
                logp = torch.log_softmax(model(X), dim=1)
    finally:
        model.train(was_training)
    y = as_label_tensor(y, len(X), logp.shape[1], yname, caller)
    return logp, y


def per_example_loss(model: nn.Module, X, y) -> np.ndarray:
    """Cross-entropy of each point (float64 array of shape (n,))."""
    logp, y = _log_probs(model, X, y, "per_example_loss")
    return (-logp.gather(1, y[:, None])[:, 0]).double().numpy()


def mean_loss(model: nn.Module, X, y) -> float:
    """Mean cross-entropy: Yeom et al.'s threshold when ``(X, y)`` is the training set."""
    return float(per_example_loss(model, X, y).mean())


def loss_threshold_attack(model: nn.Module, X_members, y_members, X_eval, y_eval, threshold: float | None = None,
                          *, variant: str = "loss") -> AttackResult:
    """Yeom et al.'s attack on ``(X_eval, y_eval)``.

    Parameters
    ----------
    model : nn.Module
    X_members, y_members : tensors or arrays, or None
        Known training members; their mean loss is the default threshold. Unused when
        ``threshold`` is given or ``variant="correctness"``.
    X_eval, y_eval : tensors or arrays
        Points to classify as member / non-member.
    threshold : float, optional
        Loss threshold ``τ``: member iff loss ≤ ``τ``.
    variant : {"loss", "correctness"}, default="loss"
        ``"correctness"``: member iff the model predicts the label (no threshold).

    Returns
    -------
    AttackResult
        ``(members, losses, threshold)`` with ``members`` a bool array over the evaluated points.
    """
    caller = "loss_threshold_attack"
    check_choice("variant", caller, variant, ATTACK_VARIANTS)
    logp, y = _log_probs(model, X_eval, y_eval, caller, "X_eval", "y_eval")
    losses = (-logp.gather(1, y[:, None])[:, 0]).double().numpy()
    if variant == "correctness":
        return AttackResult((logp.argmax(1) == y).numpy(), losses, None)
    if threshold is None:
        if X_members is None or y_members is None:
            raise param_error("X_members", caller, "training members when no threshold is given", None,
                              hint="pass known members (their mean loss is the threshold) or threshold=...")
        threshold = mean_loss(model, X_members, y_members)
    elif isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not np.isfinite(threshold):
        raise param_error("threshold", caller, "a finite float or None", threshold)
    return AttackResult(losses <= float(threshold), losses, float(threshold))


def mia_recall(model: nn.Module, X_u, y_u, threshold: float) -> float:
    """Share of ``D_U`` the loss-threshold attack still flags as members (the paper's Table IV).

    Pass the ``threshold`` the attacker would use, normally :func:`mean_loss` of the model on its
    (remaining) training data.
    """
    return float(loss_threshold_attack(model, None, None, X_u, y_u, threshold).members.mean())


def mia_auc_tpr(model: nn.Module, X_u, y_u, X_out, y_out, *, seed: int = 0) -> MIAScores:
    """ROC AUC and TPR at 1% FPR of telling ``D_U`` (positives) from unseen points by ``−loss``.

    The larger of the two sets is subsampled (seeded) to the size of the smaller, so that the AUC
    compares equal-size sets. 0.5 means the attack cannot tell forgotten points from unseen ones.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    loss_in = per_example_loss(model, X_u, y_u)
    loss_out = per_example_loss(model, X_out, y_out)
    rng = np.random.default_rng(seed)
    k = min(len(loss_in), len(loss_out))
    if len(loss_in) > k:
        loss_in = loss_in[rng.permutation(len(loss_in))[:k]]
    if len(loss_out) > k:
        loss_out = loss_out[rng.permutation(len(loss_out))[:k]]
    labels = np.r_[np.ones(k), np.zeros(k)]
    scores = -np.r_[loss_in, loss_out]
    auc = float(roc_auc_score(labels, scores))
    fpr, tpr, _ = roc_curve(labels, scores)
    tpr_low = float(tpr[fpr <= 0.01].max()) if np.any(fpr <= 0.01) else 0.0
    return MIAScores(auc, tpr_low)
