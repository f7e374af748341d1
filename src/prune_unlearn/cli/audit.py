"""``prune audit``: re-check a certificate against a patched model, from scratch; exit 3 when a claim fails."""

from __future__ import annotations

from pathlib import Path

import click

from ..core.serialization import load
from ..experiments.datasets import load_dataset
from ..verify.audit import AUDIT_MODES, audit
from ..verify.certificate import Certificate
from .options import data_options, model_path_option, read_indices, seed_option
from .output import json_option
from .policy import command, exit_check_failed

__all__ = ["audit_cmd"]


@command(name="audit")
@model_path_option("The patched model (.safetensors).")
@click.option("--certificate", "cert_path", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              required=True, help="certificate.json (its .proof.safetensors is read from beside it).")
@data_options(required=False, help="Data set of the forgotten points (with --indices).")
@click.option("--indices", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Training-set indices of the forgotten points (e.g. forget_indices.txt).")
@click.option("--mode", type=click.Choice(AUDIT_MODES), default="white-box", show_default=True,
              help="black-box: only query the model at the forgotten points; white-box: also check that each is "
                   "supported by its claimed region.")
@click.option("--samples", type=click.IntRange(min=0), default=20, show_default=True,
              help="Regions re-solved by exact LP.")
@click.option("--exhaustive", is_flag=True, help="Re-solve every region by exact LP.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Processes for the exact bounds and LPs (same checks; default: PRUNE_THREADS when they are long).")
@seed_option
@json_option
def audit_cmd(model_path, cert_path, data_name, data_dir, indices, mode, samples, exhaustive, workers, seed, output):
    """Re-check a certificate against a patched model from scratch; exit 3 if any claim is rejected.

    \b
    Example: prune audit --model forgot/patched.safetensors --certificate forgot/certificate.json --data digits --indices forgot/forget_indices.txt
    """
    if (data_name is None) != (indices is None):
        raise click.UsageError("Use --data and --indices together (the forgotten points), or neither.")
    cert = Certificate.from_json(cert_path)
    model = load(model_path)
    points = labels = extra = None
    if data_name is not None:
        ds = load_dataset(data_name, data_dir)
        idx = read_indices(indices, len(ds.y_train))
        points, labels, extra = ds.X_train[idx], ds.y_train[idx], ds.X_test
    result = audit(model, cert, points=points, labels=labels, mode=mode, lp_samples=samples, exhaustive=exhaustive,
                   locality_inputs=extra, seed=seed, workers=workers)
    output.result(result.to_dict(), result.summary())
    if not result.passed:
        exit_check_failed()
