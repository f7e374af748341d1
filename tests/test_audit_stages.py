"""The audit's exact bounds and LPs on worker processes give the serial audit's result, check for check."""

import copy
import json
import dataclasses

import numpy as np
import torch
from torch import nn

from prune_unlearn import build_model, forget
from prune_unlearn.verify.audit import audit
from prune_unlearn.verify.audit_stages import BATCH, StageInputs, estimated_seconds


def _head(seed: int = 3) -> nn.Module:
    return build_model({"kind": "mlp", "input_dim": 10, "hidden": [32, 32, 32], "num_classes": 3}, seed=seed).eval()


def _forgotten(n: int = 100):
    model = _head()
    x = torch.rand(n, 10, generator=torch.Generator().manual_seed(5))
    y = model(x).argmax(1)
    res = forget(model, x, labels=y, bound="dual", seed=0, radius=None)
    assert res.report.n_certified_region > BATCH  # more than one exact-bound batch: several items per stage
    return res, x, y


def _same(serial, parallel):
    assert serial.workers == 1 and parallel.workers == 2
    assert parallel.checks == serial.checks  # every check: name, subject, verdict and detail, in order
    assert parallel.passed == serial.passed and parallel.counts() == serial.counts()
    assert parallel.exact_backend == serial.exact_backend
    assert "exact bounds + lp on 2 processes" in parallel.timings


def test_parallel_audit_equals_serial(one_thread):
    res, x, y = _forgotten()
    kwargs = dict(points=x, labels=y, lp_samples=6, locality_samples=200, seed=1)
    serial = audit(res.model, res.certificate, workers=1, **kwargs)
    parallel = audit(res.model, res.certificate, workers=2, **kwargs)
    assert serial.passed, serial.summary()
    assert serial.counts()["bounds"][0] > BATCH and serial.counts()["lp"][0] >= 6
    _same(serial, parallel)

    # a false claim (one edited margin): the same failures, found by the same checks
    cert = res.certificate
    r = next(c["region"] for c in cert.claims if c["proved"] == "region")
    regions = copy.deepcopy(cert.regions)
    regions[r]["margin"] *= 1000
    claims = [dict(c, margin=regions[r]["margin"]) if c["region"] == r else c for c in cert.claims]
    false = dataclasses.replace(cert, regions=regions, claims=claims)
    kwargs["lp_samples"] = len(cert.regions)
    serial = audit(res.model, false, workers=1, **kwargs)
    parallel = audit(res.model, false, workers=2, **kwargs)
    assert {c.name for c in serial.failures} == {"bounds", "lp"}
    _same(serial, parallel)


def test_small_stages_stay_in_process_by_default(one_thread, monkeypatch):
    """With the library's setting at 2 workers, a small head's stages are too short to pay for processes."""
    res, x, y = _forgotten()
    monkeypatch.setenv("PRUNE_THREADS", "2")
    result = audit(res.model, res.certificate, points=x, labels=y, locality_samples=100)
    assert result.passed and result.workers == 1
    # the 6×256 MNIST head of issue 15 (500 regions, 20 LPs) is far above the threshold
    ws = [np.zeros((256, 784), np.float32)] + [np.zeros((256, 256), np.float32)] * 5 + [np.zeros((10, 256), np.float32)]
    big = StageInputs(ws, [], ws, [], np.zeros(784), np.ones(784), np.zeros((500, 1536), bool),
                      np.zeros((500, 10, 1536), np.float32), np.zeros(500), np.zeros(500, int),
                      np.zeros((500, 10), np.float32), None, [None] * 20)
    assert estimated_seconds(big) > 30


def test_cli_audit_takes_workers(one_thread, tmp_path):
    from click.testing import CliRunner

    from prune_unlearn import save
    from prune_unlearn.cli import cli

    res, _, _ = _forgotten()
    save(res.model, tmp_path / "patched.safetensors")
    res.certificate.to_json(tmp_path / "certificate.json")
    args = ["audit", "--model", str(tmp_path / "patched.safetensors"),
            "--certificate", str(tmp_path / "certificate.json"),
            "--samples", "4", "--json"]
    out = {}
    for w in ("1", "2"):
        run = CliRunner().invoke(cli, [*args, "--workers", w])
        assert run.exit_code == 0, run.output
        out[w] = json.loads(run.output)
    assert out["2"]["timings"].keys() >= {"exact bounds", "lp", "exact bounds + lp on 2 processes"}
    assert out["1"]["counts"] == out["2"]["counts"] and out["1"]["passed"]
    assert CliRunner().invoke(cli, [*args, "--workers", "0"]).exit_code != 0
