"""The privacy table: every attack against every method, next to Retrain's numbers (``prune bench privacy``).

One target world (the full training set, ``n_forget`` random points withdrawn) and ``n_shadows``
shadow worlds (the target's remaining data plus ``n_forget`` of the candidates, then those withdrawn;
see :mod:`.lira`) per data set; every method runs in every world (:mod:`.worlds`, cached). Attacks:

* population (forgotten vs every unseen test point): loss, confidence and margin ROC AUC, TPR at 1% and
  0.1% FPR; Yeom et al.'s threshold attack (recall on the forgotten points, false-positive rate on unseen);
* U-LiRA (forgotten vs ``n_unseen`` unseen candidates), online and offline; and LiRA on the model
  before unlearning, which says how identifiable the points were to begin with;
* model difference (before and after): forgotten among remaining training points, and among unseen.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..._hashing import points_sha256, tensor_bytes
from ..._validation import check_choice, param_error
from ...core.models import default_architecture
from ...unlearn.calibration import AFFINE_POINTS_PER_PARAMETER, CALIBRATION_METHODS
from ..baselines.base import derive_seed
from ..datasets import load_dataset
from ..training import recipe_for
from .difference import difference_scores, difference_summary, learned_difference_attack
from .lira import VARIANCE_MODES, assign_shadow_sets, check_shadow_count, likelihood_ratio_attack
from .methods import REFERENCE_FOLDS, REFERENCE_STEPS, resolve_unlearners, with_reference_folds
from .population import SCORES, membership_scores, roc_summary
from .report import write_privacy_report
from .worlds import Pool, World, run_worlds

__all__ = ["PrivacyConfig", "run_privacy", "DEFAULT_METHODS", "DEFAULT_EPOCHS"]

DEFAULT_METHODS = ("retrain", "prune", "sisa", "amnesiac", "fu")
# Every model of every world (17 worlds × ~10 trainings) is trained this many epochs, not the recipe's 20 on MNIST:
# the whole table must fit an hour on 2 cores (docs/results.md, issue 12). None = the recipe's epochs.
DEFAULT_EPOCHS = 5


@dataclass
class PrivacyConfig:
    """Everything the privacy table depends on; written to ``config.json`` and keyed into the cache.

    ``methods`` are names from :func:`~.methods.unlearner_names` or groups (``"prune"`` = every PRUNE
    target); ``n_unseen`` unseen test points join the forgotten ones as (U-)LiRA candidates (≥ 1,000 for
    a TPR at 0.1% FPR); the population attacks use every unseen test point except the ``n_calibration``
    drawn first and held out: no world trains on them and no attack uses them (``prune-unseen-cal``
    calibrates its references there). ``folds``: every world builds ``prune-unseen``'s references the same way,
    K models each trained without one fold of that world's training set, before any request; ``reference_steps``:
    each for the recipe's epochs (``"epochs"``) or for as many SGD steps as the plain model (``"matched"``,
    :func:`~.methods.matched_steps_recipe`); ``reference_calibration``: how ``prune-unseen-cal`` calibrates
    them (:mod:`~prune_unlearn.unlearn.calibration`).
    """

    dataset: str
    data_dir: str | None = None
    methods: tuple = DEFAULT_METHODS
    n_forget: int = 500
    n_unseen: int = 1000
    n_shadows: int = 16
    n_calibration: int = 2000
    folds: int = REFERENCE_FOLDS     # K of prune-unseen's K-fold references (each on (K−1)/K of a world's data)
    reference_steps: str = "epochs"  # "matched": each reference takes as many SGD steps as the plain model
    reference_calibration: str = "temperature"  # prune-unseen-cal's map: "temperature" or "affine"
    seed: int = 0
    epochs: int | None = DEFAULT_EPOCHS  # None: the data set's training recipe (MNIST: 20)
    variance: str = "global"
    workers: int = 2                 # processes, one world each at a time
    threads: int | None = 1          # torch threads per process (results do not depend on ``workers``)
    cache_dir: str | None = None     # default: <out_dir>/privacy-cache
    refresh: bool = False
    extra: dict = field(default_factory=dict)


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise param_error(name, "run_privacy", f"an integer ≥ {low}", value)
    return int(value)


def _validate(cfg: PrivacyConfig) -> list:
    """Every check that needs no data, before anything is loaded or written."""
    methods = resolve_unlearners(list(cfg.methods))
    n_forget = _check_int("n_forget", cfg.n_forget, 1)
    n_unseen = _check_int("n_unseen", cfg.n_unseen, 1)
    check_shadow_count(cfg.n_shadows, n_forget + n_unseen, n_forget, "run_privacy")
    n_cal = _check_int("n_calibration", cfg.n_calibration, 0)
    if n_cal == 0 and any(m.name == "prune-unseen-cal" for m in methods):
        raise param_error("n_calibration", "run_privacy", "at least 50 for method 'prune-unseen-cal' (it calibrates "
                          "on held-out test points)", n_cal, hint="set n_calibration or leave prune-unseen-cal out")
    folds = _check_int("folds", cfg.folds, 2)
    steps = check_choice("reference_steps", "run_privacy", cfg.reference_steps, REFERENCE_STEPS)
    calibration = check_choice("reference_calibration", "run_privacy", cfg.reference_calibration,
                               CALIBRATION_METHODS)
    check_choice("variance", "run_privacy", cfg.variance, VARIANCE_MODES)
    _check_int("seed", cfg.seed, 0)
    _check_int("workers", cfg.workers, 1)
    if cfg.threads is not None:
        _check_int("threads", cfg.threads, 1)
    if cfg.epochs is not None:
        _check_int("epochs", cfg.epochs, 1)
    if steps == "matched" and recipe_for(cfg.dataset).schedule != "constant":
        raise param_error("reference_steps", "run_privacy", "'epochs' on a data set whose training schedule is not "
                          "constant", steps)
    return with_reference_folds(methods, folds, steps, calibration)


@dataclass
class _Design:
    forgotten: np.ndarray       # training rows withdrawn from the target
    remaining: np.ndarray       # the other training rows
    unseen: np.ndarray          # pool rows of test points equal to no training point (calibration ones excluded)
    candidates: np.ndarray      # pool rows: forgotten, then n_unseen of the unseen
    is_forgotten: np.ndarray    # over candidates
    shadow_in: np.ndarray       # (n_shadows, n_candidates)
    test_duplicates: int        # test points dropped because a training point equals them
    held_out: np.ndarray | None  # pool rows held out for calibration: never trained on, never attacked


def _design(ds, cfg: PrivacyConfig, affine: bool = False) -> _Design:
    """The requests, candidates and shadow sets; ``affine``: prune-unseen-cal fits an affine calibration (it needs
    more held-out points)."""
    n_train, n_test = len(ds.y_train), len(ds.y_test)
    if cfg.n_forget >= n_train:
        raise param_error("n_forget", "run_privacy", f"smaller than the {n_train} training points", cfg.n_forget)
    if cfg.folds > n_train:
        raise param_error("folds", "run_privacy", f"at most the {n_train} training points (every fold needs a point)",
                          cfg.folds)
    need = AFFINE_POINTS_PER_PARAMETER * (ds.num_classes + 1)
    if affine and cfg.n_calibration < need:
        raise param_error("n_calibration", "run_privacy", f"at least {need} for prune-unseen-cal's affine calibration "
                          f"({AFFINE_POINTS_PER_PARAMETER} held-out points per coefficient, {ds.num_classes} + 1 per "
                          "logit)", cfg.n_calibration)
    train_hashes = set(points_sha256(ds.X_train))
    unseen_test = np.array([i for i, h in enumerate(points_sha256(ds.X_test)) if h not in train_hashes])
    if cfg.n_unseen + cfg.n_calibration > len(unseen_test):
        raise param_error("n_unseen", "run_privacy", f"at most the {len(unseen_test)} test points that equal no "
                          f"training point" + (f", less the {cfg.n_calibration} held out for calibration"
                                                if cfg.n_calibration else ""), cfg.n_unseen)
    held_out = None
    if cfg.n_calibration:  # drawn from their own stream, so that the requests do not depend on n_calibration
        cal = np.random.default_rng(derive_seed(cfg.seed, 14)).choice(len(unseen_test), cfg.n_calibration,
                                                                       replace=False)
        held_out = n_train + np.sort(unseen_test[cal])
        unseen_test = np.delete(unseen_test, cal)
    # Not torch.randperm(n) seeded with `seed`: SISA draws its shards from exactly that stream, so the first
    # n_forget points of it all sit in SISA's first slice of its first shard (a lucky, unrepresentative request).
    rng = np.random.default_rng(derive_seed(cfg.seed, 11))
    forgotten = np.sort(rng.choice(n_train, size=cfg.n_forget, replace=False))
    keep = np.ones(n_train, dtype=bool)
    keep[forgotten] = False
    chosen = np.sort(rng.choice(unseen_test, size=cfg.n_unseen, replace=False))
    candidates = np.r_[forgotten, n_train + chosen]
    shadow_in = assign_shadow_sets(len(candidates), cfg.n_forget, cfg.n_shadows, derive_seed(cfg.seed, 12))
    return _Design(forgotten, np.flatnonzero(keep), n_train + unseen_test, candidates,
                   np.r_[np.ones(cfg.n_forget, bool), np.zeros(cfg.n_unseen, bool)], shadow_in,
                   n_test - len(unseen_test) - cfg.n_calibration, held_out)


def _worlds(design: _Design, ds, cfg: PrivacyConfig) -> list[World]:
    n_train = len(ds.y_train)
    recipe = recipe_for(ds.name, seed=cfg.seed, epochs=cfg.epochs)
    target = World("target", np.arange(n_train), design.forgotten, recipe,
                   {"candidates": design.candidates, "unseen": design.unseen, "remaining": design.remaining},
                   design.held_out)
    worlds = [target]
    k = cfg.n_forget
    for s in range(cfg.n_shadows):
        rows = np.r_[design.remaining, design.candidates[design.shadow_in[s]]]
        recipe = recipe_for(ds.name, seed=derive_seed(cfg.seed, 13, s), epochs=cfg.epochs)
        worlds.append(World(f"shadow-{s:02d}", rows, np.arange(len(design.remaining), len(design.remaining) + k),
                            recipe, {"candidates": design.candidates}, design.held_out))
    return worlds


def _accuracy(t: dict, name: str, y) -> float:
    return float((t[name].numpy() == y).mean())


def _evaluate(method: str, outcomes: dict, design: _Design, pool_y: np.ndarray, cfg: PrivacyConfig) -> dict:
    target, info = outcomes["target"][method]
    t = {k: v.double() if v.is_floating_point() else v for k, v in target.items()}
    y_c, y_un, y_rem = pool_y[design.candidates], pool_y[design.unseen], pool_y[design.remaining]
    f = design.is_forgotten
    row = {"method": method, **{k: v for k, v in info.items()}}
    y_u = y_c[f]
    row["A_u_b"] = float((t["before_pred/candidates"].numpy()[f] == y_u).mean())
    row["A_u_a"] = float((t["after_pred/candidates"].numpy()[f] == y_u).mean())
    row["A_tes"] = _accuracy(t, "after_pred/unseen", y_un)
    row["A_res"] = _accuracy(t, "after_pred/remaining", y_rem)
    row["changed_tes"] = int((t["before_pred/unseen"] != t["after_pred/unseen"]).sum())
    row["changed_res"] = int((t["before_pred/remaining"] != t["after_pred/remaining"]).sum())
    after_c, after_un = t["after_logp/candidates"].numpy(), t["after_logp/unseen"].numpy()
    pos, neg = membership_scores(after_c[f], y_u), membership_scores(after_un, y_un)
    row["population"] = {s: roc_summary(pos[s], neg[s]).to_dict() for s in SCORES}
    threshold = float(-t["after_logp/remaining"].numpy()[np.arange(len(y_rem)), y_rem].mean())
    row["yeom"] = {"threshold": threshold, "recall": float((-pos["loss"] <= threshold).mean()),
                   "false_positive_rate": float((-neg["loss"] <= threshold).mean())}
    shadows = [w for w in outcomes if w != "target"]

    def stacked(when: str) -> np.ndarray:  # (n_shadows, n_candidates, C)
        return np.stack([outcomes[w][method][0][f"{when}_logp/candidates"].double().numpy() for w in shadows])

    for when, label in (("after", "ulira"), ("before", "lira_before")):
        row[label] = {v: likelihood_ratio_attack(t[f"{when}_logp/candidates"].numpy(), stacked(when), design.shadow_in,
                                                 y_c, f, variant=v, variance=cfg.variance).to_dict()
                      for v in ("online", "offline")}
    row["difference_learned"] = learned_difference_attack(
        stacked("before"), stacked("after"), design.shadow_in, y_c, t["before_logp/candidates"].numpy(), after_c, f,
        seed=cfg.seed)
    d_pos = difference_scores(t["before_logp/candidates"].numpy()[f], after_c[f], y_u)
    row["difference"] = {
        "remaining": difference_summary(d_pos, difference_scores(t["before_logp/remaining"].numpy(),
                                                                  t["after_logp/remaining"].numpy(), y_rem)),
        "unseen": difference_summary(d_pos, difference_scores(t["before_logp/unseen"].numpy(), after_un, y_un)),
    }
    return row


def _world_seconds(outcomes: dict, methods) -> dict:
    """Per method and phase, the wall and CPU seconds of each world, as measured when the world was computed
    (a cached world keeps the times of the run that computed it; older cache entries have no CPU times)."""
    out = {}
    for m in methods:
        infos = [outcomes[w][m.name][1] for w in outcomes]
        entry = {}
        for phase, keys in (("train", ("train", "plain_train")), ("unlearn", ("unlearn",))):
            for unit in ("seconds", "cpu_seconds"):
                vals = [next((i[f"{k}_{unit}"] for k in keys if f"{k}_{unit}" in i), None) for i in infos]
                entry[f"{phase}_{unit}"] = [v for v in vals if v is not None]
        out[m.name] = entry
    return out


def _data_sha256(ds) -> str:
    import hashlib

    h = hashlib.sha256(ds.name.encode())
    for t in (ds.X_train, ds.y_train, ds.X_test, ds.y_test):
        h.update(tensor_bytes(t))
    return h.hexdigest()


def run_privacy(cfg: PrivacyConfig, out_dir: str | Path, *, log=print) -> dict:
    """Run every attack against every method of ``cfg`` and write ``privacy-<data>.{md,json,csv}`` to ``out_dir``.

    Bad input (unknown method, too few shadows, impossible sizes, missing data) raises before anything
    is written. Shadow outputs are cached in ``cfg.cache_dir`` (default ``<out_dir>/privacy-cache``).
    """
    from ..runner import machine_description

    methods = _validate(cfg)
    ds = load_dataset(cfg.dataset, cfg.data_dir)
    design = _design(ds, cfg, affine=cfg.reference_calibration == "affine" and
                     any(m.name == "prune-unseen-cal" for m in methods))
    out = Path(out_dir)
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else out / "privacy-cache" / ds.name
    load_start, start = os.getloadavg(), time.perf_counter()
    spec = default_architecture(ds.name, ds.input_dim, ds.num_classes, ds.input_shape)
    pool = Pool(torch.cat([ds.X_train, ds.X_test]), torch.cat([ds.y_train, ds.y_test]), spec,
                (ds.domain_lower, ds.domain_upper), _data_sha256(ds), ds.name)
    outcomes = run_worlds(_worlds(design, ds, cfg), methods, pool, cache_dir=cache_dir, refresh=cfg.refresh,
                          workers=cfg.workers, threads=cfg.threads, log=log)
    rows = [_evaluate(m.name, outcomes, design, pool.y.numpy(), cfg) for m in methods]
    machine = {**machine_description(), "torch_threads": cfg.threads, "workers": cfg.workers,
               "load_average_start": load_start, "load_average_end": os.getloadavg()}
    result = {"dataset": ds.name, "config": asdict(cfg), "methods": {m.name: m.description for m in methods},
              "design": {"n_train": len(ds.y_train), "n_forget": cfg.n_forget, "n_unseen_candidates": cfg.n_unseen,
                         "n_unseen_population": len(design.unseen), "n_remaining": len(design.remaining),
                         "n_shadows": cfg.n_shadows, "n_calibration": cfg.n_calibration, "in_per_candidate": sorted(set(design.shadow_in.sum(0).tolist())),
                         "test_duplicates_dropped": design.test_duplicates, "cache_dir": str(cache_dir)},
              "epochs": recipe_for(ds.name, seed=cfg.seed, epochs=cfg.epochs).epochs,
              "seconds": time.perf_counter() - start, "machine": machine, "rows": rows,
              "world_seconds": _world_seconds(outcomes, methods)}
    write_privacy_report(result, out)
    return result
