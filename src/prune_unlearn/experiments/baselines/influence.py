"""FU: second-order (influence-function) unlearning (Warnecke et al., NDSS 2023, "Machine Unlearning of
Features and Labels"), specialised to removing training points.

The update is one Newton step, taken at the trained parameters ``θ``, on the objective that
retraining on ``D \\ D_U`` would minimise:

    L'(θ) = 1/(n−m) Σ_{z ∈ D \\ D_U} ℓ(z, θ) + (λ/2)‖θ‖²

(``n = |D|``, ``m = |D_U|``, ``ℓ`` the cross-entropy, ``λ = recipe.weight_decay``). If ``θ`` is
stationary for the full objective (``Σ_{z∈D} ∇ℓ(z, θ) = −nλθ``), then
``∇L'(θ) = −(G_U + mλθ)/(n−m)`` with ``G_U = Σ_{z∈D_U} ∇ℓ(z, θ)``, and the step is

    θ_new = θ + (H' + δI)⁻¹ (G_U + mλθ) / (n−m),

``H'`` the Hessian of ``L'`` at ``θ`` (mean cross-entropy over the remaining data, or over
``hessian_samples`` of them, plus ``λI``) and ``δ`` = ``damping``. Only the forgotten points'
gradients enter the right-hand side, which is what makes the method cheap. The sign: removing
points *adds* their loss gradient (scaled by the inverse Hessian), i.e. moves θ uphill on the
forgotten points. For ``λ = 0`` and ``m ≪ n`` it is Warnecke et al.'s
``θ + H_D⁻¹ Σ_{z∈D_U} ∇ℓ(z, θ)`` with ``H_D`` the Hessian of the *summed* loss, i.e.
``θ + (1/n) H⁻¹ G_U`` with the mean-loss Hessian; using ``H'`` and ``1/(n−m)`` is the exact Newton
step on ``L'``, so it is exact for a quadratic loss.

``(H' + δI) x = b`` is solved by conjugate gradients with Hessian-vector products from double
backpropagation (exact ``Hv``, never forming ``H``). CG needs a positive-definite operator: on a
non-convex network ``H'`` may have negative curvature that ``δ`` does not cover; CG then stops at
the last good iterate and ``info["negative_curvature"]`` says so. The loss is evaluated in eval
mode (no dropout), on the model's dtype; CG vectors are float64.
"""

from __future__ import annotations

import copy
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from ..training import train_from_spec
from .base import (
    UnlearningMethod,
    derive_seed,
    non_negative_float,
    positive_float,
    positive_int,
    positive_int_or_none,
)

__all__ = ["FU", "conjugate_gradient"]

# Rows per double-backprop pass; with at most one chunk the first-order graph is built once and reused.
_HVP_CHUNK = 4096


