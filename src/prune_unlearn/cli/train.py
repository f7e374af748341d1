"""``prune train``: the paper's model for a data set, trained with the authors' recipe."""

from __future__ import annotations

from pathlib import Path

import click

from ..core.models import default_architecture
from ..core.serialization import save
from ..experiments.datasets import load_dataset
from ..experiments.datasets.arrays import is_arrays_path
from ..experiments.training import recipe_for, train_from_spec, width_for
from ..unlearn.metrics import accuracy, predict
from .options import data_options, device_option, seed_option
from .output import output_options
from .paths import check_output_file
from .policy import command
from .recorded import recorded_options

__all__ = ["train"]


@command()
@data_options
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the trained model (.safetensors).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Override the recipe's epochs.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, help="Override the learning rate.")
@click.option("--width", type=click.FloatRange(min=0, min_open=True), default=None,
              help="VGG16 channel multiplier for cifar10 (1 = full VGG16; default: the CPU recipe's 0.25).")
@seed_option
@device_option
@recorded_options
@output_options
def train(data_name, data_dir, out, epochs, lr, width, seed, device, recorded, output):
    """Train the paper's model for a data set with the authors' recipe.

    \b
    With --recorded: replayable training (recipe, seed, data manifest, SISA shards × slices with a checkpoint
    after each slice), which `prune ledger consolidate` retrains from, e.g. `--recorded --shards 8 --slices 4`.

    \b
    Example: prune train --data digits --out digits.safetensors
    """
    check_output_file(out)  # before any work: a bad --out is an error now, not after training
    ds = load_dataset(data_name, data_dir)
    if is_arrays_path(data_name):  # your own arrays: FC(256), the paper's model for tabular data
        spec = {"kind": "mlp", "input_dim": ds.input_dim, "hidden": [256], "num_classes": ds.num_classes}
    else:
        spec = default_architecture(ds.name, ds.input_dim, ds.num_classes, ds.input_shape,
                                    width=width if width is not None else width_for(ds.name))
    recipe = recipe_for(ds.name, epochs=epochs, lr=lr, seed=seed)
    if recorded is not None:  # replayable, sharded training (cli/recorded.py); CPU unless --device was given
        explicit = click.get_current_context().get_parameter_source("device") != click.core.ParameterSource.DEFAULT
        return output.result(*recorded.run(ds, spec, recipe, out, device if explicit else "cpu", output.progress))
    output.note(f"training {spec['kind']} on {ds.name} ({len(ds.y_train)} training points) for {recipe.epochs} "
                f"epochs on {device} …")
    result = train_from_spec(spec, ds.X_train, ds.y_train, recipe, progress=output.progress, device=device)
    result.model.to("cpu")
    test_acc = accuracy(predict(result.model, ds.X_test), ds.y_test)
    train_acc = accuracy(predict(result.model, ds.X_train), ds.y_train)
    info = {"dataset": ds.name, "recipe": recipe.to_dict(), "seed": seed, "device": device,
            "train_seconds": result.seconds,
            "test_accuracy": test_acc, "train_accuracy": train_acc, "history": result.history}
    save(result.model, out, info=info)
    output.result({"model": str(out), **info},
                  f"trained {spec['kind']} on {ds.name} ({device}) in {result.seconds:.1f} s: "
                  f"test accuracy {100 * test_acc:.2f}%, train {100 * train_acc:.2f}% → {out}")
