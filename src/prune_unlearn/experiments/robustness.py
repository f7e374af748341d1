"""Robustness of forgetting (issue 11): are forgotten points still recalled after an imperceptible change?

``residual recall``: the share of perturbed copies of the forgotten points that the unlearned model still
predicts with their original label — Gaussian noise of several σ (clipped to the domain), 10 draws per point,
and the four one-pixel shifts of image data. Run for PRUNE region-only, PRUNE neighbourhoods of several radii
(fixed and searched), and, side by side, Retrain, SISA, Amnesiac and FU; with the certified radii and the
exact changed-prediction counts. ``prune bench robustness --data mnist`` writes the table.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch

from ..unlearn.forget import forget
from ..unlearn.metrics import accuracy, predict
from ..core.models import default_architecture
from .datasets import load_dataset
from .training import recipe_for, train_from_spec

__all__ = ["residual_recall", "run_robustness", "SIGMAS", "PRUNE_VARIANTS"]

SIGMAS = (0.001, 0.003, 0.01, 0.03)
# PRUNE variants: (name, forget keywords)
PRUNE_VARIANTS = (
    ("prune region-only", {"radius": None}),
    ("prune r=2/255", {"radius": 2 / 255}),
    ("prune r=4/255", {"radius": 4 / 255}),
    ("prune r=8/255", {"radius": 8 / 255}),
    ("prune r=12/255", {"radius": 12 / 255}),
    ("prune search", {"radius": "search"}),
)


def _shifts(X: torch.Tensor, image_shape) -> list[torch.Tensor]:
    """The four one-pixel shifts (zero fill) of images shaped ``image_shape`` (H, W) or (C, H, W)."""
    imgs = X.reshape(len(X), *image_shape)
    out = []
    for dim, step in ((-1, 1), (-1, -1), (-2, 1), (-2, -1)):
        s = torch.roll(imgs, shifts=step, dims=dim)
        index = [slice(None)] * s.dim()
        index[dim] = 0 if step > 0 else -1
        s[tuple(index)] = 0
        out.append(s.reshape(X.shape))
    return out


@torch.no_grad()
def residual_recall(model, X, y, *, sigmas=SIGMAS, draws: int = 10, seed: int = 0, domain=(0.0, 1.0),
                    image_shape=None) -> dict:
    """Share of perturbed copies of ``X`` that ``model`` predicts as ``y`` (original label), per perturbation."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = domain
    out = {"points": accuracy(predict(model, X), y)}
    for sigma in sigmas:
        noisy = X.unsqueeze(1) + sigma * torch.randn((len(X), draws, *X.shape[1:]), generator=gen)
        noisy = noisy.clamp(lo, hi).reshape(len(X) * draws, *X.shape[1:])
        out[f"noise_{sigma:g}"] = accuracy(predict(model, noisy), y.repeat_interleave(draws))
    if image_shape is not None:
        shifted = torch.cat(_shifts(X, image_shape))
        out["shift_1px"] = accuracy(predict(model, shifted), y.repeat(4))
    return out


def _baseline(name: str, requests):
    from .baselines import create_baseline
    from .runner import ExperimentConfig

    cfg = ExperimentConfig(dataset="")
    if name == "sisa":
        return create_baseline("sisa", shards=cfg.sisa_shards, slices=cfg.sisa_slices)
    if name == "amnesiac":
        return create_baseline("amnesiac", recovery_epochs=cfg.amnesiac_recovery_epochs,
                               recovery_steps=cfg.amnesiac_recovery_steps, request_sets=[requests])
    if name == "fu":
        return create_baseline("fu", damping=cfg.fu_damping, hessian_samples=cfg.fu_hessian_samples,
                               cg_iterations=cfg.fu_cg_iterations, step_scale=cfg.fu_step_scale)
    return create_baseline(name)


