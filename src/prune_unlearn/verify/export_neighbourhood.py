"""Verifier-ready export of neighbourhood claims (issue 11): ONNX in the verifier normal form, and VNN-LIB
properties in the VNN-COMP "local robustness" shape.

Neighbourhood row ``k``'s claim — label ``t_k`` wins on ``S_k = [lo_k, hi_k] ∩ B`` — is written as the negation
(UNSAT proves it): ``X ∈ S_k`` (bounds on the inputs only) and ``∨_{l≠t} Y_l ≥ Y_t``. The network is the base
head plus row ``k``'s support branch

    n_k(h) = ReLU(1 − λ_k Σ_j [ReLU(h_j − hi_kj) + ReLU(lo_kj − h_j)]),   Y = logits(h) + n_k(h)·d_k,

with only Gemm/MatMul/Add/Mul/Relu (the sum over j is a MatMul by a column of ones). Other rows are left out:
any row that may reach ``S_k`` shares its target (``d_t ≥ 0 ≥ d_l``), so it only adds to the target's lead, and
a proof for this network is a proof for the whole patched model on ``S_k``; whole-class patches, whose offsets
the certificate adds to the bound, are the exception (the header says so when the model carries them).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .._version import __version__
from ..errors import InputValidationError
from .vnnlib import vnnlib_number, write_property

__all__ = ["BallNormalForm", "export_ball_onnx", "write_ball_vnnlib", "export_neighbourhood_properties",
           "export_neighbourhoods"]



def _check_row(patched, k) -> int:
    rows = getattr(patched, "neighbourhoods", None)
    n = 0 if rows is None else len(rows)
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < n:
        raise InputValidationError(f"The neighbourhood row must be an integer in [0, {n - 1}]; got {k!r}."
                                   if n else "The model has no neighbourhood rows.")
    if bool(rows.region_lambda[k] > 0):
        raise InputValidationError(f"Neighbourhood row {k} is confined to a linear region (region ∩ ball); only "
                                   "plain ball rows are exported as local-robustness properties.")
    return k


class BallNormalForm(nn.Module):
    """The base head plus the branches of neighbourhood rows ``ks``, with affine maps, constant Mul and ReLU only."""

    def __init__(self, patched, ks):
        super().__init__()
        ks = [_check_row(patched, k) for k in ([ks] if isinstance(ks, int) else list(ks))]
        self.rows = ks
        rows = patched.neighbourhoods
        linears = patched.split.linears
        self.n_layers = len(linears)
        self.input_dim = linears[0].in_features
        self.num_classes = linears[-1].out_features
        for i, lin in enumerate(linears):
            self.register_buffer(f"weight{i}", lin.weight.detach().cpu().float().clone())
            bias = lin.bias if lin.bias is not None else torch.zeros(lin.out_features)
            self.register_buffer(f"bias{i}", bias.detach().cpu().float().clone())
        self.register_buffer("ones", torch.ones(self.input_dim, 1))
        for j, k in enumerate(ks):
            self.register_buffer(f"neg_upper{j}", -rows.upper[k].detach().cpu().float().unsqueeze(0).clone())
            self.register_buffer(f"lower{j}", rows.lower[k].detach().cpu().float().unsqueeze(0).clone())
            self.register_buffer(f"neg_lambda{j}", -rows.gate_lambda[k].detach().cpu().float().view(1, 1).clone())
            self.register_buffer(f"patch{j}", rows.values[k].detach().cpu().float().unsqueeze(0).clone())

    def support(self, h: torch.Tensor, j: int = 0) -> torch.Tensor:
        """(batch, 1) support of the j-th exported row, by the exported operations."""
        excess = torch.relu(h + getattr(self, f"neg_upper{j}")) + torch.relu(h * -1.0 + getattr(self, f"lower{j}"))
        return torch.relu((excess @ self.ones) * getattr(self, f"neg_lambda{j}") + 1.0)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a = h
        for i in range(self.n_layers - 1):
            a = torch.relu(F.linear(a, getattr(self, f"weight{i}"), getattr(self, f"bias{i}")))
        i = self.n_layers - 1
        y = F.linear(a, getattr(self, f"weight{i}"), getattr(self, f"bias{i}"))
        for j in range(len(self.rows)):
            y = y + self.support(h, j) @ getattr(self, f"patch{j}")
        return y


def export_ball_onnx(patched, k, path, *, opset: int = 13, dynamic_batch: bool = True):
    """Write :class:`BallNormalForm` of row(s) ``k`` as ONNX (input ``X``, output ``Y``); returns its op types."""
    from .export import ALLOWED_OPS, ExportError, drop_identities

    try:
        import onnx
    except ImportError:
        raise ExportError("ONNX export needs the onnx package. HINT: pip install 'prune-unlearn[export]'.") from None
    import warnings

    module = BallNormalForm(patched, k).eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(2 if dynamic_batch else 1, module.input_dim)
    axes = {"X": {0: "batch"}, "Y": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (dummy,), str(path), dynamo=False, input_names=["X"], output_names=["Y"],
                          dynamic_axes=axes, opset_version=int(opset), do_constant_folding=True)
    model = onnx.load(str(path))
    drop_identities(model.graph)  # the exporter's constant deduplication inserts no-op Identity nodes
    ops = tuple(sorted({node.op_type for node in model.graph.node}))
    bad = sorted(set(ops) - ALLOWED_OPS)
    if bad:
        path.unlink(missing_ok=True)
        raise ExportError(f"The ONNX exporter emitted operator(s) {', '.join(bad)} outside the verifier normal form; "
                          "nothing was written.")
    onnx.checker.check_model(model)
    entry = model.metadata_props.add()
    entry.key, entry.value = "prune_unlearn.neighbourhoods", ",".join(map(str, module.rows))
    onnx.save(model, str(path))
    return ops


def write_ball_vnnlib(patched, k: int, path, certificate) -> Path:
    """Row ``k``'s claim as a VNN-LIB local-robustness property over its certified set (support box ∩ domain)."""
    from .certificate import box_from_description, certified_patches_sha256
    from ..errors import CertificateError

    k = _check_row(patched, k)
    if certificate.patches_sha256 != certified_patches_sha256(patched, certificate):
        raise CertificateError("The certificate is for a different patch set than this model's (patches_sha256 "
                               "differs).")
    rows = patched.neighbourhoods
    dom_lo, dom_hi = box_from_description(certificate.domain)
    lo = torch.maximum(rows.lower[k].detach().cpu().double(), dom_lo)
    hi = torch.minimum(rows.upper[k].detach().cpu().double(), dom_hi)
    t, c, d = int(rows.targets[k]), rows.num_classes, rows.input_dim
    entry = next((e for e in certificate.neighbourhoods if e["row"] == k), {})
    lines = [
        f"; VNN-LIB property written by prune-unlearn {__version__} (VNN-COMP local-robustness shape)",
        f"; Neighbourhood {k}: label {t} wins on its support box ∩ the domain, which contains the certified ball",
        f"; B_inf(x, r) ∩ domain, r = {float(rows.radius[k])!r} (centre SHA-256 {entry.get('centre_sha256')}).",
        f"; Certified margin {float(rows.certified_margin[k]):.6g}. This file states the counterexample: UNSAT proves it.",
        f"; Network: export_ball_onnx(patched, {k}, path) — the base head plus this row's support branch.",
    ]
    if patched.class_patches is not None and len(patched.class_patches):
        lines.append("; The model also carries whole-class patches, which this network leaves out; the certificate's "
                     "bound adds their offsets.")
    lines.append("")
    lines += [f"(declare-const X_{i} Real)" for i in range(d)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(c)]
    lines += ["", "; the certified set"]
    for i in range(d):
        lines.append(f"(assert (<= X_{i} {vnnlib_number(hi[i])}))")
        lines.append(f"(assert (>= X_{i} {vnnlib_number(lo[i])}))")
    return write_property(path, lines, t, c)


