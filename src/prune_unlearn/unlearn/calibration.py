"""Calibrating a reference model to the base model's confidence on data neither trained on.

A reference trained on less data than the base model (one fold of a K-fold split left out) is less
confident than the base model on points *neither* saw: its logits are smaller. Patched to answer as
the raw reference, a forgotten point then gets a larger loss than an unseen point gets from the base
model, and a loss-ranking attacker picks the forgotten points out (AUC below 0.5). The fix is one
number per reference, a temperature: ``g_s(x) = s · g(x)``, with ``s`` fitted so that the distribution
of ``g_s``'s losses on *held-out* data (inputs neither the base model nor the reference trained on)
matches the base model's losses on the same data.

The fit: the log cross-entropy losses of both models on the held-out set (computed stably, so a very
confident point keeps its size instead of rounding to 0), compared at the 5%, 10%, …, 95% quantiles;
``s`` minimises the mean squared difference of those quantiles (a grid over ``log s`` in ``[−log 8,
log 8]``, refined by a bounded scalar search). A scale does not change the reference's prediction at any
point. The certificate records the scale, the held-out set (count and hash) and the fit, and the
forget call refuses a held-out set that contains a point being forgotten.

``method="affine"`` fits a full affine map of the logits instead, ``g_A(x) = W · g(x) + b`` (``W`` C×C, ``b``
C), by least squares of the base model's logits on the reference's over the held-out set. Why: one
temperature matches the *distribution* of losses, but a reference trained on less data differs from the base
model point by point — by class and by how hard the point is — and a per-example attack (U-LiRA) sees that
(Fashion-MNIST, docs/results.md). The affine map is the best linear predictor, on data neither model saw, of
what the base model would say from what the reference says; it never looks at the base model's output at a
forgotten point. It may change the reference's prediction at a point (a temperature cannot). It needs at
least ``AFFINE_POINTS_PER_PARAMETER · (C + 1)`` held-out points. The certificate records ``W`` and ``b``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .._hashing import model_sha256, points_sha256
from .._validation import check_choice, param_error
from ..errors import InputValidationError

__all__ = ["Calibration", "calibrate", "log_losses", "fit_scale", "fit_affine", "QUANTILES", "MIN_HELD_OUT",
           "SCALE_RANGE", "CALIBRATION_METHODS", "AFFINE_POINTS_PER_PARAMETER"]

QUANTILES = tuple(np.round(np.arange(0.05, 0.951, 0.05), 2))
MIN_HELD_OUT = 50          # fewer points make the 5% … 95% quantiles meaningless
SCALE_RANGE = (1 / 8, 8.0)  # a reference needing more than this is not a model of the same task
CALIBRATION_METHODS = ("temperature", "affine")
AFFINE_POINTS_PER_PARAMETER = 10  # held-out points per fitted coefficient of one output logit (C + 1 of them)


@dataclass(frozen=True)
class Calibration:
    """A fitted logit scale for one reference and the held-out set it was fitted on."""

    scale: float
    held_out_count: int
    held_out_sha256: str
    base_model_sha256: str
    mismatch_before: float   # the fit's objective at scale 1 and at the fitted scale
    mismatch_after: float
    held_out_hashes: frozenset = field(default=frozenset(), repr=False, compare=False)
    map: str = "temperature"         # or "affine": weight @ logits + bias (``scale`` is then 1)
    weight: tuple | None = None      # (C, C) nested tuples of floats, affine only
    bias: tuple | None = None        # (C,)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """The calibrated logits (float64) of raw reference logits ``(n, C)``."""
        z = logits.to(torch.float64)
        if self.map == "affine":
            return z @ torch.tensor(self.weight, dtype=torch.float64).T + torch.tensor(self.bias, dtype=torch.float64)
        return z * self.scale

    def describe(self) -> dict:
        """What the certificate records."""
        out = {"method": "temperature: log cross-entropy quantiles (5%…95%) matched to the base model's on "
                         "held-out data neither model trained on" if self.map == "temperature" else
                         "affine: least squares of the base model's logits on the reference's over held-out data "
                         "neither model trained on (calibrated = weight · raw + bias)",
               "map": self.map, "scale": self.scale, "held_out_count": self.held_out_count,
               "held_out_sha256": self.held_out_sha256, "base_model_sha256": self.base_model_sha256,
               "mismatch_before": self.mismatch_before, "mismatch_after": self.mismatch_after}
        if self.map == "affine":
            out.update(weight=[list(r) for r in self.weight], bias=list(self.bias))
        return out


def log_losses(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """``log(cross-entropy)`` per row, stable for confident rows: ``CE = softplus(m)`` with
    ``m = logsumexp_{j≠y}(z_j − z_y)``, and ``log softplus(m) = m`` to float64 precision when ``m < −35``."""
    z = logits.detach().to(torch.float64).cpu()
    y = labels.to(torch.int64).cpu()
    rel = z - z.gather(1, y[:, None])
    rel.scatter_(1, y[:, None], float("-inf"))
    m = torch.logsumexp(rel, dim=1)
    small = m < -35
    out = torch.where(small, m, torch.log(torch.nn.functional.softplus(m.clamp(min=-35))))
    return out.numpy()


def _mismatch(ref: torch.Tensor, base_q: np.ndarray, labels: torch.Tensor, s: float) -> float:
    q = np.quantile(log_losses(ref * s, labels), QUANTILES)
    return float(np.mean((q - base_q) ** 2))


def fit_scale(ref_logits: torch.Tensor, base_logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float, float]:
    """``(scale, mismatch at 1, mismatch at scale)``: the temperature matching the reference's loss quantiles
    to the base model's (module docstring)."""
    from scipy.optimize import minimize_scalar

    base_q = np.quantile(log_losses(base_logits, labels), QUANTILES)
    ref = ref_logits.detach().to(torch.float64).cpu()
    lo, hi = np.log(SCALE_RANGE[0]), np.log(SCALE_RANGE[1])
    grid = np.linspace(lo, hi, 97)
    values = [_mismatch(ref, base_q, labels, float(np.exp(t))) for t in grid]
    k = int(np.argmin(values))
    a, b = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    best = minimize_scalar(lambda t: _mismatch(ref, base_q, labels, float(np.exp(t))), bounds=(a, b),
                           method="bounded", options={"xatol": 1e-6})
    t = float(best.x) if best.fun <= values[k] else float(grid[k])
    scale = float(np.exp(t))
    return scale, _mismatch(ref, base_q, labels, 1.0), _mismatch(ref, base_q, labels, scale)


