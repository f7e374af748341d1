"""Region properties a complete verifier proves fast: one network for all regions, one VNN-LIB file each.

On region r's certified set ``S_r = {h ∈ B : s_i z_i(h) ≥ θ_r for every hidden i}`` the activation
pattern is fixed, so the patched head is affine there: every support but r's is 0 (its pattern
differs in a neuron whose slack is then ≤ 0), r's is exactly 1 (every slack ≥ θ_r = 2/λ_r > 1/λ_r),
and the patched logits are the base logits plus the constant patch ``d_r``. So the claim "target t
wins by more than nothing on S_r" is a statement about the **base head** alone:

    no h ∈ B with s_i z_i(h) ≥ θ_r for all i and (f_l − f_t)(h) ≥ d_t − d_l − O_tl for some l ≠ t,

where ``O_tl`` is the most whole-class patches can add to ``f_l − f_t`` (0 without them). The network
(:func:`region_network`, written once) is the base head with its hidden pre-activations as extra
outputs, ``Y = [f_1 … f_C, z_1 … z_N]`` (``Gemm``, ``Relu``, one ``Concat``); the property fixes
every ReLU's phase through bounds on those outputs (``Y_{C+i} ≥ θ`` for active neurons,
``≤ −θ`` for inactive ones), which leaves the verifier an LP. Every constant is written as a short
decimal rounded so that the written set contains the certified one (θ down, the box outwards, the
label gap down): UNSAT for the file implies the certified claim.
"""

from __future__ import annotations

import gzip
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .._version import __version__

__all__ = ["RegionNetwork", "region_network", "region_property_text", "not_predicted_text", "write_region_property",
           "class_offsets"]


class RegionNetwork(nn.Module):
    """The base head with its hidden pre-activations as outputs: ``Y = [logits, z_1 … z_N]`` (float32)."""

    def __init__(self, linears):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(lin.in_features, lin.out_features) for lin in linears)
        with torch.no_grad():
            for new, old in zip(self.layers, linears):
                new.weight.copy_(old.weight.detach().cpu().float())
                new.bias.copy_(old.bias.detach().cpu().float() if old.bias is not None else 0.0)

    @property
    def input_dim(self) -> int:
        return self.layers[0].in_features

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        zs, a = [], h
        for lin in self.layers[:-1]:
            z = lin(a)
            zs.append(z)
            a = torch.relu(z)
        return torch.cat([self.layers[-1](a), *zs], dim=1)


def region_network(patched) -> RegionNetwork:
    """:class:`RegionNetwork` of a patched model's base head (eval mode, CPU)."""
    return RegionNetwork(patched.split.linears).eval()


def class_offsets(patched) -> np.ndarray | None:
    """``O[t, l] = Σ_g max(0, d_g[l] − d_g[t])`` as exact fractions (C, C), or None without class patches."""
    if not patched.has_class_patches:
        return None
    d = [[Fraction(float(v)) for v in row] for row in patched.class_patches.values.detach().cpu().tolist()]
    c = patched.class_patches.num_classes
    out = np.empty((c, c), dtype=object)
    for t in range(c):
        for lab in range(c):
            out[t, lab] = sum((max(Fraction(0), g[lab] - g[t]) for g in d), Fraction(0))
    return out


def _num(x: float, direction: str) -> str:
    """A short decimal ``≤ x`` (``direction="down"``) or ``≥ x`` ("up"), exactly as a verifier reads it."""
    x = float(x)
    if not np.isfinite(x):
        raise ValueError(f"cannot write the non-finite number {x} into a VNN-LIB file")
    exact = Fraction(x)
    for _ in range(4):
        text = np.format_float_positional(x, unique=True, trim="0")
        if text.endswith("."):
            text += "0"
        value = Fraction(text)
        if (direction == "down" and value <= exact) or (direction == "up" and value >= exact):
            return text
        x = float(np.nextafter(x, -np.inf if direction == "down" else np.inf))
    raise AssertionError("no conservative decimal found")  # pragma: no cover - nextafter always gets there


def _float_down(q: Fraction) -> float:
    f = float(q)
    return float(np.nextafter(f, -np.inf)) if Fraction(f) > q else f


