"""Certified neighbourhoods around a point's features (``forget(..., ball_space="features")``).

A head behind conv layers is reached by an input ball only through a loose interval box; a ball around the
point's head input ``φ(x)`` is exact in the head's own space. The tests use a small conv net on digits: the
claim (the target wins on every feature vector of ``B∞(φ(x), r) ∩ feature box``), locality (inputs whose
features are beyond every row's outer distance keep their logits bit for bit), the certificate and audit, the
saved format, and the refusals.
"""

import pytest
import torch
from torch import nn

from prune_unlearn import forget, load, save
from prune_unlearn.errors import InputValidationError
from prune_unlearn.experiments.feature_space import features, patched_head
from prune_unlearn.experiments.training import Recipe, train_model
from prune_unlearn.verify.audit import audit

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def conv(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))
    model = train_model(model, digits.X_train, digits.y_train, Recipe(lr=0.1, epochs=10, batch_size=32)).model.eval()
    feats = features(model, digits.X_train)
    box = (feats.min(0).values, feats.max(0).values)
    return model, feats, box, 0.02 * float((box[1] - box[0]).max())


@pytest.fixture(scope="module")
def forgotten(conv, digits):
    model, _, box, r = conv
    return forget(model, digits.X_train[:20], labels=digits.y_train[:20], radius=r, ball_space="features",
                  feature_domain=box, test_data=(digits.X_test, digits.y_test))


def test_every_point_is_claimed_on_its_feature_ball(forgotten, conv, digits):
    rep, cert = forgotten.report, forgotten.certificate
    assert rep.n_certified_neighbourhood == 20 and rep.n_failed == 0 and rep.radius == pytest.approx(conv[3])
    assert rep.ball_space == "features"
    assert (forgotten.model(digits.X_train[:20]).argmax(1) != digits.y_train[:20]).all()
    assert all(e["space"].startswith("features: B∞(φ(x), r)") for e in cert.neighbourhoods)
    assert all(e["domain"]["dim"] == 64 for e in cert.neighbourhoods)
    assert forgotten.model.neighbourhoods.ball_space.tolist() == [1] * len(forgotten.model.neighbourhoods)


def test_target_wins_on_sampled_feature_vectors_of_every_ball(forgotten, conv, digits):
    """The claim is about head inputs: sample B∞(φ(x), r) ∩ box (corners included) and run the patched head."""
    model, _, (lo, hi), r = conv
    head = patched_head(forgotten.model)
    gen = torch.Generator().manual_seed(3)
    phi = features(model, digits.X_train[:20])
    for c in forgotten.certificate.claims:
        centre = phi[c["index"]]
        u = torch.rand(200, 64, generator=gen) * 2 - 1
        u[:20] = torch.sign(u[:20])  # corners of the ball
        h = torch.minimum(torch.maximum(centre + r * u, lo), hi)
        assert (head(h).argmax(1) == c["target"]).all()


def test_inputs_beyond_every_outer_box_keep_their_logits_bit_for_bit(forgotten, conv, digits):
    model, _, _, _ = conv
    rows = forgotten.model.neighbourhoods
    olo, ohi = rows.outer_box()
    phi = features(model, digits.X_test).double()
    near = ((phi.unsqueeze(1) >= olo.unsqueeze(0)) & (phi.unsqueeze(1) <= ohi.unsqueeze(0))).all(-1).any(1)
    with torch.no_grad():
        before, after = model(digits.X_test), forgotten.model(digits.X_test)
    assert torch.equal(before[~near], after[~near])
    changed = int((before.argmax(1) != after.argmax(1)).sum())
    assert changed == forgotten.report.changed_tes
    assert changed <= int(near.sum())


def test_audit_passes_and_catches_a_widened_radius(forgotten, digits):
    pts, labels = digits.X_train[:20], digits.y_train[:20]
    assert audit(forgotten.model, forgotten.certificate, points=pts, labels=labels).passed
    cert = forgotten.certificate
    data = cert.to_dict()
    for c in data["claims"]:
        c["radius"] *= 3
    tampered = type(cert).from_dict(data)
    res = audit(forgotten.model, tampered, points=pts, labels=labels)
    assert not res.passed
    assert any("feature-space ball is not inside" in c.detail for c in res.checks if not c.passed)