def run_robustness(dataset: str, out_dir, *, data_dir=None, n: int = 500, seed: int = 0, epochs=None,
                   methods=("retrain", "sisa", "amnesiac", "fu"), variants=PRUNE_VARIANTS, base_model=None,
                   baseline_epochs: int | None = None, log=print) -> dict:
    """The robustness table for one data set; writes ``robustness-<data>.{json,md}`` into ``out_dir``.

    ``base_model``: a trained model to unlearn from instead of training one with the data set's recipe;
    ``baseline_epochs``: epochs of every baseline's training (Retrain, SISA, Amnesiac, FU) when the full budget
    does not fit (default: the recipe's); the table says so."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(dataset, data_dir)
    spec = default_architecture(ds.name, ds.input_dim, ds.num_classes, ds.input_shape)
    recipe = recipe_for(ds.name, seed=seed, epochs=epochs)
    b_recipe = recipe_for(ds.name, seed=seed, epochs=baseline_epochs or epochs)
    idx = torch.randperm(len(ds.y_train), generator=torch.Generator().manual_seed(seed))[:n]
    X_u, y_u = ds.X_train[idx], ds.y_train[idx]
    X_rem, y_rem = ds.remaining(idx)
    side = int(round(ds.input_dim ** 0.5))
    image_shape = ds.input_shape if len(ds.input_shape) >= 2 else (side, side) if side * side == ds.input_dim else None
    domain = (float(torch.as_tensor(ds.domain_lower).min()), float(torch.as_tensor(ds.domain_upper).max()))
    t = time.perf_counter()
    base = base_model if base_model is not None else train_from_spec(spec, ds.X_train, ds.y_train, recipe).model
    train_seconds = time.perf_counter() - t
    rows = []

    def row(name, model, unlearn_s, extra=None):
        tes_b, tes_a = predict(base, ds.X_test), predict(model, ds.X_test)
        res_b, res_a = predict(base, X_rem), predict(model, X_rem)
        r = {"method": name, "unlearn_seconds": unlearn_s,
             **{f"recall_{k}": v for k, v in residual_recall(model, X_u, y_u, seed=seed, domain=domain,
                                                               image_shape=image_shape).items()},
             "A_tes": accuracy(tes_a, ds.y_test), "changed_tes": int((tes_b != tes_a).sum()),
             "changed_res": int((res_b != res_a).sum()), **(extra or {})}
        rows.append(r)
        log(f"{name:18s} recall points {r['recall_points']:.3f} σ=0.003 {r['recall_noise_0.003']:.3f} "
            f"σ=0.01 {r['recall_noise_0.01']:.3f} shift {r.get('recall_shift_1px', float('nan')):.3f} "
            f"changed {r['changed_tes']}/{r['changed_res']} {unlearn_s:.2f} s")

    row("base (before)", base, 0.0)
    for name, kw in variants:
        res = forget(base, X_u, labels=y_u, seed=seed, domain=(ds.domain_lower, ds.domain_upper), **kw)
        rad = res.model.neighbourhoods.radius if res.model.neighbourhoods is not None else None
        extra = {"certified": res.report.n_certified_neighbourhood or res.report.n_certified_region,
                 "failed": res.report.n_failed, "patch_linf_mean": res.report.patch_linf_mean}
        if rad is not None and len(rad):
            extra.update({"radius_min_255": float(rad.min()) * 255, "radius_median_255": float(rad.median()) * 255,
                          "radius_max_255": float(rad.max()) * 255})
        row(name, res.model, res.report.unlearn_seconds, extra)
    for name in methods:
        t = time.perf_counter()
        if name == "retrain":
            model = train_from_spec(spec, X_rem, y_rem, b_recipe).model
            row(name, model, time.perf_counter() - t)
            continue
        fitted = _baseline(name, idx).fit(spec, ds.X_train, ds.y_train, b_recipe)
        result = copy.deepcopy(fitted).forget(idx)
        row(name, result.model, result.unlearn_seconds)
    result = {"dataset": ds.name, "n": n, "seed": seed, "train_seconds": train_seconds,
              "base_epochs": None if base_model is not None else recipe.epochs, "baseline_epochs": b_recipe.epochs,
              "threads": torch.get_num_threads(), "rows": rows}
    (out / f"robustness-{ds.name}.json").write_text(json.dumps(result, indent=1))
    (out / f"robustness-{ds.name}.md").write_text(_markdown(result))
    return result


def _markdown(result: dict) -> str:
    keys = [k for k in result["rows"][0] if k.startswith("recall_")]
    head = ["method", *[k[len("recall_"):] for k in keys], "radius min/med/max (·/255)", "changed test / remaining",
            "unlearn s"]
    lines = [f"Residual recall (share of perturbed copies still predicted with the original label, %), "
             f"{result['dataset']}, |D_U| = {result['n']}, seed {result['seed']}, 10 draws per point"
             f"; baselines (Retrain, SISA, Amnesiac, FU) trained {result.get('baseline_epochs')} epoch(s)"
             + (f" (the base model: {result['base_epochs']})" if result.get("base_epochs") else " (the base model: given)"),
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        radii = (f"{r['radius_min_255']:.2f} / {r['radius_median_255']:.2f} / {r['radius_max_255']:.2f}"
                 if "radius_min_255" in r else "–")
        lines.append("| " + " | ".join([r["method"], *[f"{100 * r[k]:.1f}" for k in keys], radii,
                                        f"{r['changed_tes']} / {r['changed_res']}", f"{r['unlearn_seconds']:.2f}"])
                     + " |")
    return "\n".join(lines) + "\n"