def _region_lines(patched, r: int, lower, upper, network_name: str, what: str) -> list[str]:
    """Header, declarations, the box (outwards) and region r's pattern as output bounds (θ down)."""
    ps = patched.patches
    d, n, c = patched.split.feature_dim, ps.num_hidden, ps.num_classes
    theta = float(ps.region_threshold[r])
    lo, hi = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
    lines = [
        f"; VNN-LIB property written by prune-unlearn {__version__}: region {r}, target label {int(ps.targets[r])}"
        f"{what}.",
        f"; Network {network_name}: X_0..X_{d - 1} head features; Y_0..Y_{c - 1} base logits; "
        f"Y_{c}..Y_{c + n - 1} hidden pre-activations z_i.",
        f"; On the certified set (box, s_i z_i >= theta = {_num(theta, 'down')}) the patched logits are Y + d_r; "
        "this file states a counterexample: UNSAT proves the claim.",
    ]
    lines += [f"(declare-const X_{i} Real)" for i in range(d)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(c + n)]
    for i in range(d):
        lines.append(f"(assert (>= X_{i} {_num(lo[i], 'down')}))")
        lines.append(f"(assert (<= X_{i} {_num(hi[i], 'up')}))")
    up, down = _num(theta, "down"), "-" + _num(theta, "down")
    for i, on in enumerate(ps.masks()[r].tolist()):
        lines.append(f"(assert (>= Y_{c + i} {up}))" if on else f"(assert (<= Y_{c + i} {down}))")
    return lines


def _gap(values, a: int, b: int, offsets) -> str:
    """``d_a − d_b − O[a, b]`` (exact) as a decimal rounded down: the least ``Y_b − Y_a`` may be for ``b`` to
    reach ``a`` in the patched head on the region (whole-class patches add at most ``O[a, b]`` to it)."""
    gap = Fraction(values[a]) - Fraction(values[b]) - (Fraction(offsets[a, b]) if offsets is not None else 0)
    return _num(_float_down(gap), "down")


def region_property_text(patched, r: int, lower, upper, *, network_name: str, offsets=None) -> str:
    """The VNN-LIB text of region r's claim over :func:`region_network` (UNSAT proves the claim)."""
    ps = patched.patches
    t, c = int(ps.targets[r]), ps.num_classes
    values = ps.values[r].detach().cpu().numpy().astype(np.float64)
    lines = _region_lines(patched, r, lower, upper, network_name, "")
    unsafe = [f"    (and (>= (- Y_{lab} Y_{t}) {_gap(values, t, lab, offsets)}))" for lab in range(c) if lab != t]
    lines += ["(assert (or", *unsafe, "))", ""]
    return "\n".join(lines)


def not_predicted_text(patched, r: int, label: int, lower, upper, *, network_name: str, offsets=None) -> str:
    """The VNN-LIB text of "``label`` is not predicted anywhere on region r's certified set" (UNSAT proves it).

    The paper's claim about a forgotten point's label, weaker than the certificate's (the target wins by its
    margin over every label): the counterexample is one conjunction, ``label`` scores at least as high as every
    other label in the patched head (ties count against the claim),
    ``Y_label − Y_o ≥ d_o − d_label − O[o, label]`` for every ``o ≠ label``, the right-hand sides rounded down. One query instead of one per label: Marabou
    proves it much faster (docs/benchmarks.md).
    """
    ps = patched.patches
    t, c = int(ps.targets[r]), ps.num_classes
    if not 0 <= label < c or label == t:
        raise ValueError(f"label must be a class other than region {r}'s target {t}; got {label}")
    values = ps.values[r].detach().cpu().numpy().astype(np.float64)
    lines = _region_lines(patched, r, lower, upper, network_name, f"; claim: label {label} is not predicted")
    lines += [f"(assert (>= (- Y_{label} Y_{o}) {_gap(values, o, label, offsets)}))" for o in range(c) if o != label]
    return "\n".join([*lines, ""])


def write_region_property(patched, r: int, path, lower, upper, *, network_name: str, offsets=None,
                          compress: bool = False, not_predicted: int | None = None) -> Path:
    """Write :func:`region_property_text` (or, with ``not_predicted=label``, :func:`not_predicted_text`) to
    ``path`` (gzip-compressed when ``compress``)."""
    from ..core.serialization import atomic_write_text

    if not_predicted is None:
        text = region_property_text(patched, r, lower, upper, network_name=network_name, offsets=offsets)
    else:
        text = not_predicted_text(patched, r, not_predicted, lower, upper, network_name=network_name, offsets=offsets)
    path = Path(path)
    if compress:
        _write_bytes_atomic(path, gzip.compress(text.encode(), mtime=0))
    else:
        atomic_write_text(path, text)
    return path


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