def fit_affine(ref_logits: torch.Tensor, base_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W, b)`` float64 minimising ``Σ ‖W g + b − f‖²`` over the rows (least squares, one solve for all logits)."""
    g = ref_logits.detach().to(torch.float64).cpu()
    f = base_logits.detach().to(torch.float64).cpu()
    design = torch.cat([g, torch.ones(len(g), 1, dtype=torch.float64)], 1)
    sol = torch.linalg.lstsq(design, f, driver="gelsd").solution   # (C + 1, C)
    return sol[:-1].T.contiguous(), sol[-1].contiguous()


def _quantile_mismatch(z: torch.Tensor, f: torch.Tensor, labels: torch.Tensor) -> float:
    return _mismatch(z.to(torch.float64), np.quantile(log_losses(f, labels), QUANTILES), labels, 1.0)


@torch.no_grad()
def calibrate(reference, base_model: nn.Module, held_out, labels, caller: str = "Reference.calibrated",
              method: str = "temperature"):
    """The fitted :class:`Calibration` of ``reference`` to ``base_model`` on ``(held_out, labels)``.

    Refuses held-out inputs the reference trained on, too few of them, and non-finite outputs; nothing else
    is checked here (the forget call refuses a held-out set that overlaps the points it forgets)."""
    check_choice("method", caller, method, CALIBRATION_METHODS)
    x = torch.as_tensor(held_out, dtype=torch.float32)
    y = torch.as_tensor(labels).to(torch.int64).flatten()
    if x.ndim < 2 or len(x) != len(y):
        raise param_error("held_out", caller, "a (n, *input_shape) tensor with one label per row in 'labels'",
                          f"{tuple(x.shape)} inputs and {len(y)} labels")
    if len(x) < MIN_HELD_OUT:
        raise param_error("held_out", caller, f"at least {MIN_HELD_OUT} held-out points (its loss quantiles are "
                          "matched)", len(x))
    if base_model.training:
        raise InputValidationError(f"The base model given to {caller} is in training mode. HINT: call .eval().")
    hashes = points_sha256(x)
    seen = [i for i, h in enumerate(hashes) if reference.saw(h)]
    if seen:
        raise InputValidationError(
            f"The held-out set overlaps the reference's training data: {len(seen)} of {len(x)} point(s) (indices "
            f"{seen[:10]}{' …' if len(seen) > 10 else ''}) were seen by reference {reference.name!r}. HINT: calibrate "
            "on data neither the base model nor the reference trained on (a held-out split, never the points being "
            "forgotten nor the points an evaluation attacks).")
    dev = lambda m: next((p.device for p in m.parameters()), torch.device("cpu"))  # noqa: E731
    g = reference.model(x.to(dev(reference.model))).cpu()
    f = base_model(x.to(dev(base_model))).cpu()
    num = f.shape[1]
    if g.shape != f.shape or not (0 <= int(y.min()) and int(y.max()) < num):
        raise param_error("labels", caller, f"labels in [0, {num}) for models with the same output shape",
                          f"reference outputs {tuple(g.shape[1:])}, base {tuple(f.shape[1:])}")
    if not (torch.isfinite(g).all() and torch.isfinite(f).all()):
        raise InputValidationError(f"{caller}: a model gave non-finite logits on the held-out set.")
    digest = hashlib.sha256("".join(sorted(hashes)).encode()).hexdigest()
    if method == "affine":
        need = AFFINE_POINTS_PER_PARAMETER * (num + 1)
        if len(x) < need:
            raise param_error("held_out", caller, f"at least {need} held-out points for the affine map "
                              f"({AFFINE_POINTS_PER_PARAMETER} per coefficient, {num} + 1 per logit)", len(x),
                              hint="hold out more points, or calibrate with method='temperature'.")
        W, b = fit_affine(g, f)
        mapped = g.to(torch.float64) @ W.T + b
        if not torch.isfinite(mapped).all():
            raise InputValidationError(f"{caller}: the affine fit is not finite (degenerate reference logits).")
        return Calibration(1.0, len(x), digest, model_sha256(base_model), _quantile_mismatch(g, f, y),
                           _quantile_mismatch(mapped, f, y), frozenset(hashes), "affine",
                           tuple(tuple(float(v) for v in row) for row in W), tuple(float(v) for v in b))
    scale, before, after = fit_scale(g, f, y)
    return Calibration(scale, len(x), digest, model_sha256(base_model), before, after, frozenset(hashes))
