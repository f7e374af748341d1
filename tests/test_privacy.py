import numpy as np
import pytest
import torch
from torch import nn

from prune_unlearn.experiments.baselines import MajorityVote
from prune_unlearn.errors import InputValidationError
from prune_unlearn.core.models import mlp
from prune_unlearn.experiments.privacy import (
    loss_threshold_attack,
    mean_loss,
    mia_auc_tpr,
    mia_recall,
    per_example_loss,
)
from prune_unlearn.experiments.training import Recipe, train_model


pytestmark = pytest.mark.usefixtures("one_thread")


def _random_points(n, seed, d=20, c=4):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, d, generator=g), torch.randint(0, c, (n,), generator=g)


@pytest.fixture(scope="module")
def overfit():
    """A wide MLP that memorises 60 points with random labels: the easiest case for the attack."""
    X, y = _random_points(60, seed=0)
    torch.manual_seed(0)
    model = mlp(20, [128], 4)
    train_model(model, X, y, Recipe(lr=0.1, momentum=0.9, epochs=300, batch_size=30))
    X_out, y_out = _random_points(60, seed=1)
    return model, X, y, X_out, y_out


def test_overfit_model_leaks_membership(overfit):
    model, X, y, X_out, y_out = overfit
    assert (model(X).argmax(1) == y).all()  # memorised
    threshold = mean_loss(model, X, y)
    recall = mia_recall(model, X, y, threshold)
    flagged_out = mia_recall(model, X_out, y_out, threshold)
    # memorised losses are skewed (a few large, most tiny), so the mean flags about half of them
    assert recall >= 0.35 and flagged_out <= 0.2 and recall > flagged_out + 0.25
    correct = loss_threshold_attack(model, None, None, X, y, variant="correctness").members.mean()
    assert correct == 1.0
    auc, tpr = mia_auc_tpr(model, X, y, X_out, y_out)
    # 60 unseen points: 1% FPR admits no false positive, so TPR is the share of members below every unseen loss
    below = float((per_example_loss(model, X, y) < per_example_loss(model, X_out, y_out).min()).mean())
    assert auc > 0.85 and tpr == pytest.approx(below) and tpr > 0


def test_model_that_never_saw_the_points_gives_chance_auc(overfit):
    model = overfit[0]
    X_a, y_a = _random_points(200, seed=2)
    X_b, y_b = _random_points(200, seed=3)
    auc, tpr = mia_auc_tpr(model, X_a, y_a, X_b, y_b)
    assert 0.35 < auc < 0.65
    assert tpr < 0.2


def test_attack_variants_and_default_threshold(overfit):
    model, X, y, X_out, y_out = overfit
    X_eval, y_eval = torch.cat([X[:10], X_out[:10]]), torch.cat([y[:10], y_out[:10]])
    res = loss_threshold_attack(model, X, y, X_eval, y_eval)
    assert res.threshold == pytest.approx(mean_loss(model, X, y))
    assert np.array_equal(res.members, per_example_loss(model, X_eval, y_eval) <= res.threshold)
    assert res.members.dtype == bool and res.members.shape == (20,)

    same = loss_threshold_attack(model, None, None, X_eval, y_eval, threshold=res.threshold)
    assert np.array_equal(same.members, res.members)

    correct = loss_threshold_attack(model, None, None, X_eval, y_eval, variant="correctness")
    with torch.no_grad():
        assert np.array_equal(correct.members, (model(X_eval).argmax(1) == y_eval).numpy())
    assert correct.threshold is None and correct.members[:10].all()


def test_per_example_loss_is_cross_entropy_and_uses_ensemble_probabilities(overfit):
    model, X, y, _, _ = overfit
    with torch.no_grad():
        ref = nn.functional.cross_entropy(model(X), y, reduction="none").double().numpy()
    assert np.allclose(per_example_loss(model, X, y), ref, atol=1e-5)
    # a vote ensemble is scored by its mean softmax, not by its vote shares
    vote = MajorityVote([model, model])
    assert np.allclose(per_example_loss(vote, X, y), ref, atol=1e-5)


def test_attack_validates_its_arguments(overfit):
    model, X, y, _, _ = overfit
    with pytest.raises(InputValidationError, match="The 'variant' parameter of loss_threshold_attack must be one of"):
        loss_threshold_attack(model, X, y, X, y, variant="shadow")
    with pytest.raises(InputValidationError, match="HINT: pass known members"):
        loss_threshold_attack(model, None, None, X, y)
    with pytest.raises(InputValidationError, match=r"must hold labels in \[0, 3\]"):
        per_example_loss(model, X, y + 4)
