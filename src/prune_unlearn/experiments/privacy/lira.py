"""Per-example likelihood-ratio attacks: LiRA (Carlini et al., S&P 2022) and its unlearning form U-LiRA.

A population attack uses one threshold for every point, but points differ: an outlier has a high
loss whether or not it was trained on. LiRA calibrates each point with *shadow models*, trained as
the target was, some with the point (IN) and some without (OUT). For every candidate ``x`` it fits a
Gaussian to the shadows' logit-scaled confidence ``φ = log(p_y / (1 − p_y))`` on each side and
scores the target's ``φ(x)`` by the likelihood ratio.

U-LiRA (Hayes et al., "Inexact unlearning needs more careful evaluations to avoid a false sense of
privacy", 2024) asks the unlearning question instead: *was x trained on and then withdrawn with
method M, or never trained on?* The IN side are shadows that trained on ``x`` and then ran ``M`` to
forget it; the OUT side shadows never saw ``x`` (they ran ``M`` on other points). For exact
retraining the two sides are the same distribution, so the attack is at chance (AUC 0.5).

Shadow design (:func:`assign_shadow_sets`): the candidates are the target's forgotten points plus as
many or more unseen points; each shadow trains on the target's remaining data plus ``k`` candidates
(``k`` = the number the target forgot, so every shadow withdraws as many points as the target did)
and then forgets those ``k``. Candidates are spread evenly: each is IN in ``⌊Mk/n⌋`` or ``⌈Mk/n⌉``
of the ``M`` shadows.

Variants (:func:`lira_scores`):

* ``online``: ``log N(φ; μ_in, σ_in²) − log N(φ; μ_out, σ_out²)``, higher = IN.
* ``offline``: ``−log N(φ; μ_out, σ_out²)``, how surprising ``φ`` is for a model that never saw the
  point, in either direction (needs only OUT shadows; two-sided because unlearning can leave a point
  *less* member-like than an unseen one).

``variance="global"`` pools the within-point spread over all candidates (Carlini et al.'s advice
for fewer than ~64 shadows); ``"per-example"`` uses each point's own.
"""

from __future__ import annotations

import math

import numpy as np

from ..._validation import check_choice, param_error
from ...errors import InputValidationError
from .population import DEFAULT_FPRS, RocSummary, roc_summary, scaled_confidence

__all__ = ["assign_shadow_sets", "minimum_shadows", "check_shadow_count", "lira_scores", "likelihood_ratio_attack",
           "MIN_MODELS_PER_SIDE", "LIRA_VARIANTS", "VARIANCE_MODES"]

MIN_MODELS_PER_SIDE = 2
LIRA_VARIANTS = ("online", "offline")
VARIANCE_MODES = ("global", "per-example")
_VAR_FLOOR = 1e-8  # a spread of exactly 0 (identical shadows) would make every other value infinitely unlikely


