"""``prune export``: a patched model as verifier-ready ONNX and VNN-LIB files.

Kept out of ``cli.py`` so the command (and its onnx dependency) is optional; ``register(cli)`` adds it.

Files written to ``--out``:

* ``patched.onnx`` (``--onnx``): the whole patched head, every region, input ``X`` = head features.
* per region r (``--vnnlib``): ``region_<r>.vnnlib`` and the network it pairs with, ``region_<r>.onnx``
  (only region r's support, which is the whole model on region r's certified region; with the N
  slack outputs after the logits in the default ``--constraints output`` mode).
* ``instances.csv``: ``onnx,vnnlib,timeout`` rows, the VNN-COMP benchmark layout.
* ``export.json``: what was written, with each region's target and threshold.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from .options import handle_errors

__all__ = ["export", "register"]


@click.command(name="export")
@click.option("--model", "model_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Patched model (.safetensors) written by `prune forget`.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the ONNX / VNN-LIB files.")
@click.option("--onnx", "want_onnx", is_flag=True, help="Write patched.onnx (the whole patched head).")
@click.option("--vnnlib", "want_vnnlib", is_flag=True,
              help="Write one property per region claim, with the ONNX network it pairs with.")
@click.option("--region", "regions", type=int, multiple=True,
              help="Region (patch row) to write a property for; repeatable. Default: every region claim.")
@click.option("--certificate", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="certificate.json of the forget run: its domain box bounds X. Default: [0, 1]^d, "
                   "forget's default input box (only for models whose prefix just flattens).")
@click.option("--constraints", type=click.Choice(["output", "input"]), default="output", show_default=True,
              help="Region polytope as bounds on extra slack outputs, or as linear constraints on X.")
@click.option("--scaling", type=click.Choice(["mul", "matmul"]), default="mul", show_default=True,
              help="Gate inputs by Mul with a constant row, or MatMul by a diagonal (Marabou 2.0 needs matmul).")
@click.option("--head-only", is_flag=True,
              help="Allow a prefix that does more than flatten: X is then the head's feature vector M_p(x).")
@click.option("--opset", type=click.IntRange(min=7), default=None, help="ONNX opset (default 13).")
@click.option("--timeout", type=click.IntRange(min=1), default=300, show_default=True,
              help="Timeout (s) written to instances.csv.")
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON document (the result) to stdout.")
@handle_errors
def export(model_path, out, want_onnx, want_vnnlib, regions, certificate, constraints, scaling, head_only, opset,
           timeout, as_json):
    """Write a patched model as ONNX in verifier normal form, plus VNN-LIB region properties.

    Without --onnx and --vnnlib, both are written.

    Example: prune export --model forgot/patched.safetensors --certificate forgot/certificate.json --out vnn/
    """
    from ..verify.certificate import Certificate
    from ..errors import InputValidationError
    from ..verify.export import DEFAULT_OPSET, _check_region_claim, _check_regions, domain_box, export_onnx, write_vnnlib
    from ..core.patches import BOUND_CODES, PatchedModel
    from ..core.serialization import atomic_write_text, load

    if not (want_onnx or want_vnnlib):
        want_onnx = want_vnnlib = True
    model = load(model_path)
    if not isinstance(model, PatchedModel):
        raise InputValidationError(f"{model_path} holds a model without patches; export needs a patched model "
                                   "(the patched.safetensors written by `prune forget`).")
    opset = opset or DEFAULT_OPSET
    cert = Certificate.from_json(certificate) if certificate is not None else None
    if regions and not want_vnnlib:
        raise InputValidationError("--region selects property files; use it with --vnnlib.")
    ps = model.patches
    if want_vnnlib:
        if regions:
            chosen = [_check_region_claim(model, r) for r in _check_regions(model, regions)]
        else:
            chosen = [r for r in range(len(ps)) if int(ps.bound_code[r]) != BOUND_CODES["point"]]
        domain = cert if cert is not None else None
        domain_box(model, domain)  # refuse a bad box before writing anything
    result = {"model": str(model_path), "out": str(out), "opset": opset, "constraints": constraints,
              "scaling": scaling, "input": "head features (for a flatten-only prefix: the flattened input)"}
    if want_onnx:
        info = export_onnx(model, out / "patched.onnx", opset=opset, scaling=scaling, head_only=head_only)
        result["onnx"] = {"path": str(info.path), "regions": len(info.regions), "op_types": list(info.op_types),
                          "inputs": info.input_dim, "outputs": info.output_dim}
    if want_vnnlib:
        items, rows = [], []
        for r in chosen:
            net = out / f"region_{r}.onnx"
            prop = out / f"region_{r}.vnnlib"
            info = export_onnx(model, net, regions=[r], opset=opset, scaling=scaling, head_only=head_only,
                               with_region_constraints=r if constraints == "output" else None)
            write_vnnlib(model, r, prop, domain=domain, constraints=constraints, onnx_name=net.name,
                         head_only=head_only)
            items.append({"region": r, "onnx": str(net), "vnnlib": str(prop), "target": int(ps.targets[r]),
                          "threshold": float(ps.region_threshold[r]), "outputs": info.output_dim,
                          "op_types": list(info.op_types)})
            rows.append(f"{net.name},{prop.name},{timeout}")
        atomic_write_text(out / "instances.csv", "\n".join(rows) + ("\n" if rows else ""))
        result["properties"] = items
        result["skipped_point_claims"] = [r for r in range(len(ps)) if not regions
                                          and int(ps.bound_code[r]) == BOUND_CODES["point"]]
    atomic_write_text(out / "export.json", json.dumps(result, indent=1) + "\n")
    if as_json:
        click.echo(json.dumps(result, indent=1))
    else:
        lines = []
        if want_onnx:
            lines.append(f"wrote {result['onnx']['path']} ({result['onnx']['regions']} region(s); ops "
                         f"{', '.join(result['onnx']['op_types'])})")
        if want_vnnlib:
            lines.append(f"wrote {len(result['properties'])} VNN-LIB propert(y/ies) with their networks to {out} "
                         f"(see instances.csv)")
            if result["skipped_point_claims"]:
                lines.append(f"skipped {len(result['skipped_point_claims'])} region(s) with point claims only")
        click.echo("\n".join(lines))


def register(cli_group: click.Group) -> None:
    """Add ``export`` to the ``prune`` command group."""
    cli_group.add_command(export)