def conjugate_gradient(apply, b: torch.Tensor, iterations: int, tol: float) -> tuple[torch.Tensor, dict]:
    """Solve ``A x = b`` for a symmetric operator ``apply`` (float64 vectors).

    Stops when ``‖r‖ ≤ tol·‖b‖``, after ``iterations`` steps, or at the first direction with
    ``pᵀAp ≤ 0`` (``A`` not positive definite there), returning the last iterate.
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = float(r @ r)
    b_norm = rs ** 0.5
    info = {"cg_iterations": 0, "cg_relative_residual": 0.0, "cg_converged": True, "negative_curvature": False}
    if b_norm == 0.0:
        return x, info
    converged = False
    steps = 0
    for _ in range(iterations):
        Ap = apply(p)
        pAp = float(p @ Ap)
        if not pAp > 0:
            info["negative_curvature"] = True
            break
        alpha = rs / pAp
        x += alpha * p
        r -= alpha * Ap
        steps += 1
        rs_new = float(r @ r)
        if rs_new ** 0.5 <= tol * b_norm:
            rs = rs_new
            converged = True
            break
        p = r + (rs_new / rs) * p
        rs = rs_new
    info.update(cg_iterations=steps, cg_relative_residual=rs ** 0.5 / b_norm, cg_converged=converged)
    return x, info


def _flat(tensors, params) -> torch.Tensor:
    return torch.cat([(t if t is not None else torch.zeros_like(p)).reshape(-1) for t, p in zip(tensors, params)])


def _hessian_vector_product(model: nn.Module, params: list, X: torch.Tensor, y: torch.Tensor, shift: float):
    """``v ↦ (∇² mean_i ℓ(x_i, y_i) + shift·I) v`` on flat float64 vectors."""
    n = len(X)
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]
    chunks = [(X[i: i + _HVP_CHUNK], y[i: i + _HVP_CHUNK]) for i in range(0, n, _HVP_CHUNK)]

    def first_order(Xc, yc):
        loss = nn.functional.cross_entropy(model(Xc), yc, reduction="sum") / n
        return torch.autograd.grad(loss, params, create_graph=True)

    cached = first_order(*chunks[0]) if len(chunks) == 1 else None

    def apply(v: torch.Tensor) -> torch.Tensor:
        vs = [t.reshape(s).to(params[0].dtype) for t, s in zip(v.split(sizes), shapes)]
        out = shift * v
        for Xc, yc in chunks:
            grads = cached if cached is not None else first_order(Xc, yc)
            hv = torch.autograd.grad(grads, params, grad_outputs=vs, retain_graph=cached is not None,
                                     allow_unused=True)
            out = out + _flat(hv, params).to(torch.float64)
        return out

    return apply


class FU(UnlearningMethod):
    """Second-order influence update: one damped Newton step on the remaining-data objective.

    Parameters
    ----------
    damping : float, default=0.01
        ``δ`` added to the Hessian's diagonal (regularises the solve; biases the step toward a
        shorter one).
    cg_iterations : int, default=100
        Most conjugate-gradient steps (each costs one Hessian-vector product over the Hessian data).
    cg_tol : float, default=1e-6
        Stop when the residual is below ``cg_tol`` times ``‖b‖``.
    hessian_samples : int or None, default=None
        Estimate ``H'`` on this many remaining points drawn at random (seeded); ``None``: all.
    step_scale : float, default=1.0
        Multiplier ``τ`` of the Newton step (Warnecke et al. tune such a ``τ``). 1.0 is the exact
        step; on a network that fits its training data, the forgotten points' gradients are tiny and
        the exact step barely moves the model, so larger ``τ`` trade accuracy for forgetting.

    Notes
    -----
    Exact formula, derivation and sign: see the module docstring. The update assumes the trained
    model is (near) a minimiser of the training objective; it is an approximation for networks.
    """

    _parameter_constraints: ClassVar[dict] = {
        "damping": non_negative_float,
        "cg_iterations": positive_int,
        "cg_tol": positive_float,
        "hessian_samples": positive_int_or_none,
        "step_scale": positive_float,
    }

    def __init__(self, *, damping: float = 0.01, cg_iterations: int = 100, cg_tol: float = 1e-6,
                 hessian_samples: int | None = None, step_scale: float = 1.0):
        self.damping = damping
        self.step_scale = step_scale
        self.cg_iterations = cg_iterations
        self.cg_tol = cg_tol
        self.hessian_samples = hessian_samples

    def _fit(self) -> None:
        self._model = train_from_spec(self.spec_, self.X_, self.y_, self.recipe_).model

    def _forget(self, idx: torch.Tensor, keep: torch.Tensor) -> dict:
        model = copy.deepcopy(self._model).eval()
        params = [p for p in model.parameters() if p.requires_grad]
        lam = float(self.recipe_.weight_decay)
        rows = keep.nonzero().flatten()
        n_rem, m = len(rows), len(idx)
        with torch.no_grad():
            theta = parameters_to_vector(params).to(torch.float64)

        loss_u = nn.functional.cross_entropy(model(self.X_[idx]), self.y_[idx], reduction="sum")
        g_u = _flat(torch.autograd.grad(loss_u, params, allow_unused=True), params).to(torch.float64)
        b = (g_u + m * lam * theta) / n_rem

        if self.hessian_samples is not None and self.hessian_samples < n_rem:
            gen = torch.Generator().manual_seed(derive_seed(self.recipe_.seed, 3, self._n_forget_calls))
            rows = rows[torch.randperm(n_rem, generator=gen)[: self.hessian_samples]]
        apply = _hessian_vector_product(model, params, self.X_[rows], self.y_[rows], lam + float(self.damping))
        step, info = conjugate_gradient(apply, b, int(self.cg_iterations), float(self.cg_tol))

        with torch.no_grad():
            step = step * float(self.step_scale)
            vector_to_parameters((theta + step).to(params[0].dtype), params)
        self._model = model
        return {"update_norm": float(step.norm()), "hessian_samples": len(rows), **info}