def minimum_shadows(n_candidates: int, per_shadow: int) -> int:
    """Fewest shadows for which every candidate is IN in ≥ 2 and OUT in ≥ 2 of them.

    Two per side because each side's Gaussian needs a mean from more than one independently trained
    model (one model's output mixes the point's effect with its own seed's noise) and a spread.
    """
    if not 0 < per_shadow < n_candidates:
        raise param_error("per_shadow", "minimum_shadows", f"in [1, {n_candidates - 1}]", per_shadow)
    m = 2 * MIN_MODELS_PER_SIDE
    while (m * per_shadow) // n_candidates < MIN_MODELS_PER_SIDE or \
            m - -(-m * per_shadow // n_candidates) < MIN_MODELS_PER_SIDE:
        m += 1
    return m


def check_shadow_count(n_shadows, n_candidates: int, per_shadow: int, caller: str) -> int:
    """Refuse too few shadow models, naming the minimum and why."""
    need = minimum_shadows(n_candidates, per_shadow)
    if isinstance(n_shadows, bool) or not isinstance(n_shadows, (int, np.integer)) or n_shadows < need:
        raise param_error(
            "n_shadows", caller, f"an integer ≥ {need}", n_shadows,
            hint=f"with {n_candidates} candidates and {per_shadow} withdrawn per shadow, each candidate is IN in "
                 f"about {per_shadow}/{n_candidates} of the shadows; the likelihood ratio needs ≥ "
                 f"{MIN_MODELS_PER_SIDE} shadows on each side (IN and OUT) of every candidate to fit a mean and a "
                 f"spread. Use 16 or more for a stable attack (Carlini et al.: AUC keeps rising up to ~64).")
    return int(n_shadows)


def assign_shadow_sets(n_candidates: int, per_shadow: int, n_shadows: int, seed: int) -> np.ndarray:
    """Bool matrix ``(n_shadows, n_candidates)``: which candidates each shadow trains on and then forgets.

    Every row has exactly ``per_shadow`` True; column counts differ by at most one (greedy: each
    shadow takes the candidates used least so far, ties broken at random).
    """
    check_shadow_count(n_shadows, n_candidates, per_shadow, "assign_shadow_sets")
    rng = np.random.default_rng(seed)
    mask = np.zeros((n_shadows, n_candidates), dtype=bool)
    counts = np.zeros(n_candidates, dtype=np.int64)
    for s in range(n_shadows):
        chosen = np.lexsort((rng.random(n_candidates), counts))[:per_shadow]
        mask[s, chosen] = True
        counts[chosen] += 1
    return mask


def _gaussian(phi: np.ndarray, side: np.ndarray, variance: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-candidate mean and variance of ``phi`` over the shadows where ``side`` is True."""
    count = side.sum(axis=0)
    mean = np.where(side, phi, 0.0).sum(axis=0) / count
    sq = np.where(side, (phi - mean) ** 2, 0.0)
    if variance == "global":
        var = np.full(phi.shape[1], sq.sum() / (count - 1).sum())
    else:
        var = sq.sum(axis=0) / (count - 1)
    return mean, np.maximum(var, _VAR_FLOOR)


def _log_normal(x, mean, var):
    return -0.5 * np.log(2 * math.pi * var) - (x - mean) ** 2 / (2 * var)


def lira_scores(target_phi, shadow_phi, shadow_in, *, variant: str = "online", variance: str = "global") -> np.ndarray:
    """Likelihood-ratio score of each candidate (higher = more likely IN for the target).

    Parameters
    ----------
    target_phi : array of shape (n,)
        The target model's statistic on the candidates (normally :func:`scaled_confidence`).
    shadow_phi : array of shape (M, n)
        The same statistic of every shadow model.
    shadow_in : bool array of shape (M, n)
        ``shadow_in[s, i]``: shadow ``s`` is on the IN side for candidate ``i``.
    variant : {"online", "offline"}
    variance : {"global", "per-example"}
    """
    caller = "lira_scores"
    check_choice("variant", caller, variant, LIRA_VARIANTS)
    check_choice("variance", caller, variance, VARIANCE_MODES)
    t = np.asarray(target_phi, dtype=np.float64)
    phi = np.asarray(shadow_phi, dtype=np.float64)
    ins = np.asarray(shadow_in, dtype=bool)
    if t.ndim != 1 or phi.shape != ins.shape or phi.ndim != 2 or phi.shape[1] != len(t):
        raise param_error("shadow_phi/shadow_in", caller, f"arrays of shape (M, {len(t)})",
                          f"{phi.shape} and {ins.shape}")
    if not (np.isfinite(t).all() and np.isfinite(phi).all()):
        raise InputValidationError(f"{caller}: the statistics must be finite (no NaN/inf).")
    sides = [("OUT", ~ins)] if variant == "offline" else [("IN", ins), ("OUT", ~ins)]
    for name, side in sides:
        few = side.sum(axis=0) < MIN_MODELS_PER_SIDE
        if few.any():
            raise InputValidationError(
                f"{caller}: {int(few.sum())} candidate(s) have fewer than {MIN_MODELS_PER_SIDE} shadow models on the "
                f"{name} side (first: candidate {int(np.argmax(few))}). HINT: train more shadow models "
                f"(see minimum_shadows) or spread the candidates evenly with assign_shadow_sets.")
    mean_out, var_out = _gaussian(phi, ~ins, variance)
    if variant == "offline":
        return -_log_normal(t, mean_out, var_out)
    mean_in, var_in = _gaussian(phi, ins, variance)
    return _log_normal(t, mean_in, var_in) - _log_normal(t, mean_out, var_out)


def likelihood_ratio_attack(target_logp, shadow_logp, shadow_in, y, positive, *, variant: str = "online",
                            variance: str = "global", fprs=DEFAULT_FPRS) -> RocSummary:
    """(U-)LiRA on candidates with labels ``y``: ROC of the ``positive`` candidates against the rest.

    Parameters
    ----------
    target_logp : array (n, C)
        Log-probabilities of the target model on the candidates.
    shadow_logp : array (M, n, C)
        The shadows' log-probabilities on the same candidates.
    shadow_in : bool array (M, n)
        IN side of every shadow for every candidate.
    y : labels (n,)
    positive : bool array (n,)
        Candidates the target trained on (and, for U-LiRA, then withdrew); the rest it never saw.
    """
    positive = np.asarray(positive, dtype=bool)
    if positive.shape != (len(target_logp),) or positive.all() or not positive.any():
        raise param_error("positive", "likelihood_ratio_attack",
                          f"a bool array of shape ({len(target_logp)},) with both classes", positive.shape)
    shadow_logp = np.asarray(shadow_logp)
    phi = np.stack([scaled_confidence(s, y) for s in shadow_logp])
    scores = lira_scores(scaled_confidence(np.asarray(target_logp), y), phi, shadow_in, variant=variant,
                         variance=variance)
    return roc_summary(scores[positive], scores[~positive], fprs)
