"""``prune request add|list|undo``, ``prune process``, ``prune ledger verify``: the request ledger's commands.

Each command opens the ledger (``--ledger``, default ``prune-ledger.sqlite``, or ``$PRUNE_LEDGER``), calls one
:class:`prune_unlearn.ledger.Ledger` method and prints the result (``--json``: exactly one JSON document).
Exit codes: 0 ok; 1 a refused request (``Error: ...``); 2 usage error; 3 ``ledger verify`` found a problem.

Add them to the main group with ``register(cli)``, from the end of ``cli.py`` (this module imports shared
options from it).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from .options import handle_errors, json_option, read_indices, silent_option
from ..ops.ledger import DEFAULT_LEDGER_PATH, STATUSES, Ledger

__all__ = ["register", "request", "process_cmd", "ledger"]

VERIFY_FAILED_EXIT = 3


def ledger_option(f):
    return click.option("--ledger", "ledger_path", type=click.Path(dir_okay=False, path_type=Path),
                        default=DEFAULT_LEDGER_PATH, envvar="PRUNE_LEDGER", show_default=True, show_envvar=True,
                        help="The request ledger (an SQLite file, created on first use).")(f)


def model_option(f):
    return click.option("--model", "model_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
                        help="The model file (.safetensors) the ledger's patches go into; rewritten in place.")(f)


def _require(ledger_path: Path) -> None:
    """Only `request add` creates a ledger; elsewhere a missing file is a mistyped path."""
    if not ledger_path.exists():
        raise click.ClickException(f"No ledger at {ledger_path}. HINT: `prune request add` creates it; --ledger or "
                                   "$PRUNE_LEDGER names another file.")


def _print(data, as_json: bool, human: str) -> None:
    click.echo(json.dumps(data, indent=1) if as_json else human)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def request() -> None:
    """Withdrawal requests: add, list, undo."""


@request.command("add")
@ledger_option
@click.option("--requester", "--who", required=True, help="Who asked (name, e-mail, ticket id).")
@click.option("--index", "-i", "index_values", type=click.IntRange(min=0), multiple=True,
              help="Training-set index of a point to forget (repeatable); needs --data.")
@click.option("--indices", "indices_file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              default=None, help="Text file of training-set indices (whitespace/comma separated); needs --data.")
@click.option("--points", "points_file", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="File of points: .npy (float array, one point per row) or .safetensors with X (and y).")
@click.option("--labels", "labels_file", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Labels for --points (.npy of integers). Default: y of the .safetensors, else the training labels "
                   "of --data, else the base model's prediction.")
@click.option("--sha256", default=None, help="Refuse the --points file unless its SHA-256 is this (hex).")
@click.option("--data", "data_name", default=None, help="Data set the indices refer to (digits, mnist5k, mnist, …).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder with the data set's files (default: $PRUNE_DATA_DIR/<name>).")
@json_option
@handle_errors
def add_cmd(ledger_path, requester, index_values, indices_file, points_file, labels_file, sha256, data_name, data_dir,
            as_json):
    """Record a withdrawal request; it stays pending until `prune process`.

    Example: prune request add --requester alice@example.org --data digits --index 3 --index 17
    """
    by_index = bool(index_values) or indices_file is not None
    if by_index == (points_file is not None):
        raise click.UsageError("Name the points with --index/--indices (and --data) or with --points, not both.")
    if by_index and data_name is None:
        raise click.UsageError("--index/--indices need --data (the data set they index).")
    data = indices = None
    if data_name is not None:
        from ..experiments.datasets import load_dataset

        data = load_dataset(data_name, data_dir)
    if by_index:
        indices = list(index_values)
        if indices_file is not None:
            indices += read_indices(indices_file, len(data.y_train)).tolist()
    with Ledger(ledger_path) as ledger:
        req = ledger.add(requester, indices=indices, points_file=points_file, labels_file=labels_file, sha256=sha256,
                         data=data)
    _print(req.to_dict(), as_json, f"request {req.id} from {req.requester}: {req.n_points} point(s), pending "
                                   f"(ledger {ledger_path})")


@request.command("list")
@ledger_option
@click.option("--status", type=click.Choice(STATUSES), default=None, help="Only requests with this status.")
@click.option("--requester", default=None, help="Only requests from this requester.")
@json_option
@handle_errors
def list_cmd(ledger_path, status, requester, as_json):
    """List requests (oldest first), with their status and the patched regions that honour them.

    Example: prune request list --status pending
    """
    _require(ledger_path)
    with Ledger(ledger_path) as ledger:
        reqs = ledger.requests(status=status, requester=requester)
    if as_json:
        _print({"ledger": str(ledger_path), "requests": [r.to_dict() for r in reqs]}, True, "")
        return
    lines = [f"{'id':>6}  {'status':<9}  {'points':>6}  {'regions':>7}  {'created (UTC)':<19}  requester / source"]
    for r in reqs:
        source = f"{r.dataset}[{len(r.indices)} idx]" if r.source == "dataset" else Path(r.file).name
        failed = f", {len(r.failed)} failed" if r.failed else ""
        lines.append(f"{r.id:>6}  {r.status:<9}  {r.n_points:>6}  {len(r.patterns):>7}  {r.created_at[:19]:<19}  "
                     f"{r.requester} / {source}{failed}")
    lines.append(f"{len(reqs)} request(s)")
    click.echo("\n".join(lines))


@request.command("undo")
@click.argument("request_id", type=click.IntRange(min=1))
@ledger_option
@model_option
@json_option
@handle_errors
def undo_cmd(request_id, ledger_path, model_path, as_json):
    """Undo a processed request: remove the patched regions only it needs, restoring the model's outputs there.

    Example: prune request undo 7 --model model.safetensors
    """
    _require(ledger_path)
    with Ledger(ledger_path) as ledger:
        result = ledger.undo(request_id, model_path)
    _print(result.to_dict(), as_json, result.summary())


@click.command("process")
@ledger_option
@model_option
@click.option("--data", "data_name", default=None,
              help="Data set of index requests (default: the one each request names).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder with the data set's files (default: $PRUNE_DATA_DIR/<name>).")
@click.option("--batch-size", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Requests forgotten (and committed) together.")
@click.option("--bound", type=click.Choice(["box", "dual", "lp"]), default="box", show_default=True,
              help="How region claims are proven (all sound; dual/lp give smaller patches).")
@click.option("--epsilon", type=click.FloatRange(min=0, min_open=True), default=0.05, show_default=True,
              help="Proven margin (logits) of the target label on each certified region.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the target labels.")
@json_option
@silent_option
@handle_errors
def process_cmd(ledger_path, model_path, data_name, data_dir, batch_size, bound, epsilon, seed, as_json, silent):
    """Forget every pending request once, in batches; rewrite the model and record what honoured each request.

    Running it again with nothing pending changes nothing.

    Example: prune process --model model.safetensors --data digits
    """
    _require(ledger_path)
    with Ledger(ledger_path) as ledger:
        result = ledger.process(model_path, data=data_name, data_dir=data_dir, batch_size=batch_size, bound=bound,
                                epsilon=epsilon, seed=seed, progress=not (silent or as_json))
    _print(result.to_dict(), as_json, result.summary())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def ledger() -> None:
    """The request ledger itself: verify its hash chain."""


@ledger.command("verify")
@ledger_option
@click.option("--model", "model_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also check that this model file is the one the ledger last wrote.")
@json_option
@handle_errors
def verify_cmd(ledger_path, model_path, as_json):
    """Recompute the hash chain and the requests from the events; exit 3 if anything does not hold.

    Example: prune ledger verify --model model.safetensors
    """
    _require(ledger_path)
    with Ledger(ledger_path) as led:
        result = led.verify(model_path)
    _print(result.to_dict(), as_json, result.summary())
    if not result.ok:
        click.get_current_context().exit(VERIFY_FAILED_EXIT)


def register(cli_group: click.Group) -> None:
    """Add ``request`` (add, list, undo), ``process`` and ``ledger`` (verify) to the ``prune`` group."""
    for command in (request, process_cmd, ledger):
        cli_group.add_command(command)