def export_neighbourhood_properties(patched, certificate, out: Path, *, rows=None, opset: int = 13,
                                    timeout: int = 300) -> tuple[list[dict], list[str]]:
    """``ball_<k>.onnx`` + ``ball_<k>.vnnlib`` for each plain neighbourhood row (default all); returns the items
    and their ``instances.csv`` lines."""
    if certificate is None:
        raise InputValidationError("Neighbourhood properties need the certificate of the forget run (--certificate): "
                                   "its domain box bounds X.")
    nb = patched.neighbourhoods
    chosen = list(rows) if rows else [k for k in range(len(nb)) if not bool(nb.region_lambda[k] > 0)]
    chosen = [_check_row(patched, k) for k in chosen]
    items, lines = [], []
    for k in chosen:
        net, prop = Path(out) / f"ball_{k}.onnx", Path(out) / f"ball_{k}.vnnlib"
        ops = export_ball_onnx(patched, k, net, opset=opset)
        write_ball_vnnlib(patched, k, prop, certificate)
        items.append({"neighbourhood": k, "onnx": str(net), "vnnlib": str(prop), "target": int(nb.targets[k]),
                      "radius": float(nb.radius[k]), "op_types": list(ops)})
        lines.append(f"{net.name},{prop.name},{timeout}")
    return items, lines


