"""forget's default mode (issue 11): a certified neighbourhood of 12/255 of the domain's narrowest side, region-only
where a ball does not apply or when asked for (``radius=None``), and the report says which ran."""

import json

import pytest
import torch
from click.testing import CliRunner

from prune_unlearn import InputValidationError, forget
from prune_unlearn.cli import cli
from prune_unlearn.unlearn.neighbourhood import DEFAULT_RADIUS, DEFAULT_RADIUS_SHARE, resolve_radius


def test_auto_is_a_share_of_the_narrowest_side_of_the_domain():
    assert resolve_radius("auto", (0.0, 1.0)) == pytest.approx(12 / 255)
    assert resolve_radius("auto", (0.0, 255.0)) == pytest.approx(12.0)  # raw 8-bit pixels: 12 grey levels
    lo = torch.tensor([0.0, -3.0, 5.0, 0.0])
    hi = torch.tensor([1.0, 3.0, 5.0, 0.5])  # a constant feature (width 0) has no say
    assert resolve_radius("auto", (lo, hi)) == pytest.approx(DEFAULT_RADIUS_SHARE * 0.5)


@pytest.mark.parametrize("domain, kw", [
    ((0.0, 1.0), {"strategy": "cluster"}),
    ((0.0, 1.0), {"target": "unseen"}),
    ((0.0, 1.0), {"feature_domain": (0.0, 10.0)}),
    (None, {}),
    ((0.0, float("inf")), {}),
    ((torch.zeros(3), torch.zeros(3)), {}),
])
def test_auto_is_region_only_where_a_ball_does_not_apply(domain, kw):
    assert resolve_radius(DEFAULT_RADIUS, domain, **kw) is None


@pytest.mark.parametrize("radius", [None, 0.1, "search"])
def test_an_explicit_radius_is_kept(radius):
    assert resolve_radius(radius, (0.0, 1.0), strategy="cluster") == radius


def test_default_forget_certifies_balls_and_region_mode_stays_available(digits_small_model, digits):
    idx = torch.arange(6)
    X, y = digits.X_train[idx], digits.y_train[idx]
    res = forget(digits_small_model, X, labels=y, seed=1)
    assert res.report.mode == "neighbourhood" and res.report.radius == pytest.approx(12 / 255)
    assert res.report.n_certified_neighbourhood == len(idx) and res.report.n_failed == 0
    assert "certified neighbourhoods (radius 0.0470588)" in res.report.summary()
    radii = torch.tensor([e["radius"] for e in res.certificate.neighbourhoods])
    assert len(radii) == len(idx) and torch.allclose(radii, torch.full_like(radii, 12 / 255, dtype=radii.dtype))
    # perturbed copies inside the ball are mispredicted too (what the default is for)
    g = torch.Generator().manual_seed(0)
    noisy = (X.repeat(20, 1) + (torch.rand(20 * len(X), X.shape[1], generator=g) * 2 - 1) * 12 / 255).clamp(0, 1)
    with torch.no_grad():
        assert (res.model(noisy).argmax(1) != y.repeat(20)).all()
    region = forget(digits_small_model, X, labels=y, seed=1, radius=None)
    assert region.report.mode == "region" and region.report.radius is None
    assert region.report.n_certified_region == len(idx) and region.report.n_certified_neighbourhood == 0
    assert not region.model.has_neighbourhoods and not region.certificate.neighbourhoods
    assert "region-only" in region.report.summary()


def test_default_with_the_cluster_strategy_is_region_only(digits_small_model, digits):
    res = forget(digits_small_model, digits.X_train[:10], labels=digits.y_train[:10], strategy="cluster")
    assert res.report.mode == "region" and not res.model.has_neighbourhoods and res.report.n_failed == 0


def test_a_bad_radius_word_is_refused():
    with pytest.raises(InputValidationError, match="'radius' parameter of forget must be a float .*'auto'"):
        forget(torch.nn.Sequential(torch.nn.Linear(4, 3)).eval(), torch.rand(2, 4), radius="automatic")


@pytest.mark.parametrize("args, mode", [([], "neighbourhood"), (["--radius", "none"], "region")])
def test_cli_forget_default_and_region_mode(digits_model_file, tmp_path, args, mode):
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["forget", "--model", str(digits_model_file), "--data", "digits", "--count", "3",
                                   *args, "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["changed_tes"] == 0 and report["n_failed"] == 0
    if mode == "region":
        assert report["radius"] is None and report["n_certified_region"] == 3
    else:
        assert report["radius"] == pytest.approx(12 / 255) and report["n_certified_neighbourhood"] == 3


@pytest.fixture(scope="module")
def digits_model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "digits.safetensors"
    res = CliRunner().invoke(cli, ["train", "--data", "digits", "--epochs", "4", "--out", str(path), "--json"])
    assert res.exit_code == 0, res.output
    return path


def test_default_keeps_region_mode_on_a_model_with_region_patches_only(digits_small_model, digits):
    first = forget(digits_small_model, digits.X_train[:4], labels=digits.y_train[:4], radius=None)
    again = forget(first.model, digits.X_train[4:8], labels=digits.y_train[4:8])
    assert again.report.mode == "region" and not again.model.has_neighbourhoods and again.report.n_failed == 0
    balls = forget(digits_small_model, digits.X_train[:4], labels=digits.y_train[:4])
    more = forget(balls.model, digits.X_train[4:8], labels=digits.y_train[4:8])
    assert more.report.mode == "neighbourhood" and len(more.model.neighbourhoods) == 8
