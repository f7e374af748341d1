"""``prune ledger add|list|process|undo|reject|verify|consolidate``: withdrawal requests and the ledger that records them.

Each command opens the ledger (``--ledger``, default ``prune-ledger.sqlite``, or ``$PRUNE_LEDGER``), calls one
:class:`prune_unlearn.ops.ledger.Ledger` method and prints the result. ``ledger verify`` exits 3 when a check
fails. The old spellings ``prune request add|list|undo`` and ``prune process`` still work for one release
(hidden, with a deprecation note on stderr).
"""

from __future__ import annotations

from pathlib import Path

import click

from ..experiments.datasets import load_dataset
from ..ops.ledger import DEFAULT_LEDGER_PATH, STATUSES, Ledger
from .options import bound_option, data_options, epsilon_option, model_path_option, neighbourhood_options, read_indices
from .options import seed_option
from .output import json_option, output_options
from .policy import command, deprecated_alias, exit_check_failed, group
from .recorded import engine_options

__all__ = ["ledger", "register"]

_MODEL_HELP = "The model file (.safetensors) the ledger's patches go into; rewritten in place."


def ledger_option(f):
    return click.option("--ledger", "ledger_path", type=click.Path(dir_okay=False, path_type=Path),
                        default=DEFAULT_LEDGER_PATH, envvar="PRUNE_LEDGER", show_default=True, show_envvar=True,
                        help="The request ledger (an SQLite file, created on first use).")(f)


def _require(ledger_path: Path) -> None:
    """Only `ledger add` creates a ledger; elsewhere a missing file is a mistyped path."""
    if not ledger_path.exists():
        raise click.ClickException(f"No ledger at {ledger_path}. HINT: `prune ledger add` creates it; --ledger or "
                                   "$PRUNE_LEDGER names another file.")


@group()
def ledger() -> None:
    """Withdrawal requests and the ledger that records them: add, list, process, undo, reject, verify, consolidate."""


@ledger.command("add")
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
@data_options(required=False, help="Data set the indices refer to (or whose training labels --points takes).")
@click.option("--model", "model_path", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="The model the request is for: its points must fit it, its labels be below its number of classes "
                   "(needed for --labels without --data); .safetensors or an ONNX MLP (.onnx).")
@json_option
def add_cmd(ledger_path, requester, index_values, indices_file, points_file, labels_file, sha256, data_name, data_dir,
            model_path, output):
    """Record a withdrawal request; it stays pending until `prune ledger process`.

    Everything `process` checks is checked first (labels, input shape, domain box, NaN, indices); a refused
    request writes nothing, not even a new ledger file.

    \b
    Example: prune ledger add --requester alice@example.org --data digits --index 3 --index 17
    """
    by_index = bool(index_values) or indices_file is not None
    if by_index == (points_file is not None):
        raise click.UsageError("Name the points with --index/--indices (and --data) or with --points, not both.")
    if by_index and data_name is None:
        raise click.UsageError("--index/--indices need --data (the data set they index).")
    data = load_dataset(data_name, data_dir) if data_name is not None else None
    indices = None
    if by_index:
        indices = list(index_values)
        if indices_file is not None:
            indices += read_indices(indices_file, len(data.y_train)).tolist()
    with Ledger(ledger_path) as led:
        req = led.add(requester, indices=indices, points_file=points_file, labels_file=labels_file, sha256=sha256,
                      data=data, model=model_path)
    output.result(req.to_dict(), f"request {req.id} from {req.requester}: {req.n_points} point(s), pending "
                                 f"(ledger {ledger_path})")


def _request_table(reqs) -> str:
    lines = [f"{'id':>6}  {'status':<9}  {'points':>6}  {'regions':>7}  {'created (UTC)':<19}  requester / source"]
    for r in reqs:
        source = f"{r.dataset}[{len(r.indices)} idx]" if r.source == "dataset" else Path(r.file).name
        failed = f", {len(r.failed)} failed" if r.failed else ""
        if r.rejection:
            failed += f"; rejected by {r.rejection['by']}: {r.rejection['reason'][:60]}"
        lines.append(f"{r.id:>6}  {r.status:<9}  {r.n_points:>6}  {len(r.patterns):>7}  {r.created_at[:19]:<19}  "
                     f"{r.requester} / {source}{failed}")
    lines.append(f"{len(reqs)} request(s)")
    return "\n".join(lines)


@ledger.command("list")
@ledger_option
@click.option("--status", type=click.Choice(STATUSES), default=None, help="Only requests with this status.")
@click.option("--requester", default=None, help="Only requests from this requester.")
@json_option
def list_cmd(ledger_path, status, requester, output):
    """List requests (oldest first), with their status and the patched regions that honour them.

    \b
    Example: prune ledger list --status pending
    """
    _require(ledger_path)
    with Ledger(ledger_path) as led:
        reqs = led.requests(status=status, requester=requester)
    output.result({"ledger": str(ledger_path), "requests": [r.to_dict() for r in reqs]}, _request_table(reqs))


