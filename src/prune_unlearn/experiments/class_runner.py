"""Table V of the paper: whole-class unlearning (Algorithm 2) of randomly drawn class labels."""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .._validation import check_choice
from ..core.domain import data_feature_box, feature_box
from ..core.split import split_model
from ..core.models import default_architecture
from .datasets import load_dataset
from .feature_space import features, head_only
from .model_cache import train_base, train_without
from .reporting import machine_description, mean_std
from .runner import FEATURE_CLAIMS
from .training import recipe_for, width_for

__all__ = ["ClassRunOptions", "run_table5"]


@dataclass
class ClassRunOptions:
    """Conv-net settings of :func:`run_table5` (see :class:`ExperimentConfig` for the first five)."""

    width: float | None = None
    baseline_epochs: int | None = None    # epochs of the retraining without the class
    feature_domain: str = "ibp"
    feature_margin: float = 0.1
    cache_dir: str | None = None
    retrain_base: bool = False
    retrain_labels: int | None = None     # retrain for the first N distinct labels only (None: every label)
    device: str = "cpu"                   # where the base model and the retraining train


class _ClassView:
    """What forget_class sees. An MLP: the model and the data. A conv net: its head over features computed once.

    For a conv net, the train/test features are computed once and every trial runs on the head alone (the
    Table V metrics are functions of the features); the features of each trial's class members are computed
    again inside the timed part, so the unlearning time includes the conv layers a real request needs. The
    domain is the feature box (interval propagation of the input box, or the data box) that ``forget_class``
    would derive itself.
    """

    def __init__(self, base: nn.Module, ds, opt: ClassRunOptions):
        self.base = base
        split = split_model(base)
        if isinstance(split.prefix, (nn.Identity, nn.Flatten)) or not any(True for _ in split.prefix.parameters()):
            self.model, self.domain, self.box_source = base, (ds.domain_lower, ds.domain_upper), "input box"
            self.train, self.test, self.conv = (ds.X_train, ds.y_train), (ds.X_test, ds.y_test), False
            return
        if opt.feature_domain == "data":
            lo, hi = data_feature_box(base, ds.X_train, margin=opt.feature_margin)
            self.box_source = f"training features ± {opt.feature_margin:.0%} of their range"
        else:
            lo, hi, self.box_source = feature_box(split, ds.domain_lower, ds.domain_upper, ds.input_shape)
        self.model, self.domain, self.conv = head_only(base), (lo, hi), True
        self.train = (features(base, ds.X_train), ds.y_train)
        self.test = (features(base, ds.X_test), ds.y_test)

    def class_inputs(self, X: torch.Tensor) -> torch.Tensor:
        return features(self.base, X) if self.conv else X


