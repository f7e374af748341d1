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

import torch
from torch import nn
from torch.nn import functional as F

from .._version import __version__
from ..core.domain import is_reshape_only
from ..errors import ExportError, InputValidationError, UnsupportedModelError
from ..core.patches import BOUND_CODES, PatchedModel
from .class_export import ClassPatchBranch

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
    normal_form: bool = True  # False: gated class patches need one product of two tensors (a bilinear Mul)


# --- validation ---------------------------------------------------------------------------------

def check_patched(patched, head_only: bool, allow_class_patches: bool = False) -> PatchedModel:
    if not isinstance(patched, PatchedModel):
        raise InputValidationError(
            f"Export needs a PatchedModel (the model returned by forget, or a file saved from it); got "
            f"{type(patched).__name__}.")
    if patched.has_class_patches and not allow_class_patches:
        raise UnsupportedModelError(
            "This model carries whole-class patches (relaxed supports). They are exported with the whole model "
            "(export_onnx without regions or region constraints), but a per-region network would leave them out. "
            "HINT: use prune export (one region network for every property), which accounts for them.")
    if not head_only and not is_reshape_only(patched.split.prefix):
        raise UnsupportedModelError(
            "The model's prefix before the Linear/ReLU head does more than flatten, and only the head can be "
            "written in verifier normal form. HINT: pass head_only=True (CLI: --head-only); the ONNX input is "
            "then the head's feature vector M_p(x), the space of the certificate's domain box.")
    return patched


def check_regions(patched: PatchedModel, regions) -> list[int]:
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


def check_region_claim(patched: PatchedModel, r) -> int:
    (r,) = check_regions(patched, [r])
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
        patched = check_patched(patched, head_only,
                                allow_class_patches=regions is None and with_region_constraints is None)
        if scaling not in SCALINGS:
            raise InputValidationError(f"scaling must be one of {', '.join(SCALINGS)}; got {scaling!r}.")
        self.regions = check_regions(patched, regions)
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
        self.class_branch = ClassPatchBranch(patched.class_patches, self.hidden_sizes) \
            if patched.has_class_patches else None
        self.constraint_region = None
        if with_region_constraints is not None:
            (rc,) = check_regions(patched, [with_region_constraints])
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

    @property
    def normal_form(self) -> bool:
        """Whether only affine maps, constant products and ReLU are used (not so for gated class patches)."""
        return self.class_branch is None or not self.class_branch.gated

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        zs, y = self._head(h)
        base = y
        for j in range(len(self.regions)):
            n = self._support(j, zs)
            y = y + (self._c(f"patch{j}") if n is None else n @ self._c(f"patch{j}"))
        if self.class_branch is not None:
            y = y + self.class_branch(zs, base)
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


# --- ONNX -------------------------------------------------------------------------------------------

def drop_identities(graph) -> None:
    """Remove ``Identity`` nodes, reading their input wherever their output was read.

    The TorchScript exporter's constant deduplication inserts them when two buffers hold equal values
    (e.g. a class patch's scale and a base bias); they are no-ops, but outside the operator set.
    """
    outputs = {o.name for o in graph.output}
    for node in [n for n in graph.node if n.op_type == "Identity" and n.output[0] not in outputs]:
        src, dst = node.input[0], node.output[0]
        for other in graph.node:
            for i, name in enumerate(other.input):
                if name == dst:
                    other.input[i] = src
        graph.node.remove(node)


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

    if getattr(patched, "has_neighbourhoods", False):
        raise InputValidationError(
            "The model carries neighbourhood rows, which this network would leave out. HINT: export them with "
            "prune_unlearn.verify.export_neighbourhood.export_neighbourhoods (what `prune export` does).")
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
    drop_identities(model.graph)
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
                      module.constraint_region, module.normal_form)


# The per-region VNN-LIB writer (older form: a network per region) lives in .vnnlib; re-exported here.
from .vnnlib import domain_box, region_constraints, write_vnnlib  # noqa: E402

# former private names, kept for callers written against them
_check_patched, _check_regions, _check_region_claim = check_patched, check_regions, check_region_claim


def export_benchmark(patched: PatchedModel, out, *, onnx: bool = True, vnnlib: bool = True,
                     regions: Sequence[int] | None = None, domain=None, scaling: str = "mul", head_only: bool = False,
                     opset: int = DEFAULT_OPSET, timeout: int = 300, info: dict | None = None,
                     compress: bool = False, certificate_path=None, model_path=None,
                     not_predicted: bool = False) -> dict:
    """The VNN-COMP style folder ``prune export`` writes: :func:`prune_unlearn.verify.bundle.export_bundle`.

    ``domain``: the forget run's :class:`~prune_unlearn.verify.certificate.Certificate` (the model is checked
    against it before anything is written) or ``None`` (forget's default box, flatten-only prefix);
    ``info``: entries that lead ``export.json``; ``certificate_path``, ``model_path``: the files given, whose
    SHA-256 ``export.json`` records.
    """
    from .bundle import export_bundle
    from .certificate import Certificate

    if domain is not None and not isinstance(domain, Certificate):
        raise InputValidationError("export_benchmark takes the forget run's Certificate as its domain (or None).")
    result = export_bundle(patched, out, certificate=domain, regions=regions, onnx=onnx, vnnlib=vnnlib,
                           scaling=scaling, head_only=head_only, opset=opset, timeout=timeout, compress=compress,
                           info=info, certificate_path=certificate_path, model_path=model_path,
                           not_predicted=not_predicted)
    return result
