"""Verifier-ready export: the patched head as ONNX in a normal form, plus VNN-LIB region properties.

Neural-network verifiers (Marabou, α,β-CROWN, nnenum, …) read ONNX but each accepts a different
subset of operators. The one subset they all share is affine layers and ReLU, so the patched head
is rewritten with nothing else: ``Gemm``/``MatMul``, ``Add``, ``Mul`` by a constant, ``Relu`` (and
``Constant`` for scalars). The support network of region ``r``

    n_r(h) = ReLU( Σ_i clamp(λ_r s_i z_i(h), 0, 1) − N + 1 )

is written as ``n_r = ReLU(1 − Σ_i w_i)`` with ``w_i = ReLU(1 − ReLU(λ_r s_i z_i)) = 1 − clamp(…)``:
the same function (``Σ clamp = N − Σ w``), with the sum over neurons as a ``MatMul`` by a column of
−1. It is also the better float32 formula: on the region every ``w_i`` is exactly 0, where the
literal form adds up N values close to 1. Every region is its own small branch (a constant row
``λ_r s_r`` per hidden layer, and ``d_r``), never an (R·N × N) tiling matrix.

**Input space.** The ONNX input ``X`` is the head's feature vector ``h`` (shape (batch, d)). For a
model whose prefix only flattens, that is the flattened input. For any other prefix only the head
is exported (``head_only=True``), and the certificate's domain box is already in that space.

**One region at a time.** On region r's certified region every other support is exactly 0 (its
pattern differs from r's in a neuron whose slack is then ≤ 0), so ``regions=[r]`` computes the same
function there as the full model, with a fraction of the ReLUs. Property files pair with such a
per-region model.

**Property files.** ``write_vnnlib`` states "some label l ≠ t has Y_l ≥ Y_t" on
``polytope ∩ box`` (VNN-LIB files state the counterexample: UNSAT proves the claim). Many tools
accept only bounds on X, so by default the polytope is given as bounds on extra outputs: the
companion model (``with_region_constraints=r``) outputs ``Y = [logits, s_1 z_1(h), …, s_N z_N(h)]``
and the file asserts ``Y_{C+i} ≥ θ_r``. These are the network's own pre-activations, so the set is
exactly the certificate's ``{h ∈ B : s_i z_i(h) ≥ θ_r}``. ``constraints="input"`` writes the same
polytope as general linear constraints on X instead (``region_constraints``), for tools that accept
them; it pairs with the model without extra outputs.
"""

from __future__ import annotations

import math
import operator
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .._version import __version__
from .certificate import Certificate, box_from_description, certified_patches_sha256
from ..core.domain import _is_reshape_only
from ..errors import CertificateError, InputValidationError, PruneError, UnsupportedModelError
from ..core.patches import BOUND_CODES, PatchedModel
from ..core.regions import HeadNetwork, region_halfspaces

__all__ = [
    "ALLOWED_OPS",
    "DEFAULT_OPSET",
    "ExportError",
    "LinearConstraints",
    "OnnxExport",
    "VerifierNormalForm",
    "verifier_normal_form",
    "region_constraints",
    "export_onnx",
    "write_vnnlib",
    "domain_box",
    "export_benchmark",
]

# Operator set of the normal form. Constant carries the scalars (1, −1) of the gates.
ALLOWED_OPS = frozenset({"Gemm", "MatMul", "Add", "Mul", "Relu", "Constant"})
# Opset 13: old enough for the onnxruntime builds bundled with verifiers; the ops above have had
# the same semantics since opset 7.
DEFAULT_OPSET = 13
SCALINGS = ("mul", "matmul")
CONSTRAINT_MODES = ("output", "input")


class ExportError(PruneError, RuntimeError):
    """The exporter produced a graph outside the verifier normal form."""