def run_table5(dataset: str, out_dir: str | Path, *, data_dir=None, trials: int = 20, seed: int = 0,
               epochs: int | None = None, radius_scale: float = 1.0, radius: str = "per-member",
               max_relaxed: int = 1024, intermediate: str = "crown", decision_gate: bool = True,
               retrain: bool = True, options: ClassRunOptions | None = None, log=print) -> dict:
    """Table V: whole-class unlearning of ``trials`` class labels drawn at random (seeded, with
    replacement across trials as in the paper's "randomly selecting the category labels 20 times"),
    mean ± std of ``A_u``, ``A_tes_u``, ``A_res``, ``A_tes_r`` before/after, and the time against
    retraining without the class (one retraining per distinct label)."""
    from ..unlearn.whole_class import forget_class

    opt = options or ClassRunOptions()
    check_choice("feature_domain", "run_table5", opt.feature_domain, ("ibp", "data"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(dataset, data_dir)
    width = opt.width if opt.width is not None else width_for(ds.name)
    spec = default_architecture(ds.name, ds.input_dim, ds.num_classes, ds.input_shape, width=width)
    recipe = recipe_for(ds.name, seed=seed, epochs=epochs)
    r_recipe = recipe_for(ds.name, seed=seed, epochs=opt.baseline_epochs or epochs)
    base, base_seconds = train_base(opt, ds, spec, recipe, out, False, log)
    view = _ClassView(base, ds, opt)
    rng = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, ds.num_classes, (trials,), generator=rng).tolist()
    retrain_seconds: dict[int, float] = {}
    rows = []
    for trial, label in enumerate(labels):
        cls = ds.y_train == label
        t = time.perf_counter()
        X_class = view.class_inputs(ds.X_train[cls])  # a conv net's requests start with its conv layers
        feature_seconds = time.perf_counter() - t
        res = forget_class(view.model, label, X_class, seed=seed + trial, radius_scale=radius_scale,
                           radius=radius, max_relaxed=max_relaxed, intermediate=intermediate,
                           decision_gate=decision_gate, domain=view.domain, train_data=view.train,
                           test_data=view.test)
        unlearn_seconds = feature_seconds + res.report.unlearn_seconds  # forget_class's own time, metrics excluded
        if retrain and label not in retrain_seconds and (opt.retrain_labels is None
                                                         or len(retrain_seconds) < opt.retrain_labels):
            retrain_seconds[label] = train_without(opt, ds, spec, r_recipe, ~cls, f"class-{label}", out, log)[1]
        row = {"trial": trial, "label": label, **res.report.whole_class.metrics(), "unlearn_seconds": unlearn_seconds,
               "forget_class_seconds": res.report.unlearn_seconds, "feature_seconds": feature_seconds,
               "relaxed_supports": sum(r["relaxed_supports"] for r in res.report.rounds),
               "crown_points": res.report.whole_class.crown_points}
        if label in retrain_seconds:
            row["retrain_seconds"] = retrain_seconds[label]
            row["unlearn_vs_retrain"] = unlearn_seconds / retrain_seconds[label]
        rows.append(row)
        log(f"[{ds.name}] trial {trial} class {label}: A_u {row['A_u_before']:.4f}->{row['A_u_after']:.4f} "
            f"A_tes_u {row['A_tes_u_before']:.4f}->{row['A_tes_u_after']:.4f} A_tes_r {row['A_tes_r_before']:.4f}->"
            f"{row['A_tes_r_after']:.4f} reach {row['reach_other_test']:.4f} {row['unlearn_seconds']:.1f} s")
    result = {"dataset": ds.name, "trials": trials, "seed": seed, "radius_scale": radius_scale, "radius": radius,
              "max_relaxed": max_relaxed, "intermediate": intermediate, "decision_gate": decision_gate,
              "recipe": recipe.to_dict(), "retrain_recipe": r_recipe.to_dict(), "options": asdict(opt),
              "feature_box": view.box_source, "base_train_seconds": base_seconds,
              "machine": machine_description(), "rows": rows}
    (out / f"table5-{ds.name}.json").write_text(json.dumps(result, indent=1))
    with open(out / f"table5-{ds.name}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=sorted({k for r in rows for k in r}))
        w.writeheader()
        w.writerows(rows)
    lines = [f"## Table V — {ds.name}: whole-class unlearning, {trials} random labels (%, mean ± std)", "",
             f"radius = {radius}, radius_scale = {radius_scale}, max_relaxed = {max_relaxed}, "
             f"intermediate = {intermediate}, decision_gate = {decision_gate}"
             + (f", VGG16 width = {width:g}, feature domain = {opt.feature_domain} (certificates hold for "
                f"{FEATURE_CLAIMS[opt.feature_domain].format(margin=opt.feature_margin)})"
                if spec["kind"] == "vgg16" else "")
             + (f"; retraining: {r_recipe.epochs} epochs (base model: {recipe.epochs})"
                if r_recipe.epochs != recipe.epochs else ""), "",
             "| metric | before | after |", "|---|---|---|"]
    for key in ("A_u", "A_tes_u", "A_res", "A_tes_r"):
        lines.append(f"| {key} | {mean_std([100 * r[f'{key}_before'] for r in rows])} | "
                     f"{mean_std([100 * r[f'{key}_after'] for r in rows])} |")
    lines.append(f"| changed predictions, other classes (test) | | "
                 f"{mean_std([r['changed_other_test'] for r in rows])} |")
    lines.append(f"| other-class test inputs inside a relaxed support, gate ignored (%) | | "
                 f"{mean_std([100 * r['reach_other_test'] for r in rows])} |")
    lines.append(f"| unlearning seconds | | {mean_std([r['unlearn_seconds'] for r in rows])} |")
    if retrain_seconds:
        lines.append(f"| unlearning ÷ retraining (%) | | "
                     f"{mean_std([100 * r['unlearn_vs_retrain'] for r in rows if 'unlearn_vs_retrain' in r])} |")
    (out / f"table5-{ds.name}.md").write_text("\n".join(lines) + "\n")
    return result
