"""``prune forget`` (chosen training points) and ``prune forget-class`` (a whole class, Algorithm 2)."""

from __future__ import annotations

from pathlib import Path

import click
import torch

from .._crash import crash_point
from ..core.serialization import atomic_write_text, load_model, save
from ..errors import InputValidationError
from ..experiments.datasets import Dataset, load_dataset
from ..experiments.training import recipe_for, recorded_recipe, retrain
from ..unlearn.forget import ForgetResult, forget
from ..unlearn.reference import Reference
from ..unlearn.whole_class import forget_class
from .options import ClassTarget, IntList, bound_option, data_options, forget_options, model_path_option
from .options import out_folder_options, radius_option, read_indices, relaxed_support_options, seed_option
from .output import output_options
from .paths import OutputFolder
from .policy import command

__all__ = ["forget_cmd", "forget_class_cmd", "forget_on_dataset", "random_indices", "write_outputs",
           "OUTPUT_FILES"]

_OUT_HELP = "Folder for patched.safetensors, report.json, certificate.json."


def random_indices(ds: Dataset, count: int, seed: int) -> torch.Tensor:
    """``count`` distinct training-set indices drawn with ``seed``."""
    if count > len(ds.y_train):
        raise InputValidationError(f"--count {count} exceeds the {len(ds.y_train)} training points.")
    return torch.randperm(len(ds.y_train), generator=torch.Generator().manual_seed(seed))[:count]


def forget_on_dataset(model, ds: Dataset, idx: torch.Tensor, *, forget_kwargs: dict, seed: int, progress: bool,
                      retrain_recipe=None) -> ForgetResult:
    """Forget training points ``idx`` of ``ds``, evaluated on the test and remaining data; with ``retrain_recipe``,
    the report also has the time of retraining on the remaining data."""
    X_rem, y_rem = ds.remaining(idx)
    result = forget(model, ds.X_train[idx], labels=ds.y_train[idx], seed=seed, **forget_kwargs,
                    domain=(ds.domain_lower, ds.domain_upper), test_data=(ds.X_test, ds.y_test),
                    remaining_data=(X_rem, y_rem), progress=progress)
    if retrain_recipe is None:
        return result
    retrained = retrain(model, X_rem, y_rem, retrain_recipe, progress=progress)
    return result._replace(report=result.report.with_retraining(retrained.seconds))


OUTPUT_FILES = {"model": "patched.safetensors", "report": "report.json", "certificate": "certificate.json",
                "indices": "forget_indices.txt"}


def write_outputs(folder: Path, out: Path, result: ForgetResult, idx: torch.Tensor | None, info: dict,
                  report=None) -> dict:
    """The patched model, report, certificate and (with ``idx``) forgotten indices, written into ``folder`` (the
    temporary folder of :class:`.paths.OutputFolder`); their final paths under ``out`` by kind."""
    names = {k: v for k, v in OUTPUT_FILES.items() if k != "indices" or idx is not None}
    save(result.model, folder / names["model"], info=info)
    crash_point("output_model_written")
    (report or result.report).to_json(folder / names["report"])
    result.certificate.to_json(folder / names["certificate"])
    if idx is not None:
        atomic_write_text(folder / names["indices"], "\n".join(str(int(i)) for i in idx) + "\n")
    return {k: str(out / v) for k, v in names.items()}


@command(name="forget")
@model_path_option("Saved model (.safetensors from `prune train`, or a patched model), or a PyTorch state dict of "
                   "an MLP (.pt) with --layers, or an ONNX MLP (.onnx: Gemm/MatMul/Add/Relu/Flatten).")
@click.option("--layers", type=IntList(), default=None,
              help="Layer sizes of an MLP state dict given as --model, e.g. 784,256,256,10.")