def export_neighbourhoods(patched, certificate, out, *, rows=None, onnx: bool = True, vnnlib: bool = True,
                          opset: int = 13, timeout: int = 300) -> dict:
    """The neighbourhood rows of ``patched`` for any verifier: ``patched.onnx`` (the base head plus every ball's
    support branch), one ``ball_<k>.onnx`` + ``ball_<k>.vnnlib`` local-robustness property per plain row (default
    all), ``instances.csv`` and ``export.json`` with the SHA-256 of every file. Refuses, before writing, a model
    that also carries region or class rows (one network for both kinds is not supported) or a certificate for
    another patch set."""
    import json

    from ..core.serialization import atomic_write_text
    from .bundle import file_sha256
    from .certificate import certified_patches_sha256
    from ..errors import CertificateError

    if len(patched.patches) or patched.has_class_patches:
        raise InputValidationError("The model carries neighbourhood rows and region/class rows; exporting both kinds "
                                   "at once is not supported.")
    if vnnlib and certificate is None:
        raise InputValidationError("Neighbourhood properties need the certificate of the forget run (--certificate): "
                                   "its domain box bounds X.")
    if certificate is not None and certificate.patches_sha256 != certified_patches_sha256(patched, certificate):
        raise CertificateError("The certificate is for a different patch set than this model's (patches_sha256 "
                               "differs); nothing was written.")
    for k in rows or []:
        _check_row(patched, k)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"out": str(out), "opset": int(opset), "certificate": certificate is not None,
              "input": "head features (for a flatten-only prefix: the flattened input)"}
    if onnx:
        ops = export_ball_onnx(patched, list(range(len(patched.neighbourhoods))), out / "patched.onnx", opset=opset)
        result["patched_onnx"] = {"file": "patched.onnx", "regions": len(patched.neighbourhoods), "op_types": list(ops)}
    if vnnlib:
        items, lines = export_neighbourhood_properties(patched, certificate, out, rows=rows, opset=opset,
                                                       timeout=timeout)
        atomic_write_text(out / "instances.csv", "\n".join(lines) + ("\n" if lines else ""))
        result["properties"] = items
    files = sorted(p.name for p in out.iterdir() if p.is_file() and p.name != "export.json")
    result["files"] = {name: file_sha256(out / name) for name in files}
    result["bytes_total"] = sum((out / name).stat().st_size for name in files)
    atomic_write_text(out / "export.json", json.dumps(result, indent=1) + "\n")
    return result
