"""``prune bench``: one of the paper's tables or figures, from :mod:`prune_unlearn.experiments.runner`."""

from __future__ import annotations

from pathlib import Path

import click

from ..experiments.privacy.methods import REFERENCE_FOLDS, REFERENCE_STEPS
from ..experiments.runner import METHODS, ClassRunOptions, ExperimentConfig, run_convergence, run_table3, run_table5
from .options import IntList, NameList, bound_option, data_options, relaxed_support_options
from .output import json_option
from .policy import command

__all__ = ["bench", "EXPERIMENTS"]


def _table3(o: dict, dest: Path, log) -> None:
    cfg = ExperimentConfig(dataset=o["data_name"], data_dir=str(o["data_dir"]) if o["data_dir"] else None,
                           sizes=tuple(o["sizes"]), seeds=o["seeds"], methods=o["methods"], prune_bound=o["bound"],
                           epochs=o["epochs"], width=o["width"], baseline_epochs=o["baseline_epochs"])
    run_table3(cfg, dest, log=log)


def _convergence(vary: str):
    def run(o: dict, dest: Path, log) -> None:
        values = o["k_values"] if vary == "K" else o["sizes"]
        fixed = 100 if vary == "K" else 4  # the paper: |D_U| = 100 for Figure 4, K = 4 for Figure 5
        run_convergence(o["data_name"], dest, vary=vary, values=values, fixed=fixed, data_dir=o["data_dir"],
                        seeds=o["seeds"], bound=o["bound"], epochs=o["epochs"], log=log)

    return run


def _table5(o: dict, dest: Path, log) -> None:
    run_table5(o["data_name"], dest, data_dir=o["data_dir"], trials=o["trials"], epochs=o["epochs"],
               radius_scale=o["radius_scale"], intermediate=o["intermediate"], decision_gate=o["decision_gate"],
               log=log, options=ClassRunOptions(width=o["width"], baseline_epochs=o["baseline_epochs"]))


def _privacy(o: dict, dest: Path, log) -> None:
    """Every attack against every method (docs/privacy.md); --methods: "prune" = every PRUNE target."""
    from ..experiments.runner import PrivacyConfig, run_privacy

    run_privacy(PrivacyConfig(dataset=o["data_name"], data_dir=str(o["data_dir"]) if o["data_dir"] else None,
                              methods=tuple(o["methods"]), n_shadows=o["shadows"],
                              n_calibration=o["calibration"], workers=o["workers"], folds=o["folds"],
                              reference_steps=o["reference_steps"], reference_calibration=o["reference_calibration"],
                              **({} if o["epochs"] is None else {"epochs": o["epochs"]})),  # default: DEFAULT_EPOCHS
                dest, log=log)


def _robustness(o: dict, dest: Path, log) -> None:
    from ..experiments.robustness import run_robustness

    from ..core.serialization import load

    base = load(o["base_model"]).eval() if o.get("base_model") else None
    run_robustness(o["data_name"], dest, data_dir=o["data_dir"], epochs=o["epochs"], base_model=base,
                   baseline_epochs=o["baseline_epochs"], log=log)


# experiment -> (runner call, the Markdown file it writes); table3, table4 and fig3 come from the same runs.
EXPERIMENTS = {
    "table3": (_table3, "table3"),
    "table4": (_table3, "table3"),
    "fig3": (_table3, "table3"),
    "fig4": (_convergence("K"), "fig4"),
    "fig5": (_convergence("n"), "fig5"),
    "table5": (_table5, "table5"),
    "privacy": (_privacy, "privacy"),
    "robustness": (_robustness, "robustness"),
}


@command()
@click.argument("experiment", type=click.Choice(list(EXPERIMENTS)))
@data_options
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True, help="Repetitions (seeds 0…N-1).")
@click.option("--sizes", type=IntList(), default="100,200,300,500", show_default=True,
              help="|D_U| values (table3/4, fig3, fig5).")
@click.option("--methods", type=NameList(METHODS), default=",".join(METHODS), show_default=True,
              help="Methods for table3/table4/fig3.")
@click.option("--clusters", "k_values", type=IntList(), default="2,3,4,6,8", show_default=True,
              help="K values for fig4.")
@bound_option
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Override the training recipe's epochs (privacy: default 5, so that the table fits an hour).")
@click.option("--trials", type=click.IntRange(min=1), default=20, show_default=True,
              help="Random class labels drawn for table5.")
@click.option("--width", type=click.FloatRange(min=0, min_open=True), default=None,
              help="VGG16 channel multiplier for cifar10 (1 = full VGG16; default: the CPU recipe's 0.25).")
@click.option("--baseline-epochs", type=click.IntRange(min=1), default=None,
              help="Epochs of every retraining (Retrain, SISA, Amnesiac, FU, table5's) when the full budget does "
                   "not fit; default: the base model's.")
@click.option("--base-model", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="robustness: a saved base model to unlearn from instead of training one.")
@click.option("--shadows", type=click.IntRange(min=1), default=16, show_default=True,
              help="privacy: shadow worlds for (U-)LiRA (at least 6; each candidate is IN about a third of them).")
@click.option("--calibration", type=click.IntRange(min=0), default=2000, show_default=True,
              help="privacy: unseen test points held out (never attacked) to calibrate prune-unseen-cal's references.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="privacy: worker processes, one world each at a time (1 torch thread each).")
@click.option("--folds", type=click.IntRange(min=2), default=REFERENCE_FOLDS, show_default=True,
              help="privacy: K of prune-unseen's references (each world trains K models, each without one fold of "
                   "its data, before any request).")
@click.option("--reference-steps", type=click.Choice(REFERENCE_STEPS), default="epochs", show_default=True,
              help="privacy: train each of prune-unseen's references for the recipe's epochs, or for as many SGD "
                   "steps as the plain model ('matched': fewer rows, more epochs).")
@click.option("--reference-calibration", type=click.Choice(("temperature", "affine")), default="temperature",
              show_default=True, help="privacy: how prune-unseen-cal calibrates its references on the held-out "
                                      "points (one temperature, or an affine map of the logits).")
@relaxed_support_options
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("results"), show_default=True,
              help="Results folder (a subfolder per data set).")
@json_option
def bench(experiment, out, output, **options):
    """Reproduce one of the paper's tables or figures; writes CSV, Markdown, PNG and config.json.

    table3, table4 and fig3 come from the same runs (Table III, IV, Figure 3). --radius-scale,
    --intermediate and --decision-gate apply to table5. Prints the Markdown file's path.

    \b
    Example: prune bench table3 --data mnist --data-dir ../shared/data/mnist
    """
    run, stem = EXPERIMENTS[experiment]
    dest = out / options["data_name"]
    run(options, dest, log=output.note)  # progress lines to stderr, results in files
    markdown = dest / f"{stem}-{options['data_name']}.md"
    output.result({"experiment": experiment, "data": options["data_name"], "folder": str(dest),
                   "markdown": str(markdown)}, str(markdown))
