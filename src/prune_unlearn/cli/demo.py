"""``prune demo`` (``make demo``): train on digits, forget random training points, show the evidence."""

from __future__ import annotations

import time
from pathlib import Path

import click

from ..core.models import default_architecture
from ..core.serialization import save
from ..experiments.datasets import load_dataset
from ..experiments.training import recipe_for, train_from_spec
from .forget import forget_on_dataset, random_indices, write_outputs
from .options import forget_options, seed_option
from .output import output_options
from .paths import OutputFolder
from .policy import command

__all__ = ["demo"]


@command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("prune-demo"),
              show_default=True, help="Folder for the outputs; replaced as a whole (it appears complete or not at "
                                      "all, and a rerun replaces the previous demo's folder).")
@click.option("--count", type=click.IntRange(min=1), default=100, show_default=True,
              help="Number of random training points to forget.")
@forget_options
@seed_option
@output_options
def demo(out, count, forget_kwargs, seed, output):
    """Train FC(256×256) on scikit-learn's digits, forget random training points, show the evidence.

    \b
    Example: prune demo --out prune-demo
    """
    t0 = time.perf_counter()
    with OutputFolder(out, overwrite=True) as folder:  # --out checked before any work
        ds = load_dataset("digits")
        if count > len(ds.y_train):
            raise click.BadParameter(f"at most {len(ds.y_train)}", param_hint="--count")
        spec = default_architecture(ds.name, ds.input_dim, ds.num_classes)
        recipe = recipe_for(ds.name, seed=seed)
        output.note(f"training FC(256×256) on {ds.name} ({len(ds.y_train)} train / {len(ds.y_test)} test) …")
        trained = train_from_spec(spec, ds.X_train, ds.y_train, recipe, progress=output.progress)
        idx = random_indices(ds, count, seed)
        output.note(f"forgetting {count} random training points, then retraining without them for comparison …")
        result = forget_on_dataset(trained.model, ds, idx, forget_kwargs=forget_kwargs, seed=seed,
                                   progress=output.progress, retrain_recipe=recipe)
        save(trained.model, folder / "model.safetensors", info={"dataset": ds.name, "recipe": recipe.to_dict()})
        files = write_outputs(folder, out, result, idx, {"dataset": ds.name, "forget_count": count})
        files["base_model"] = str(out / "model.safetensors")
    total = time.perf_counter() - t0
    output.result({**result.report.to_dict(), "files": files, "demo_seconds": total},
                  result.report.summary() + f"\nwrote {', '.join(files.values())}  (demo took {total:.1f} s)")