@ledger.command("process")
@ledger_option
@model_path_option(_MODEL_HELP)
@data_options(required=False, help="Data set of index requests (default: the one each request names).")
@click.option("--batch-size", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Requests forgotten (and committed) together.")
@bound_option
@epsilon_option
@seed_option
@neighbourhood_options
@output_options
def process_cmd(ledger_path, model_path, data_name, data_dir, batch_size, bound, epsilon, seed, neighbourhood, output):
    """Forget every pending request once, in batches; rewrite the model and record what honoured each request.

    Running it again with nothing pending changes nothing. A request that can never be forgotten on this model
    (labels, input shape, domain box) is rejected with the reason; one whose points cannot be read now (data set
    or file missing or changed) is skipped and stays pending. Neither blocks the others.

    \b
    Example: prune ledger process --model model.safetensors --data digits
    """
    _require(ledger_path)
    with Ledger(ledger_path) as led:
        result = led.process(model_path, data=data_name, data_dir=data_dir, batch_size=batch_size, bound=bound,
                             epsilon=epsilon, seed=seed, progress=output.progress, neighbourhood=neighbourhood)
    output.result(result.to_dict(), result.summary())


@ledger.command("undo")
@click.argument("request_id", type=click.IntRange(min=1))
@ledger_option
@model_path_option(_MODEL_HELP)
@json_option
def undo_cmd(request_id, ledger_path, model_path, output):
    """Undo a processed request: remove the patched regions only it needs, restoring the model's outputs there.

    \b
    Example: prune ledger undo 7 --model model.safetensors
    """
    _require(ledger_path)
    with Ledger(ledger_path) as led:
        result = led.undo(request_id, model_path)
    output.result(result.to_dict(), result.summary())


@ledger.command("reject")
@click.argument("request_id", type=click.IntRange(min=1))
@click.option("--reason", required=True, help="Why (recorded in the ledger): e.g. 'withdrawn by the requester', "
                                               "'duplicate of 12', a ticket reference.")
@ledger_option
@json_option
def reject_cmd(request_id, reason, ledger_path, output):
    """Reject (or cancel) a pending request, with a recorded reason; it is never processed.

    The rejection is a hash-chained event like every other. Only a pending request can be rejected (a processed
    one is undone with `prune ledger undo`). `prune ledger process` rejects by itself the requests it can never
    forget on the model (labels, input shape or domain box), so they never block the others.

    \b
    Example: prune ledger reject 7 --reason "withdrawn by the requester"
    """
    _require(ledger_path)
    with Ledger(ledger_path) as led:
        req = led.reject(request_id, reason)
    output.result(req.to_dict(), f"rejected request {req.id} from {req.requester}: {req.rejection['reason']}")


@ledger.command("verify")
@ledger_option
@click.option("--model", "model_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also check that this model file is the one the ledger last wrote.")
@click.option("--replay", "replay_shards", type=click.IntRange(min=0), multiple=True, metavar="SHARD",
              help="Also retrain this shard (repeatable) from its recorded manifest and recipe and check every "
                   "checkpoint is byte-identical.")
@click.option("--record", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="With --replay: the record store folder (default: the one the model or the ledger names).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="With --replay: folder with the data set's files (default: $PRUNE_DATA_DIR/<name>).")
@json_option
def verify_cmd(ledger_path, model_path, replay_shards, record, data_dir, output):
    """Recompute the hash chain and the requests from the events; exit 3 if anything does not hold.

    With --replay, also retrain those SISA shards from their recorded manifest and recipe (what an auditor does).

    \b
    Example: prune ledger verify --model model.safetensors --replay 3
    """
    _require(ledger_path)
    with Ledger(ledger_path) as led:
        result = led.verify(model_path)
        replayed = led.replay(replay_shards, model_path, record=record, data_dir=data_dir) if replay_shards else None
    data, human = result.to_dict(), result.summary()
    if replayed is not None:
        data, human = {**data, "replay": replayed.to_dict()}, human + "\n" + replayed.summary()
    output.result(data, human)
    if not result.ok or (replayed is not None and not replayed.ok):
        exit_check_failed()


@ledger.command("consolidate")
@ledger_option
@model_path_option(_MODEL_HELP)
@click.option("--record", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The record store folder (default: the one the model's header names).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder with the data set's files (default: $PRUNE_DATA_DIR/<name>).")
@engine_options
@click.option("--batch-size", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Requests patched again together (those processed while the model retrained).")
@output_options
def consolidate_cmd(ledger_path, model_path, record, data_dir, engine, workers, ray_address, batch_size, output):
    """Retrain without every processed request's points and retire their patches (status consolidated).

    Needs a model from `prune train --recorded`. Only the SISA shards holding withdrawn points retrain, from
    their first affected slice, one task per shard on Ray or local processes; requests keep arriving and
    being processed meanwhile. A killed run changes nothing and resumes when run again.

    \b
    Example: prune ledger consolidate --model model.safetensors --engine ray --workers 2
    """
    _require(ledger_path)
    with Ledger(ledger_path) as led:
        result = led.consolidate(model_path, engine=engine, workers=workers, ray_address=ray_address,
                                 record=record, data_dir=data_dir, batch_size=batch_size, progress=output.progress)
    output.result(result.to_dict(), result.summary())


# --- the old spellings, kept for one release ---------------------------------------------------------------------

@group(hidden=True)
def request() -> None:
    """Deprecated: use `prune ledger add|list|undo`."""


for _name, _cmd in (("add", add_cmd), ("list", list_cmd), ("undo", undo_cmd)):
    request.add_command(deprecated_alias(f"prune request {_name}", f"prune ledger {_name}", _cmd))
process_alias = deprecated_alias("prune process", "prune ledger process", process_cmd)


def register(cli_group: click.Group) -> None:
    """Add ``ledger`` (and the hidden old spellings ``request``, ``process``) to a command group."""
    for cmd in (ledger, request, process_alias):
        cli_group.add_command(cmd)