class LinearConstraints(NamedTuple):
    """The polytope ``{h : A h ≤ b}`` (float64)."""

    A: torch.Tensor
    b: torch.Tensor


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote."""

    path: Path
    op_types: tuple[str, ...]
    regions: tuple[int, ...]
    input_dim: int
    output_dim: int
    num_classes: int
    region_constraints: int | None


# --- validation ---------------------------------------------------------------------------------

def _check_patched(patched, head_only: bool) -> PatchedModel:
    if not isinstance(patched, PatchedModel):
        raise InputValidationError(
            f"Export needs a PatchedModel (the model returned by forget, or a file saved from it); got "
            f"{type(patched).__name__}.")
    if patched.class_patches is not None and len(patched.class_patches):
        raise UnsupportedModelError(
            "This model carries whole-class patches (relaxed supports), which the verifier normal form does not "
            "express yet; only point patches are exported.")
    if not head_only and not _is_reshape_only(patched.split.prefix):
        raise UnsupportedModelError(
            "The model's prefix before the Linear/ReLU head does more than flatten, and only the head can be "
            "written in verifier normal form. HINT: pass head_only=True (CLI: --head-only); the ONNX input is "
            "then the head's feature vector M_p(x), the space of the certificate's domain box.")
    return patched


def _check_regions(patched: PatchedModel, regions) -> list[int]:
    n = len(patched.patches)
    if regions is None:
        return list(range(n))
    out = []
    for r in regions:
        try:
            if isinstance(r, bool):
                raise TypeError
            r = operator.index(r)
        except TypeError:
            raise InputValidationError(f"Region indices must be integers; got {r!r}.") from None
        if not 0 <= r < n:
            raise InputValidationError(_out_of_range(r, n))
        if r in out:
            raise InputValidationError(f"Region {r} is listed twice.")
        out.append(r)
    return out


def _out_of_range(r: int, n: int) -> str:
    span = f"0–{n - 1}" if n else "none"
    return f"Region {r} is out of range: the model has {n} patched region(s) ({span})."


def _check_region_claim(patched: PatchedModel, r) -> int:
    (r,) = _check_regions(patched, [r])
    if int(patched.patches.bound_code[r]) == BOUND_CODES["point"] or not math.isfinite(
            float(patched.patches.region_threshold[r])):
        raise InputValidationError(
            f"Region {r} carries a point claim only (cluster-strategy member): nothing is claimed on its "
            "linear region, so there is no region property to write.")
    return r


# --- the normal form ------------------------------------------------------------------------------

class VerifierNormalForm(nn.Module):
    """The patched head ``h ↦ logits + Σ_r n_r(h) d_r`` with only affine maps, constant Mul and ReLU.

    All constants are float32 buffers (exported as initializers). Outside the gate band (where some
    slack of region r lies strictly between 0 and 1/λ_r) the output equals ``PatchedModel`` bit
    for bit in torch: supports are exactly 0 or 1 and the base logits are the same ``F.linear``.
    """

    def __init__(self, patched: PatchedModel, regions: Sequence[int] | None = None, *,
                 with_region_constraints: int | None = None, scaling: str = "mul", head_only: bool = False):
        super().__init__()
        patched = _check_patched(patched, head_only)
        if scaling not in SCALINGS:
            raise InputValidationError(f"scaling must be one of {', '.join(SCALINGS)}; got {scaling!r}.")
        self.regions = _check_regions(patched, regions)
        self.scaling = scaling
        ps = patched.patches
        linears = patched.split.linears
        self.hidden_sizes = [lin.out_features for lin in linears[:-1]]
        self.num_hidden = sum(self.hidden_sizes)
        self.num_classes = linears[-1].out_features
        self.input_dim = linears[0].in_features
        self.n_layers = len(linears)

        # Equal constants share one buffer: the exporter would otherwise merge equal initializers
        # and insert Identity nodes (equal rows are common, e.g. cluster members share d_r).
        self._alias: dict[str, str] = {}
        seen: dict[tuple, str] = {}

        def const(name, t):
            t = t.detach().to("cpu", torch.float32).contiguous().clone()
            key = (tuple(t.shape), t.numpy().tobytes())
            if key not in seen:
                seen[key] = name
                self.register_buffer(name, t)
            self._alias[name] = seen[key]

        for k, lin in enumerate(linears):
            const(f"weight{k}", lin.weight)
            const(f"bias{k}", lin.bias if lin.bias is not None else torch.zeros(lin.out_features))
        masks = ps.masks()
        signs = masks.to(torch.float32) * 2 - 1
        lam = ps.gate_lambda.detach().cpu().to(torch.float32)
        for k, n in enumerate(self.hidden_sizes):
            const(f"neg_ones{k}", -torch.ones(n, 1))
        for j, r in enumerate(self.regions):
            for k, block in enumerate(self._blocks(signs[r])):
                scale = block * lam[r]  # ±λ_r, exact in float32
                const(f"scale{j}_{k}", torch.diag(scale) if scaling == "matmul" else scale.unsqueeze(0))
            const(f"patch{j}", ps.values[r].unsqueeze(0))
        self.constraint_region = None
        if with_region_constraints is not None:
            (rc,) = _check_regions(patched, [with_region_constraints])
            self.constraint_region = rc
            width = self.num_classes + self.num_hidden
            # Placement matrices write logits and signed slacks into one output; entries are 0 or ±1,
            # so every output value is one exact product plus exact zeros.
            const("place_logits", torch.eye(self.num_classes, width))
            offset = self.num_classes
            for k, block in enumerate(self._blocks(signs[rc])):
                place = torch.zeros(block.numel(), width)
                place[torch.arange(block.numel()), offset + torch.arange(block.numel())] = block
                const(f"place_slack{k}", place)
                offset += block.numel()

    def _c(self, name: str) -> torch.Tensor:
        return getattr(self, self._alias[name])

    def _blocks(self, t: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.split(t, self.hidden_sizes)) if self.hidden_sizes else []

    @property
    def output_dim(self) -> int:
        return self.num_classes + (self.num_hidden if self.constraint_region is not None else 0)

    def _head(self, h: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        zs, a = [], h
        for k in range(self.n_layers - 1):
            z = F.linear(a, self._c(f"weight{k}"), self._c(f"bias{k}"))
            zs.append(z)
            a = torch.relu(z)
        k = self.n_layers - 1
        return zs, F.linear(a, self._c(f"weight{k}"), self._c(f"bias{k}"))

    def _support(self, j: int, zs: list[torch.Tensor]) -> torch.Tensor | None:
        """``n_r`` of the j-th exported region as a (batch, 1) column; None for the constant 1."""
        if not zs:  # no hidden layer: one region, the whole space
            return None
        acc = None
        for k, z in enumerate(zs):
            scale = self._c(f"scale{j}_{k}")
            v = z @ scale if self.scaling == "matmul" else z * scale
            w = torch.relu(torch.relu(v) * -1.0 + 1.0)  # 1 − clamp(v, 0, 1)
            part = w @ self._c(f"neg_ones{k}")  # −Σ_i w_i
            acc = part if acc is None else acc + part
        return torch.relu(acc + 1.0)

    def supports(self, h: torch.Tensor) -> torch.Tensor:
        """(batch, len(regions)) support values, computed by the exported operations."""
        zs, logits = self._head(h)
        ones = logits.new_ones(logits.shape[0], 1)
        cols = [self._support(j, zs) for j in range(len(self.regions))]
        cols = [ones if col is None else col for col in cols]
        return torch.cat(cols, dim=1) if cols else logits.new_zeros(logits.shape[0], 0)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        zs, y = self._head(h)
        for j in range(len(self.regions)):
            n = self._support(j, zs)
            y = y + (self._c(f"patch{j}") if n is None else n @ self._c(f"patch{j}"))
        if self.constraint_region is None:
            return y
        out = y @ self._c("place_logits")
        for k, z in enumerate(zs):
            out = out + z @ self._c(f"place_slack{k}")
        return out

    def extra_repr(self) -> str:
        return (f"regions={len(self.regions)}, hidden={self.hidden_sizes}, classes={self.num_classes}, "
                f"scaling={self.scaling!r}, constraint_region={self.constraint_region}")


def verifier_normal_form(patched: PatchedModel, regions: Sequence[int] | None = None, *,
                         with_region_constraints: int | None = None, scaling: str = "mul",
                         head_only: bool = False) -> VerifierNormalForm:
    """The patched head as a :class:`VerifierNormalForm` module (eval mode, CPU, float32).

    ``regions`` selects patch rows (default all; ``[]`` gives the base head). With
    ``with_region_constraints=r`` the output is ``[logits, s_i z_i(h) for every hidden i]`` with
    region r's signs. ``scaling="matmul"`` multiplies by ``diag(λ_r s_r)`` instead of a broadcast
    row, for tools whose Mul takes only scalars (Marabou 2.0); it stores N_ℓ² numbers per region and
    layer, so use it with a few regions.
    """
    return VerifierNormalForm(patched, regions, with_region_constraints=with_region_constraints,
                              scaling=scaling, head_only=head_only).eval()


def region_constraints(patched: PatchedModel, r: int) -> LinearConstraints:
    """Region r's certified polytope ``{h : s_i z_i(h) ≥ θ_r}`` as ``A h ≤ b``, float64.

    Row i is ``−s_i a_i·h ≤ s_i c_i − θ_r`` where ``z_i = a_i·h + c_i`` on the region
    (:func:`prune_unlearn.regions.region_halfspaces`). The domain box is not included.
    """
    r = _check_region_claim(patched, r)
    head = HeadNetwork.from_split(patched.split)
    mask = patched.patches.masks()[r: r + 1]
    a, c = region_halfspaces(head, mask)
    s = mask[0].to(torch.float64) * 2 - 1
    theta = float(patched.patches.region_threshold[r])
    return LinearConstraints(-(s.unsqueeze(1) * a[0]), s * c[0] - theta)


# --- ONNX -------------------------------------------------------------------------------------------

def export_onnx(patched: PatchedModel, path, *, regions: Sequence[int] | None = None,
                with_region_constraints: int | None = None, opset: int = DEFAULT_OPSET, scaling: str = "mul",
                dynamic_batch: bool = True, head_only: bool = False) -> OnnxExport:
    """Write :func:`verifier_normal_form` as ONNX (input ``X`` (batch, d), output ``Y``) and check its ops.

    Uses the TorchScript-based exporter (``dynamo=False``): it needs nothing beyond ``onnx`` and
    maps ``F.linear``/``@``/``*``/``+``/``relu`` one-to-one onto Gemm/MatMul/Mul/Add/Relu. Raises
    :class:`ExportError` if any other operator appears. ``dynamic_batch=False`` fixes the batch to 1
    (some verifiers, Marabou among them, need static shapes).
    """
    try:
        import onnx
    except ImportError:
        raise ExportError("ONNX export needs the onnx package. HINT: pip install 'prune-unlearn[export]'.") from None

    module = verifier_normal_form(patched, regions, with_region_constraints=with_region_constraints,
                                  scaling=scaling, head_only=head_only)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(2 if dynamic_batch else 1, module.input_dim)
    axes = {"X": {0: "batch"}, "Y": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated in favour of dynamo
        torch.onnx.export(module, (dummy,), str(path), dynamo=False, input_names=["X"], output_names=["Y"],
                          dynamic_axes=axes, opset_version=int(opset), do_constant_folding=True)
    model = onnx.load(str(path))
    ops = tuple(sorted({node.op_type for node in model.graph.node}))
    bad = sorted(set(ops) - ALLOWED_OPS)
    if bad:
        path.unlink(missing_ok=True)
        raise ExportError(f"The ONNX exporter emitted operator(s) {', '.join(bad)} outside the verifier normal "
                          f"form ({', '.join(sorted(ALLOWED_OPS))}); nothing was written.")
    onnx.checker.check_model(model)
    meta = {
        "prune_unlearn.version": __version__,
        "prune_unlearn.input": "head features h (for a flatten-only prefix: the flattened input)",
        "prune_unlearn.regions": ",".join(map(str, module.regions)),
        "prune_unlearn.output": (f"Y[0:{module.num_classes}] logits" + (
            f"; Y[{module.num_classes}:{module.output_dim}] slacks s_i z_i(h) of region "
            f"{module.constraint_region}" if module.constraint_region is not None else "")),
    }
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    model.doc_string = "Patched head in verifier normal form, written by prune-unlearn."
    onnx.save(model, str(path))
    return OnnxExport(path, ops, tuple(module.regions), module.input_dim, module.output_dim, module.num_classes,
                      module.constraint_region)


# --- VNN-LIB ------------------------------------------------------------------------------------------

def _num(x: float) -> str:
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
        if not _is_reshape_only(patched.split.prefix):
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


def write_vnnlib(patched: PatchedModel, r: int, path, *, domain=None, constraints: str = "output",
                 onnx_name: str | None = None, head_only: bool = False) -> Path:
    """Write region r's claim as a VNN-LIB property (its negation; UNSAT proves the claim).

    ``constraints="output"`` pairs with ``export_onnx(..., regions=[r], with_region_constraints=r)``
    and asserts ``Y_{C+i} ≥ θ_r``; ``"input"`` pairs with ``export_onnx(..., regions=[r])`` and writes
    ``A X ≤ b`` from :func:`region_constraints`. ``domain`` as in :func:`domain_box`. ``onnx_name``
    is only recorded in the header comment.
    """
    _check_patched(patched, head_only)
    r = _check_region_claim(patched, r)
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
        f"; theta = {_num(theta)}, certified margin {float(ps.certified_margin[r]):.6g}.",
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
        lines.append(f"(assert (<= X_{i} {_num(hi[i])}))")
        lines.append(f"(assert (>= X_{i} {_num(lo[i])}))")
    lines += ["", f"; region {r}: every hidden slack at least theta"]
    if constraints == "output":
        lines += [f"(assert (>= Y_{c + i} {_num(theta)}))" for i in range(n)]
    else:
        a, b = region_constraints(patched, r)
        for row, rhs in zip(a.tolist(), b.tolist()):
            terms = [f"(* {_num(v)} X_{i})" for i, v in enumerate(row) if v != 0.0]
            lhs = "0.0" if not terms else terms[0] if len(terms) == 1 else f"(+ {' '.join(terms)})"
            lines.append(f"(assert (<= {lhs} {_num(rhs)}))")
    lines += ["", f"; unsafe: some label other than {t} scores at least as high", "(assert (or"]
    lines += [f"    (and (>= Y_{j} Y_{t}))" for j in range(c) if j != t]
    lines += ["))", ""]
    from ..core.serialization import atomic_write_text

    path = Path(path)
    atomic_write_text(path, "\n".join(lines))
    return path


def export_benchmark(patched: PatchedModel, out, *, onnx: bool = True, vnnlib: bool = True,
                     regions: Sequence[int] | None = None, domain=None, constraints: str = "output",
                     scaling: str = "mul", head_only: bool = False, opset: int = DEFAULT_OPSET,
                     timeout: int = 300, info: dict | None = None) -> dict:
    """Write a VNN-COMP style benchmark folder for ``patched``; returns what was written (also in ``export.json``).

    ``onnx``: ``patched.onnx``, the whole patched head. ``vnnlib``: for each region in ``regions`` (default: every
    region claim) ``region_<r>.vnnlib`` and the network it pairs with, ``region_<r>.onnx``, plus ``instances.csv``
    (``onnx,vnnlib,timeout`` rows). ``domain`` as in :func:`domain_box`; the other keywords as in
    :func:`export_onnx` and :func:`write_vnnlib`; ``info``: entries that lead ``export.json`` (e.g. the model file).
    Everything is checked before the first file is written.
    """
    import json

    from ..core.serialization import atomic_write_text

    out = Path(out)
    _check_patched(patched, head_only)
    ps = patched.patches
    point_claims = [r for r in range(len(ps)) if int(ps.bound_code[r]) == BOUND_CODES["point"]]
    if regions and not vnnlib:
        raise InputValidationError("regions selects property files; use it with vnnlib=True (CLI: --vnnlib).")
    if vnnlib:
        chosen = ([_check_region_claim(patched, r) for r in _check_regions(patched, regions)] if regions
                  else [r for r in range(len(ps)) if r not in point_claims])
        domain_box(patched, domain)  # refuse a bad box before writing anything
    result = {**(info or {}), "out": str(out), "opset": opset, "constraints": constraints, "scaling": scaling,
              "input": "head features (for a flatten-only prefix: the flattened input)"}
    if onnx:
        whole = export_onnx(patched, out / "patched.onnx", opset=opset, scaling=scaling, head_only=head_only)
        result["onnx"] = {"path": str(whole.path), "regions": len(whole.regions), "op_types": list(whole.op_types),
                          "inputs": whole.input_dim, "outputs": whole.output_dim}
    if vnnlib:
        items, rows = [], []
        for r in chosen:
            net, prop = out / f"region_{r}.onnx", out / f"region_{r}.vnnlib"
            one = export_onnx(patched, net, regions=[r], opset=opset, scaling=scaling, head_only=head_only,
                              with_region_constraints=r if constraints == "output" else None)
            write_vnnlib(patched, r, prop, domain=domain, constraints=constraints, onnx_name=net.name,
                         head_only=head_only)
            items.append({"region": r, "onnx": str(net), "vnnlib": str(prop), "target": int(ps.targets[r]),
                          "threshold": float(ps.region_threshold[r]), "outputs": one.output_dim,
                          "op_types": list(one.op_types)})
            rows.append(f"{net.name},{prop.name},{timeout}")
        atomic_write_text(out / "instances.csv", "\n".join(rows) + ("\n" if rows else ""))
        result["properties"] = items
        result["skipped_point_claims"] = [] if regions else point_claims
    atomic_write_text(out / "export.json", json.dumps(result, indent=1) + "\n")
    return result
