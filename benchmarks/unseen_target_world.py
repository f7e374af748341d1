"""target="unseen" on the privacy table's target world, certified and audited, timed against Retrain.

    flock /tmp/prune-heavy.lock nice -n 10 python benchmarks/unseen_target_world.py --data fashion-mnist \
        --data-dir /work/shared/data/fashion-mnist --cache results/fashion-mnist/privacy-cache/fashion-mnist \
        --folds 5 --reference-steps matched --calibration-method affine

``prune bench privacy`` attacks the models but does not audit them. This script takes the target world of that
table (same design: the 500 requests, the 2,000 held-out calibration points; its plain model and Retrain's time
from the table's cache, so run the table first), trains the world's K-fold references as the table does
(``--reference-steps``), calibrates them (``--calibration-method``), forgets the requests with
target="unseen" and audits the certificate (white-box, with the points). Prints one JSON line: time per request
against Retrain's, changed predictions, claims certified, audit verdict, the calibration fits.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from prune_unlearn import audit, forget
from prune_unlearn.core.models import build_model, default_architecture
from prune_unlearn.experiments.datasets import load_dataset
from prune_unlearn.experiments.privacy.methods import TrainingSet, _reference_trainer
from prune_unlearn.experiments.privacy.table import PrivacyConfig, _design, _worlds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--cache", required=True, help="the privacy table's cache folder of this data set")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--reference-steps", choices=("epochs", "matched"), default="matched")
    ap.add_argument("--calibration-method", choices=("temperature", "affine"), default="affine")
    a = ap.parse_args()
    torch.set_num_threads(1)
    cfg = PrivacyConfig(dataset=a.data, data_dir=a.data_dir, folds=a.folds)
    ds = load_dataset(a.data, a.data_dir)
    design = _design(ds, cfg)
    world = _worlds(design, ds, cfg)[0]
    X, y = torch.cat([ds.X_train, ds.X_test]), torch.cat([ds.y_train, ds.y_test])
    spec = default_architecture(ds.name, ds.input_dim, ds.num_classes, ds.input_shape)
    plain = build_model(spec)
    plain.load_state_dict(load_file(os.path.join(a.cache, "target", "plain.safetensors")))
    plain.eval()
    with safe_open(os.path.join(a.cache, "target", "retrain.safetensors"), "pt") as fh:
        retrain_seconds = json.loads(fh.metadata()["info"])["unlearn_seconds"]
    held = torch.as_tensor(design.held_out)
    rows = torch.as_tensor(world.rows)
    data = TrainingSet(X[rows], y[rows], spec, world.recipe, (ds.domain_lower, ds.domain_upper),
                       torch.as_tensor(world.forget), (X[held], y[held]))
    t = time.perf_counter()
    refs = _reference_trainer(a.folds, a.reference_steps)(data, plain).references
    train_seconds = time.perf_counter() - t
    t = time.perf_counter()
    refs = [r.calibrated(plain, X[held], y[held], method=a.calibration_method) for r in refs]
    calibration_seconds = time.perf_counter() - t
    forget_rows = torch.as_tensor(design.forgotten)
    unseen = torch.as_tensor(design.unseen)
    keep = torch.ones(len(ds.y_train), dtype=torch.bool)
    keep[forget_rows] = False
    load_start = os.getloadavg()
    res = forget(plain, ds.X_train[forget_rows], labels=ds.y_train[forget_rows], target="unseen", reference=refs,
                 seed=world.recipe.seed, domain=data.domain, test_data=(X[unseen], y[unseen]),
                 remaining_data=(ds.X_train[keep], ds.y_train[keep]))
    t = time.perf_counter()
    verdict = audit(res.model, res.certificate, points=ds.X_train[forget_rows], labels=ds.y_train[forget_rows],
                    locality_inputs=X[unseen])
    audit_seconds = time.perf_counter() - t
    half = sorted(c["band"]["half_width"] for c in res.certificate.claims)
    print(json.dumps({
        "data": ds.name, "folds": a.folds, "reference_steps": a.reference_steps,
        "calibration_method": a.calibration_method, "requests": len(forget_rows),
        "forget_seconds": res.report.unlearn_seconds, "retrain_seconds": retrain_seconds,
        "forget_over_retrain": res.report.unlearn_seconds / retrain_seconds,
        "references_train_seconds": train_seconds, "calibration_seconds": calibration_seconds,
        "changed_test": res.report.changed_tes, "changed_remaining": res.report.changed_res,
        "claims": len(res.certificate.claims), "failed": res.report.n_failed,
        "audit_passed": verdict.passed, "audit_seconds": audit_seconds,
        "band_half_width_median": half[len(half) // 2] if half else None,
        "calibration_mismatch": [[r.calibration.mismatch_before, r.calibration.mismatch_after] for r in refs],
        "load_average_start": load_start, "load_average_end": os.getloadavg(), "torch_threads": 1}))


if __name__ == "__main__":
    main()
