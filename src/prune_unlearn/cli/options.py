"""Option bundles and error handling shared by every ``prune`` command module."""

from __future__ import annotations

import functools
from pathlib import Path

import click
import torch

from ..errors import PruneError

__all__ = ["json_option", "silent_option", "seed_option", "data_options", "relaxed_support_options", "handle_errors",
           "read_indices"]


def json_option(f):
    return click.option("--json", "as_json", is_flag=True,
                        help="Print exactly one JSON document (the result) to stdout.")(f)


def silent_option(f):
    return click.option("--silent", is_flag=True, help="No progress bars.")(f)


def seed_option(f):
    return click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
                        help="Random seed (point selection, target labels, clustering, training).")(f)


def data_options(f):
    f = click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Folder with the data set's files (default: $PRUNE_DATA_DIR/<name>).")(f)
    return click.option("--data", "data_name", required=True,
                        help="Data set name: digits, mnist5k, mnist, fashion-mnist.")(f)


def relaxed_support_options(f):
    """How whole-class (Algorithm 2) relaxed supports are built: `forget-class` and `bench table5`."""
    f = click.option("--decision-gate/--no-decision-gate", default=True, show_default=True,
                     help="Confine class patches to inputs the base model assigns to the class (other classes' "
                          "predictions never change); --no-decision-gate is the paper's plain relaxed support.")(f)
    f = click.option("--intermediate", type=click.Choice(["crown", "ibp"]), default="crown", show_default=True,
                     help="Hidden-layer bounds of the per-member CROWN calls: full CROWN, or interval bounds "
                          "(CROWN-IBP: ~9x faster, smaller radii, wants a larger --radius-scale).")(f)
    return click.option("--radius-scale", type=click.FloatRange(min=0, min_open=True), default=1.0,
                        show_default=True, help="Widening of each member's CROWN-certified ball (more "
                        "generalisation; without the decision gate, more side effects).")(f)


def handle_errors(f):
    """Library errors become one-line ``Error: ...`` messages with exit status 1."""
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except PruneError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


def read_indices(path: Path, n_train: int) -> torch.Tensor:
    from ..errors import InputValidationError

    try:
        text = path.read_text()
    except OSError as exc:
        raise InputValidationError(f"Cannot read the indices file {path}: {exc}") from None
    tokens = [t for line in text.splitlines() for t in line.split("#")[0].replace(",", " ").split()]
    try:
        idx = [int(t) for t in tokens]
    except ValueError:
        bad = next(t for t in tokens if not t.lstrip("-").isdigit())
        raise InputValidationError(f"The indices file {path} must hold integers; found {bad!r}.") from None
    if not idx:
        raise InputValidationError(f"The indices file {path} holds no indices.")
    out_of_range = [i for i in idx if not 0 <= i < n_train]
    if out_of_range:
        raise InputValidationError(f"Indices must be in [0, {n_train - 1}] (training points); got {out_of_range[:5]}.")
    if len(set(idx)) != len(idx):
        dup = next(i for i in idx if idx.count(i) > 1)
        raise InputValidationError(f"Index {dup} appears more than once in {path}.")
    return torch.tensor(idx, dtype=torch.int64)
