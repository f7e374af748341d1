"""An export bound to its certificate: what ``prune export`` writes, and what it refuses.

:func:`export_bundle` writes, into one folder,

* ``patched.onnx`` — the whole patched head in verifier normal form (:func:`export.export_onnx`);
* ``region_network.onnx`` — one network for every region property: the base head with its hidden
  pre-activations as extra outputs (:mod:`prune_unlearn.verify.properties`);
* ``region_<r>.vnnlib`` (or ``.vnnlib.gz``) — one small property per region claim;
* with ``not_predicted=True``, ``region_<r>_not_<L>.vnnlib`` — per region claim and forgotten label ``L``, the
  weaker claim "L is not predicted on the region" as one conjunctive query (Marabou proves it in seconds
  where the per-target disjunction times out on MNIST);
* ``instances.csv`` — ``onnx,vnnlib,timeout`` rows (the VNN-COMP layout);
* ``export.json`` — the SHA-256 and size of every file above, the certificate's hashes
  (``model_sha256``, ``patches_sha256``, the proof's ``sha256``) and the SHA-256 of the certificate
  and model files it was given.

Before writing anything it refuses a model that its certificate does not describe: a base model or
patch set whose hash differs, a proof file that does not match, a region entry that disagrees with
the patch set, or a patch value below its proof (the claimed margin re-derived in exact arithmetic
from the proof, as the audit does). Nothing is written when it refuses.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .._version import __version__
from .certificate import Certificate
from ..errors import CertificateError, InputValidationError
from ..core.patches import BOUND_CODES

__all__ = ["check_binding", "export_bundle", "file_sha256"]

REGION_NETWORK = "region_network.onnx"
_BINDING_CHECKS = ("hashes", "regions", "bounds")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_binding(patched, certificate: Certificate) -> None:
    """Raise :class:`CertificateError` unless ``certificate`` describes ``patched`` and its proofs hold.

    Runs the audit's ``hashes``, ``regions`` and ``bounds`` checks (bounds in exact arithmetic; no LP,
    no locality sampling) and refuses on any failure, listing every one.
    """
    from .audit import audit

    result = audit(patched, certificate, lp_samples=0, locality_samples=0)
    failures = [c for c in result.failures if c.name in _BINDING_CHECKS]
    if failures:
        raise CertificateError("The certificate does not describe this model, so nothing was exported:\n" + "\n".join(
            f"- {c.name} [{c.subject}]: {c.detail}" for c in failures[:20])
            + (f"\n- … and {len(failures) - 20} more" if len(failures) > 20 else ""))


def _region_claims(patched, regions) -> list[int]:
    from .export import check_region_claim, check_regions

    ps = patched.patches
    if regions:
        return [check_region_claim(patched, r) for r in check_regions(patched, regions)]
    return [r for r in range(len(ps)) if int(ps.bound_code[r]) != BOUND_CODES["point"]]


def export_bundle(patched, out, *, certificate: Certificate | None = None, certificate_path=None, model_path=None,
                  regions=None, onnx: bool = True, vnnlib: bool = True, scaling: str = "mul",
                  head_only: bool = False, opset: int | None = None, timeout: int = 300,
                  compress: bool = False, info: dict | None = None, not_predicted: bool = False) -> dict:
    """Write the export described in the module docstring; return the ``export.json`` document.

    ``certificate``: the forget run's certificate (its domain box bounds ``X``, and the model is checked
    against it first); without one, the domain is forget's default ``[0, 1]^d`` (flatten-only prefix)
    and ``export.json`` records no binding. ``regions``: region claims to write properties for
    (default all). ``compress``: write ``.vnnlib.gz`` (VNN-COMP benchmarks ship properties that way).
    ``info``: entries that lead ``export.json`` (e.g. the model file). ``not_predicted``: also write the
    "forgotten label not predicted" properties (the labels come from the certificate's claims).
    """
    from ..core.serialization import atomic_write_text
    from .export import DEFAULT_OPSET, check_patched, domain_box, export_onnx
    from .properties import class_offsets, region_network, write_region_property

    check_patched(patched, head_only, allow_class_patches=True)
    opset = opset or DEFAULT_OPSET
    if regions and not vnnlib:
        raise InputValidationError("Selecting regions only makes sense with the VNN-LIB properties (vnnlib=True).")
    if not_predicted and (certificate is None or not vnnlib):
        raise InputValidationError("The 'not predicted' properties need the certificate (its claims name the "
                                   "forgotten labels) and the VNN-LIB properties. HINT: pass --certificate.")
    if certificate is not None:
        check_binding(patched, certificate)
    chosen = _region_claims(patched, regions) if vnnlib else []
    lower, upper = domain_box(patched, certificate) if vnnlib else (None, None)
    out = Path(out)
    written: list[Path] = []
    doc: dict = {**(info or {}), "library_version": __version__, "opset": opset, "scaling": scaling,
                 "input": "head features h (for a flatten-only prefix: the flattened input)"}
    if onnx:
        info = export_onnx(patched, out / "patched.onnx", opset=opset, scaling=scaling, head_only=head_only)
        written.append(info.path)
        doc["patched_onnx"] = {"file": info.path.name, "regions": len(info.regions), "op_types": list(info.op_types),
                               "inputs": info.input_dim, "outputs": info.output_dim,
                               "normal_form": info.normal_form}
    if vnnlib:
        net = _write_region_network(region_network(patched), out / REGION_NETWORK, opset)
        written.append(net)
        offsets = class_offsets(patched)
        props, rows = [], []
        suffix = ".vnnlib.gz" if compress else ".vnnlib"
        ps = patched.patches
        for r in chosen:
            path = write_region_property(patched, r, out / f"region_{r}{suffix}", lower, upper,
                                         network_name=REGION_NETWORK, offsets=offsets, compress=compress)
            written.append(path)
            props.append({"region": r, "vnnlib": path.name, "target": int(ps.targets[r]),
                          "threshold": float(ps.region_threshold[r]), "margin": float(ps.certified_margin[r])})
            rows.append(f"{REGION_NETWORK},{path.name},{timeout}")
        if not_predicted:
            doc["not_predicted"] = _write_not_predicted(patched, certificate, chosen, out, lower, upper, offsets,
                                                        compress, written, rows, timeout)
        csv = out / "instances.csv"
        atomic_write_text(csv, "\n".join(rows) + ("\n" if rows else ""))
        written.append(csv)
        doc["region_network"] = {"file": REGION_NETWORK, "outputs": "Y[0:C] base logits, Y[C:C+N] hidden "
                                 "pre-activations z_i (layers in order)"}
        doc["properties"] = props
        doc["skipped_point_claims"] = [] if regions else [
            r for r in range(len(ps)) if int(ps.bound_code[r]) == BOUND_CODES["point"]]
    doc["files"] = {p.name: {"sha256": file_sha256(p), "bytes": p.stat().st_size} for p in written}
    doc["bytes_total"] = sum(v["bytes"] for v in doc["files"].values())
    doc["certificate"] = None if certificate is None else {
        "file": str(certificate_path) if certificate_path else None,
        "file_sha256": file_sha256(certificate_path) if certificate_path else None,
        "format_version": certificate.format_version,
        "model_sha256": certificate.model_sha256,
        "patches_sha256": certificate.patches_sha256,
        "proof_sha256": (certificate.proof or {}).get("sha256"),
        "checked": "hashes, region entries and every region claim's bound (exact arithmetic) before export",
    }
    doc["model"] = {"file": str(model_path) if model_path else None,
                    "file_sha256": file_sha256(model_path) if model_path else None,
                    "base_sha256": patched.base_sha256(), "patches_sha256": patched.patches_sha256()}
    atomic_write_text(out / "export.json", json.dumps(doc, indent=1) + "\n")
    return doc


def _write_not_predicted(patched, certificate, chosen, out: Path, lower, upper, offsets, compress, written, rows,
                         timeout) -> list:
    """``region_<r>_not_<L>`` for every region claim's forgotten label ``L`` (:func:`properties.not_predicted_text`)."""
    from .properties import write_region_property

    ps = patched.patches
    labels: dict = {}
    for c in certificate.claims:
        if c.get("proved") == "region" and c.get("kind") != "unseen" and c.get("region", -1) >= 0:
            labels.setdefault(c["region"], set()).add(int(c["label"]))
    entries = []
    for r in chosen:
        t = int(ps.targets[r])
        for label in sorted(labels.get(r, set()) - {t}):
            path = write_region_property(patched, r, out / f"region_{r}_not_{label}.vnnlib{'.gz' if compress else ''}",
                                         lower, upper, network_name=REGION_NETWORK, offsets=offsets, compress=compress,
                                         not_predicted=label)
            written.append(path)
            entries.append({"region": r, "label": label, "vnnlib": path.name, "target": t,
                            "threshold": float(ps.region_threshold[r])})
            rows.append(f"{REGION_NETWORK},{path.name},{timeout}")
    return entries


def _write_region_network(module, path: Path, opset: int) -> Path:
    import warnings

    import onnx
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated in favour of dynamo
        torch.onnx.export(module, (torch.zeros(2, module.input_dim),), str(path), dynamo=False, input_names=["X"],
                          output_names=["Y"], dynamic_axes={"X": {0: "batch"}, "Y": {0: "batch"}},
                          opset_version=int(opset), do_constant_folding=True)
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    if not ops <= {"Gemm", "Relu", "Concat"}:
        path.unlink(missing_ok=True)
        from ..errors import ExportError

        raise ExportError(f"The region network has operators {sorted(ops)} beyond Gemm, Relu and Concat.")
    onnx.checker.check_model(model)
    entry = model.metadata_props.add()
    entry.key, entry.value = "prune_unlearn.output", "Y[0:C] base logits; Y[C:C+N] hidden pre-activations"
    onnx.save(model, str(path))
    return path