def test_saved_model_keeps_the_ball_space_and_input_rows_keep_their_bytes(forgotten, digits_small_model, digits,
                                                                            tmp_path):
    save(forgotten.model, tmp_path / "f.safetensors")
    back = load(tmp_path / "f.safetensors", base=forgotten.model.base)
    assert torch.equal(back.neighbourhoods.ball_space, forgotten.model.neighbourhoods.ball_space)
    assert torch.equal(back(digits.X_test), forgotten.model(digits.X_test))
    plain = forget(digits_small_model, digits.X_train[:3], labels=digits.y_train[:3], radius=2 / 16, domain=(0, 16))
    assert "neighbourhoods.ball_space" not in plain.model.state_dict()  # files of input-space rows are unchanged
    save(plain.model, tmp_path / "p.safetensors")
    assert load(tmp_path / "p.safetensors").neighbourhoods.ball_space.tolist() == [0, 0, 0]


def test_input_and_feature_balls_in_one_model_are_described_each_in_its_space(digits_small_model, digits):
    first = forget(digits_small_model, digits.X_train[:3], labels=digits.y_train[:3], radius=2 / 16, domain=(0, 16))
    second = forget(first.model, digits.X_train[100:103], labels=digits.y_train[100:103], radius=2 / 16,
                    domain=(0, 16), ball_space="features")
    spaces = [e["space"].split(":")[0] for e in second.certificate.neighbourhoods]
    assert spaces == ["input"] * 3 + ["features"] * 3
    assert second.model.neighbourhoods.ball_space.tolist() == [0, 0, 0, 1, 1, 1]
    assert audit(second.model, second.certificate, points=digits.X_train[100:103],
                 labels=digits.y_train[100:103]).passed


def test_auto_on_a_model_with_feature_balls_keeps_feature_balls(forgotten, conv, digits):
    """As a region-patched model keeps region patches: the ledger's next requests get the same kind of ball."""
    more = forget(forgotten.model, digits.X_train[40:43], labels=digits.y_train[40:43])
    assert more.report.ball_space == "features" and more.report.radius == pytest.approx(conv[3])
    assert more.report.n_certified_neighbourhood == 3
    assert more.model.neighbourhoods.ball_space.tolist() == [1] * len(more.model.neighbourhoods)


@pytest.mark.parametrize("kwargs, match", [
    (dict(ball_space="pixels", radius=0.1), "ball_space"),
    (dict(ball_space="features", radius="auto"), "feature units"),
    (dict(ball_space="features", radius="search"), "feature units"),
    (dict(ball_space="features", radius=None), "feature units"),
    (dict(ball_space="features", radius=1e6), "feature box's widest side"),
])
def test_bad_feature_ball_options_are_refused(conv, digits, kwargs, match):
    model, _, box, _ = conv
    with pytest.raises(InputValidationError, match=match):
        forget(model, digits.X_train[:2], labels=digits.y_train[:2], feature_domain=box, **kwargs)


def test_cli_forget_on_feature_balls_and_its_refusal(digits_small_model, tmp_path):
    import json

    from click.testing import CliRunner

    from prune_unlearn.cli import cli

    save(digits_small_model, tmp_path / "m.safetensors")
    base = ["forget", "--model", str(tmp_path / "m.safetensors"), "--data", "digits", "--count", "4"]
    res = CliRunner().invoke(cli, [*base, "--ball-space", "features", "--radius", "0.5", "--out",
                                   str(tmp_path / "ok"), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["ball_space"] == "features" and report["n_certified_neighbourhood"] == 4
    res = CliRunner().invoke(cli, [*base, "--ball-space", "features", "--out", str(tmp_path / "bad")])
    assert res.exit_code == 1 and "Error:" in res.output and "feature units" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "bad").exists()
