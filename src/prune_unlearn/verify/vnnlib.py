"""VNN-LIB region properties in the per-region-network form (``export_onnx(..., regions=[r],
with_region_constraints=r)``), the domain box, and region polytopes as ``A h ≤ b``.

``prune export`` now writes :mod:`prune_unlearn.verify.properties` instead (one network for every
region); these stay for callers of the Python API.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .._version import __version__
from .certificate import Certificate, box_from_description, certified_patches_sha256
from ..core.domain import is_reshape_only
from ..errors import CertificateError, InputValidationError
from ..core.patches import PatchedModel
from ..core.regions import HeadNetwork, region_halfspaces

CONSTRAINT_MODES = ("output", "input")


def vnnlib_number(x: float) -> str:
    """A real literal that parses back to the same float64, without exponent (SMT-LIB style)."""
    x = float(x)
    if not math.isfinite(x):
        raise InputValidationError(f"Cannot write the non-finite number {x} into a VNN-LIB file.")
    return np.format_float_positional(x, unique=True, trim="0")


def domain_box(patched: PatchedModel, domain=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The domain box B (float64, in head-feature space) for property files.

    ``domain`` is a :class:`Certificate` (its box; it must be for this patch set), a ``(lower, upper)``
    pair of scalars or vectors, or ``None``: forget's default input box [0, 1]^d, allowed only when the
    prefix only flattens (otherwise feature space has no default box).
    """
    d = patched.split.feature_dim
    if isinstance(domain, Certificate):
        if domain.patches_sha256 != certified_patches_sha256(patched, domain):
            raise CertificateError("The certificate is for a different patch set than this model's "
                                   "(patches_sha256 differs).")
        lo, hi = box_from_description(domain.domain)
    elif domain is None:
        if not is_reshape_only(patched.split.prefix):
            raise InputValidationError("The model's features are not its inputs, so there is no default domain "
                                       "box. HINT: pass the certificate of the forget run (--certificate).")
        lo, hi = torch.zeros(d, dtype=torch.float64), torch.ones(d, dtype=torch.float64)
    else:
        try:
            lo, hi = domain
        except (TypeError, ValueError):
            raise InputValidationError("domain must be a Certificate or a (lower, upper) pair.") from None
        lo = torch.as_tensor(lo, dtype=torch.float64).flatten()
        hi = torch.as_tensor(hi, dtype=torch.float64).flatten()
        lo = lo.expand(d).clone() if lo.numel() == 1 else lo
        hi = hi.expand(d).clone() if hi.numel() == 1 else hi
    if lo.numel() != d or hi.numel() != d:
        raise InputValidationError(f"The domain box has {lo.numel()} dimensions; the head takes {d} features.")
    if bool((lo > hi).any()) or not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise InputValidationError("The domain box must be finite with lower ≤ upper everywhere.")
    return lo, hi


def region_constraints(patched: PatchedModel, r: int):
    """Region r's certified polytope ``{h : s_i z_i(h) ≥ θ_r}`` as ``A h ≤ b``, float64.

    Row i is ``−s_i a_i·h ≤ s_i c_i − θ_r`` where ``z_i = a_i·h + c_i`` on the region
    (:func:`prune_unlearn.regions.region_halfspaces`). The domain box is not included.
    """
    from .export import LinearConstraints, check_region_claim

    r = check_region_claim(patched, r)
    head = HeadNetwork.from_split(patched.split)
    mask = patched.patches.masks()[r: r + 1]
    a, c = region_halfspaces(head, mask)
    s = mask[0].to(torch.float64) * 2 - 1
    theta = float(patched.patches.region_threshold[r])
    return LinearConstraints(-(s.unsqueeze(1) * a[0]), s * c[0] - theta)


def write_vnnlib(patched: PatchedModel, r: int, path, *, domain=None, constraints: str = "output",
                 onnx_name: str | None = None, head_only: bool = False) -> Path:
    """Write region r's claim as a VNN-LIB property (its negation; UNSAT proves the claim).

    ``constraints="output"`` pairs with ``export_onnx(..., regions=[r], with_region_constraints=r)``
    and asserts ``Y_{C+i} ≥ θ_r``; ``"input"`` pairs with ``export_onnx(..., regions=[r])`` and writes
    ``A X ≤ b`` from :func:`region_constraints`. ``domain`` as in :func:`domain_box`. ``onnx_name``
    is only recorded in the header comment.
    """
    from .export import check_patched, check_region_claim

    check_patched(patched, head_only)
    r = check_region_claim(patched, r)
    if constraints not in CONSTRAINT_MODES:
        raise InputValidationError(f"constraints must be one of {', '.join(CONSTRAINT_MODES)}; got {constraints!r}.")
    lo, hi = domain_box(patched, domain)
    ps = patched.patches
    d, n, c = patched.split.feature_dim, ps.num_hidden, ps.num_classes
    t = int(ps.targets[r])
    theta = float(ps.region_threshold[r])
    n_out = c + (n if constraints == "output" else 0)
    pair = onnx_name or ("the model from export_onnx(patched, path, regions=[r]"
                         + (", with_region_constraints=r)" if constraints == "output" else ")"))
    lines = [
        f"; VNN-LIB property written by prune-unlearn {__version__}",
        f"; Region {r}: label {t} wins on {{h in B : s_i z_i(h) >= theta for every hidden neuron i}},",
        f"; theta = {vnnlib_number(theta)}, certified margin {float(ps.certified_margin[r]):.6g}.",
        "; This file states the counterexample: UNSAT proves the claim.",
        f"; Network: {pair}",
        f"; X: {d} head features. Y_0..Y_{c - 1}: logits"
        + (f"; Y_{c}..Y_{n_out - 1}: slacks s_i z_i(h) of region {r}." if constraints == "output" else "."),
        "",
    ]
    lines += [f"(declare-const X_{i} Real)" for i in range(d)]
    lines.append("")
    lines += [f"(declare-const Y_{j} Real)" for j in range(n_out)]
    lines += ["", "; domain box B"]
    for i in range(d):
        lines.append(f"(assert (<= X_{i} {vnnlib_number(hi[i])}))")
        lines.append(f"(assert (>= X_{i} {vnnlib_number(lo[i])}))")
    lines += ["", f"; region {r}: every hidden slack at least theta"]
    if constraints == "output":
        lines += [f"(assert (>= Y_{c + i} {vnnlib_number(theta)}))" for i in range(n)]
    else:
        a, b = region_constraints(patched, r)
        for row, rhs in zip(a.tolist(), b.tolist()):
            terms = [f"(* {vnnlib_number(v)} X_{i})" for i, v in enumerate(row) if v != 0.0]
            lhs = "0.0" if not terms else terms[0] if len(terms) == 1 else f"(+ {' '.join(terms)})"
            lines.append(f"(assert (<= {lhs} {vnnlib_number(rhs)}))")
    return write_property(path, lines, t, c)


def write_property(path, lines: list[str], target: int, num_classes: int) -> Path:
    """Close a property with its unsafe set (some label other than ``target`` scores at least as high as it)
    and write it atomically."""
    from ..core.serialization import atomic_write_text

    t = target
    lines = [*lines, "", f"; unsafe: some label other than {t} scores at least as high", "(assert (or"]
    lines += [f"    (and (>= Y_{j} Y_{t}))" for j in range(num_classes) if j != t]
    lines += ["))", ""]
    path = Path(path)
    atomic_write_text(path, "\n".join(lines))
    return path