@data_options
@click.option("--indices", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Text file with training-set indices to forget (whitespace/comma separated).")
@click.option("--count", type=click.IntRange(min=1), default=None,
              help="Forget this many random training points (drawn with --seed).")
@forget_options
@click.option("--reference", "reference_paths", multiple=True,
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="--target unseen: a model (.safetensors) that never trained on the points; repeat for several "
                   "(each point uses the first that never saw it), each with its --reference-indices.")
@click.option("--reference-indices", "reference_indices", multiple=True,
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Training-set indices each --reference was trained on (same order as --reference).")
@click.option("--calibrate-on", "calibrate_on", default=None,
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="--target unseen: test-split indices of held-out points (neither --model nor any --reference "
                   "trained on them); each reference gets a logit scale fitted there so its losses are distributed "
                   "as --model's. Keep them apart from any test points an evaluation attacks.")
@seed_option
@click.option("--retrain", "with_retraining", is_flag=True,
              help="Also retrain on the remaining data (with the recipe recorded by `prune train`, else the data "
                   "set's default with --seed) and report the time ratio.")
@out_folder_options(_OUT_HELP)
@output_options
def forget_cmd(model_path, layers, data_name, data_dir, indices, count, forget_kwargs, reference_paths,
               reference_indices, calibrate_on, seed, with_retraining, out, overwrite, output):
    """Forget training points of a saved model; write the patched model, report and certificate.

    \b
    Example: prune forget --model digits.safetensors --data digits --count 100 --out forgot/
    \b
    As if never seen: prune forget --model digits.safetensors --data digits --count 100 --target unseen
        --reference fold0.safetensors --reference-indices fold0-seen.txt --out forgot/
    """
    if (indices is None) == (count is None):
        raise click.UsageError("Use exactly one of --indices or --count.")
    if len(reference_paths) != len(reference_indices):
        raise click.UsageError("Give one --reference-indices file for every --reference.")
    if calibrate_on is not None and not reference_paths:
        raise click.UsageError("--calibrate-on calibrates --reference models; give at least one --reference.")
    with OutputFolder(out, overwrite=overwrite) as folder:  # --out checked before any work
        model = load_model(model_path, layers=layers)
        ds = load_dataset(data_name, data_dir)
        idx = read_indices(indices, len(ds.y_train)) if indices is not None else random_indices(ds, count, seed)
        if reference_paths:
            forget_kwargs = {**forget_kwargs, "reference": [
                Reference(load_model(p).eval(), ds.X_train[read_indices(i, len(ds.y_train))], name=p.name)
                for p, i in zip(reference_paths, reference_indices)]}
            if calibrate_on is not None:
                held = read_indices(calibrate_on, len(ds.y_test))
                forget_kwargs["reference"] = [r.calibrated(model.eval(), ds.X_test[held], ds.y_test[held])
                                              for r in forget_kwargs["reference"]]
        recipe = (recorded_recipe(model_path) or recipe_for(ds.name, seed=seed)) if with_retraining else None
        result = forget_on_dataset(model, ds, idx, forget_kwargs=forget_kwargs, seed=seed, progress=output.progress,
                                   retrain_recipe=recipe)
        files = write_outputs(folder, out, result, idx, {"dataset": ds.name, "forget_count": len(idx),
                                                         "source_model": str(model_path)})
    output.result({**result.report.to_dict(), "files": files},
                  result.report.summary() + f"\nwrote {', '.join(files.values())}")


def class_summary(report, label: int, dataset: str, decision_gate: bool = True) -> str:
    """The human summary of a ``forget-class`` run."""
    e = report.whole_class.metrics()
    changed = (f"changed predictions on inputs of other classes: train {e['changed_other_train']}, test "
               f"{e['changed_other_test']}")
    changed += (f" (all of them inputs the base model assigned to class {label}, i.e. misclassified as {label}: the "
                "decision gate leaves every other input's prediction unchanged)" if decision_gate else
                " (no decision gate: relaxed supports may reach inputs the base model assigns to other classes)")
    return (f"forgot class {label} of {dataset}: {report.n_forgotten}/{report.n_forget} training points "
            f"mispredicted in {report.unlearn_seconds:.1f} s\n"
            f"A_u {100 * e['A_u_before']:.2f} -> {100 * e['A_u_after']:.2f}   A_tes_u {100 * e['A_tes_u_before']:.2f} "
            f"-> {100 * e['A_tes_u_after']:.2f}\nA_res {100 * e['A_res_before']:.2f} -> {100 * e['A_res_after']:.2f}"
            f"   A_tes_r {100 * e['A_tes_r_before']:.2f} -> {100 * e['A_tes_r_after']:.2f}\n{changed}")


@command(name="forget-class")
@model_path_option("Saved base model (.safetensors from `prune train`, or an ONNX MLP: .onnx of "
                   "Gemm/MatMul/Add/Relu/Flatten).")
@data_options
@click.option("--label", type=click.IntRange(min=0), required=True, help="The class to forget.")
@relaxed_support_options
@radius_option
@click.option("--max-relaxed", type=click.IntRange(min=0), default=1024, show_default=True,
              help="Most CROWN-relaxed supports per round.")
@click.option("--target", type=ClassTarget(), default="random", show_default=True,
              help="'random' or a label to push the class to.")
@bound_option
@seed_option
@click.option("--retrain", "with_retraining", is_flag=True,
              help="Also retrain without the class (with the recipe recorded by `prune train`, else the data set's "
                   "default with --seed) and report the time ratio.")
@out_folder_options(_OUT_HELP)
@output_options
def forget_class_cmd(model_path, data_name, data_dir, label, radius_scale, radius, max_relaxed, intermediate,
                     decision_gate, target, bound, seed, with_retraining, out, overwrite, output):
    """Forget a whole class (Algorithm 2): CROWN-relaxed supports generalise to unseen class points.

    \b
    Example: prune forget-class --model mnist.safetensors --data mnist --label 3 --out forgot-3/
    """
    with OutputFolder(out, overwrite=overwrite) as folder:  # --out checked before any work
        model = load_model(model_path)
        ds = load_dataset(data_name, data_dir)
        cls = ds.y_train == label
        result = forget_class(model, label, ds.X_train[cls], target=target, radius_scale=radius_scale, radius=radius,
                              max_relaxed=max_relaxed, intermediate=intermediate, decision_gate=decision_gate,
                              bound=bound, seed=seed, domain=(ds.domain_lower, ds.domain_upper),
                              train_data=(ds.X_train, ds.y_train), test_data=(ds.X_test, ds.y_test),
                              progress=output.progress)
        report = result.report
        if with_retraining:
            recipe = recorded_recipe(model_path) or recipe_for(ds.name, seed=seed)
            report = report.with_retraining(retrain(model, ds.X_train[~cls], ds.y_train[~cls], recipe,
                                                    progress=output.progress).seconds)
        files = write_outputs(folder, out, result, None, {"dataset": ds.name, "forgotten_class": label}, report)
    output.result({**report.to_dict(), "files": files}, class_summary(report, label, ds.name, decision_gate)
                  + f"\nwrote {', '.join(files.values())}")
