"""``prune export``: a patched model as verifier-ready ONNX and VNN-LIB files, bound to its certificate.

The files (:func:`prune_unlearn.verify.export.export_benchmark`, i.e. :mod:`prune_unlearn.verify.bundle`):
``patched.onnx`` (``--onnx``, the whole patched head); ``region_network.onnx``, one network for every region
property, and ``region_<r>.vnnlib`` per region claim (``--vnnlib``); ``instances.csv`` (the VNN-COMP benchmark
layout); ``export.json``, the SHA-256 of every file and the certificate's hashes. With ``--certificate`` a
model the certificate does not describe is refused before anything is written. The onnx package is imported
only when the command runs.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..core.patches import PatchedModel
from ..core.serialization import load
from ..errors import InputValidationError
from ..verify.certificate import Certificate
from ..verify.export import DEFAULT_OPSET, SCALINGS, export_benchmark
from .options import model_path_option, out_folder_options
from .output import json_option
from .paths import OutputFolder
from .policy import command

__all__ = ["export", "register"]


@command(name="export")
@model_path_option("Patched model (.safetensors) written by `prune forget`.")
@out_folder_options("Folder for the ONNX / VNN-LIB files.")
@click.option("--onnx", "want_onnx", is_flag=True, help="Write patched.onnx (the whole patched head).")
@click.option("--vnnlib", "want_vnnlib", is_flag=True,
              help="Write region_network.onnx and one property per region claim.")
@click.option("--region", "regions", type=int, multiple=True,
              help="Region (patch row) to write a property for; repeatable. Default: every region claim.")
@click.option("--ball", "balls", type=int, multiple=True,
              help="Neighbourhood row to write a local-robustness property for; repeatable. Default: every plain "
                   "neighbourhood row (needs --certificate).")
@click.option("--certificate", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="certificate.json of the forget run: the model is checked against it and its domain box bounds "
                   "X. Default: [0, 1]^d, forget's default input box (only for models whose prefix just flattens).")
@click.option("--gzip", "compress", is_flag=True, help="Write the properties as .vnnlib.gz (as VNN-COMP ships them).")
@click.option("--not-predicted", is_flag=True,
              help="Also write, per region claim, 'the forgotten label is not predicted on the region' as one "
                   "conjunctive query (region_<r>_not_<L>.vnnlib; needs --certificate). Faster for Marabou.")
@click.option("--scaling", type=click.Choice(SCALINGS), default="mul", show_default=True,
              help="Gate inputs by Mul with a constant row, or MatMul by a diagonal (Marabou 2.0 needs matmul).")
@click.option("--head-only", is_flag=True,
              help="Allow a prefix that does more than flatten: X is then the head's feature vector M_p(x).")
@click.option("--opset", type=click.IntRange(min=7), default=DEFAULT_OPSET, show_default=True, help="ONNX opset.")
@click.option("--timeout", type=click.IntRange(min=1), default=300, show_default=True,
              help="Timeout (s) written to instances.csv.")
@json_option
def export(model_path, out, overwrite, want_onnx, want_vnnlib, regions, balls, certificate, compress, not_predicted,
           scaling, head_only, opset, timeout, output):
    """Write a patched model as ONNX in verifier normal form, plus VNN-LIB region properties.

    Without --onnx and --vnnlib, both are written.

    \b
    Example: prune export --model forgot/patched.safetensors --certificate forgot/certificate.json --out vnn/
    """
    if not (want_onnx or want_vnnlib):
        want_onnx = want_vnnlib = True
    if regions and not want_vnnlib:
        raise InputValidationError("--region selects property files; use it with --vnnlib.")
    with OutputFolder(out, overwrite=overwrite) as folder:  # --out checked before any work
        model = load(model_path)
        if not isinstance(model, PatchedModel):
            raise InputValidationError(f"{model_path} holds a model without patches; export needs a patched model "
                                       "(the patched.safetensors written by `prune forget`).")
        cert = Certificate.from_json(certificate) if certificate is not None else None
        if model.has_neighbourhoods:  # certified neighbourhoods: VNN-COMP local-robustness properties (issue 11)
            if not_predicted:
                raise InputValidationError("--not-predicted writes region properties; this model's claims are "
                                           "neighbourhoods (their properties are written without it).")
            from ..verify.export_neighbourhood import export_neighbourhoods

            result = export_neighbourhoods(model, cert, folder, rows=list(balls) or None, onnx=want_onnx,
                                           vnnlib=want_vnnlib, opset=opset, timeout=timeout)
            human = (f"wrote {len(result.get('properties', []))} neighbourhood propert(y/ies) and "
                     f"{len(result['files'])} file(s) to {out} (see instances.csv, export.json)")
        else:
            if balls:
                raise InputValidationError("--ball selects neighbourhood rows, but the model has none.")
            result = export_benchmark(model, folder, onnx=want_onnx, vnnlib=want_vnnlib, regions=list(regions) or None,
                                      domain=cert, scaling=scaling, head_only=head_only, opset=opset, timeout=timeout,
                                      compress=compress, certificate_path=certificate, model_path=model_path,
                                      not_predicted=not_predicted)
            human = None
    output.result(result, human if human is not None else _summary(result, out))


def _summary(result: dict, out: Path) -> str:
    lines = []
    if "patched_onnx" in result:
        info = result["patched_onnx"]
        lines.append(f"wrote {out / info['file']} ({info['regions']} region(s); ops {', '.join(info['op_types'])})")
    if "properties" in result:
        lines.append(f"wrote {len(result['properties'])} VNN-LIB propert(y/ies) over "
                     f"{result['region_network']['file']} to {out} (see instances.csv)")
        if result.get("not_predicted"):
            lines.append(f"wrote {len(result['not_predicted'])} 'forgotten label not predicted' propert(y/ies)")
        if result["skipped_point_claims"]:
            lines.append(f"skipped {len(result['skipped_point_claims'])} region(s) with point claims only")
    lines.append(f"export.json: SHA-256 of {len(result['files'])} file(s), {result['bytes_total'] / 1e6:.1f} MB"
                 + ("; bound to the certificate" if result["certificate"] else "; no certificate given"))
    return "\n".join(lines)


def register(cli_group: click.Group) -> None:
    """Add ``export`` to a command group (the ``prune`` group, or a test's)."""
    cli_group.add_command(export)
