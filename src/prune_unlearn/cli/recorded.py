"""The options of ``prune train --recorded`` (replayable training) and the engine options it shares with
``prune ledger consolidate``.

``--engine``/``--workers``/``--ray-address`` (:func:`engine_options`) choose where the shard tasks run, for both.
"""

from __future__ import annotations

import functools
from pathlib import Path

import click

from ..errors import InputValidationError
from ..ops.engine import ENGINES

__all__ = ["engine_options", "recorded_options", "RecordedTraining"]


def engine_options(f):
    f = click.option("--ray-address", default=None,
                     help="Join the Ray cluster at HOST:PORT (default: a local Ray instance on this machine).")(f)
    f = click.option("--workers", type=click.IntRange(min=1), default=None,
                     help="Shard tasks run at once (default: every CPU; 1 without Ray: in this process).")(f)
    return click.option("--engine", type=click.Choice(ENGINES), default="auto", show_default=True,
                        help="Where shard tasks run: Ray (pip install 'prune-unlearn[ray]'), local processes, or "
                             "auto (Ray when installed).")(f)


class RecordedTraining:
    """The ``--recorded`` options of ``prune train``, and what it does with them."""

    def __init__(self, record, shards, slices, epochs_per_slice, engine, workers, ray_address):
        self.record, self.shards, self.slices, self.epochs_per_slice = record, shards, slices, epochs_per_slice
        self.engine, self.workers, self.ray_address = engine, workers, ray_address

    def run(self, ds, spec, recipe, out: Path, device: str, progress: bool) -> tuple[dict, str]:
        """Train, save the model with its record named in the header; the result's data and human text."""
        from ..core.serialization import save
        from ..experiments.recorded import train_recorded
        from ..ops.engine import make_engine
        from ..unlearn.metrics import accuracy, predict

        if device != "cpu":
            raise InputValidationError(f"Recorded training runs on the CPU (its determinism is a CPU guarantee); got "
                                       f"--device {device}. HINT: leave --device out.")
        root = self.record or out.with_name(out.name + ".record")
        with make_engine(self.engine, workers=self.workers, address=self.ray_address) as engine:
            described = engine.describe()
            result = train_recorded(ds, spec, recipe, root, shards=self.shards, slices=self.slices,
                                    epochs_per_slice=self.epochs_per_slice, engine=engine, progress=progress)
        test_acc = accuracy(predict(result.model, ds.X_test), ds.y_test)
        info = {"dataset": ds.name, "recipe": recipe.to_dict(), "seed": recipe.seed, "device": "cpu",
                "train_seconds": result.seconds, "test_accuracy": test_acc, "engine": described,
                "training_record": result.info()}
        save(result.model, out, info=info)
        human = (f"trained {result.record.shards} shard(s) × {result.record.slices} slice(s) of {spec['kind']} on "
                 f"{ds.name} ({described['name']}, {described['workers']} worker(s)) in {result.seconds:.1f} s: test "
                 f"accuracy {100 * test_acc:.2f}% → {out}; training record {result.record_sha256[:12]}… in {root}")
        return {"model": str(out), **info}, human


def recorded_options(f):
    """``--recorded`` and its options; the command receives ``recorded``: a :class:`RecordedTraining` or None."""
    @functools.wraps(f)
    def wrapper(*args, recorded, record, shards, slices, epochs_per_slice, engine, workers, ray_address, **kwargs):
        if not recorded and (record or shards != 1 or slices != 1 or epochs_per_slice or ray_address):
            raise click.UsageError("--record, --shards, --slices, --epochs-per-slice and --ray-address go with "
                                   "--recorded.")
        opts = RecordedTraining(record, shards, slices, epochs_per_slice, engine, workers, ray_address) \
            if recorded else None
        return f(*args, recorded=opts, **kwargs)

    options = [
        click.option("--recorded", is_flag=True,
                     help="Replayable training: record recipe, seeds, data manifest and every checkpoint, so "
                          "`prune ledger consolidate` can retrain without withdrawn points."),
        click.option("--record", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="The record store folder (default: <out>.record)."),
        click.option("--shards", type=click.IntRange(min=1), default=1, show_default=True,
                     help="SISA shards; the model is their averaged logits (for MLPs, again an MLP)."),
        click.option("--slices", type=click.IntRange(min=1), default=1, show_default=True,
                     help="SISA slices per shard (a checkpoint after each)."),
        click.option("--epochs-per-slice", type=click.IntRange(min=1), default=None,
                     help="Epochs per slice (default: SISA's round(2·epochs/(slices+1)))."),
    ]
    wrapper = engine_options(wrapper)
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper
