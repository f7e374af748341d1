"""Population, likelihood-ratio and model-difference attacks: exact rates on hand-made scores, and behaviour on
models that do / do not remember their training points."""

import numpy as np
import pytest
import scipy.stats
import torch

from prune_unlearn.core.models import mlp
from prune_unlearn.errors import InputValidationError
from prune_unlearn.experiments.privacy import (
    assign_shadow_sets,
    check_disjoint,
    difference_scores,
    learned_difference_attack,
    likelihood_ratio_attack,
    lira_scores,
    log_probabilities,
    membership_scores,
    minimum_shadows,
    model_difference_attack,
    population_attack,
    precision_at_k,
    roc_summary,
    scaled_confidence,
    tpr_at_fpr,
)
from prune_unlearn.experiments.training import Recipe, train_model

pytestmark = pytest.mark.usefixtures("one_thread")


# --- ROC rates, exactly -------------------------------------------------------------------------------

def test_tpr_at_fpr_on_a_hand_made_example():
    pos = [0.9, 0.8, 0.7, 0.3]
    neg = [0.85] + [i / 200 for i in range(99)]  # 100 negatives: one above most positives, 99 below 0.5
    # "positive iff score ≥ t": t = 0.7 flags 3 positives and 1 negative (FPR 1%); t = 0.3 would add 40 negatives
    assert tpr_at_fpr(pos, neg, 0.01) == 0.75
    assert tpr_at_fpr(pos, neg, 0.02) == 0.75
    assert tpr_at_fpr(pos, neg, 0.5) == 1.0
    assert tpr_at_fpr(pos, neg, 0.001) is None  # 0.1% of 100 negatives is less than one false positive
    s = roc_summary(pos, neg)
    assert s.n_pos == 4 and s.n_neg == 100 and s.max_false_positives == {0.01: 1, 0.001: 0}
    assert s.tpr == {0.01: 0.75, 0.001: None}
    # AUC: 0.9 beats all 100 negatives, 0.8 and 0.7 beat 99, 0.3 beats 60 and ties with one (60/200 = 0.3)
    assert s.auc == pytest.approx((100 + 99 + 99 + 60.5) / 400)


def test_ties_move_together_and_a_zero_fpr_rate_counts_only_strictly_separated_points():
    pos, neg = [1.0, 1.0, 0.0], [1.0] + [0.0] * 999
    # the tie at 1.0 flags two positives and one negative at once: 1 false positive in 1,000 is FPR 0.1%
    assert tpr_at_fpr(pos, neg, 0.001) == pytest.approx(2 / 3)
    assert tpr_at_fpr(pos, neg, 0.0005) is None


def test_roc_summary_reports_the_better_direction_separately():
    pos, neg = np.arange(10.0), np.arange(100.0, 1100.0)  # positives all *below* the negatives
    s = roc_summary(pos, neg)
    assert s.auc == 0.0 and s.tpr[0.01] == 0.0
    assert s.tpr_best == {0.01: 1.0, 0.001: 1.0}


def test_identically_distributed_sets_give_chance_auc():
    rng = np.random.default_rng(0)
    s = roc_summary(rng.normal(size=3000), rng.normal(size=3000))
    assert abs(s.auc - 0.5) < 0.03
    assert s.tpr[0.01] < 0.03


def test_precision_at_k_counts_ties_pro_rata():
    assert precision_at_k([3.0, 2.0], [1.0, 0.0]) == 1.0
    assert precision_at_k([3.0, 0.0], [1.0, 0.0]) == 0.5
    # all four tied: the two places go to 2 positives and 2 negatives in proportion
    assert precision_at_k([0.0, 0.0], [0.0, 0.0]) == 0.5


# --- scores from log-probabilities ---------------------------------------------------------------------

def test_scores_are_loss_confidence_margin_and_logit_scaled_confidence():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]], dtype=torch.float64)
    logp = torch.log_softmax(logits, 1).numpy()
    y = np.array([0, 2])
    s = membership_scores(logp, y)
    p = np.exp(logp)
    assert np.allclose(s["loss"], np.log(p[[0, 1], y]))  # the member score of the loss attack is −loss
    assert np.allclose(s["confidence"], p.max(1))
    assert np.allclose(s["margin"], [2.0 - 0.5, 1.0 - 3.0])  # the logit margin
    py = p[[0, 1], y]
    assert np.allclose(scaled_confidence(logp, y), np.log(py / (1 - py)))


def test_log_probabilities_keep_digits_near_zero_loss():
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[20.0, 0.0], [0.0, 0.0]]))
        model.bias.zero_()
    logp = log_probabilities(model, torch.tensor([[1.0, 0.0]]))
    # loss = log(1 + e^-20) ≈ 2.06e-9; float32 log_softmax would round it to exactly 0
    assert logp.dtype == np.float64 and -logp[0, 0] == pytest.approx(np.log1p(np.exp(-20.0)), rel=1e-6)
    assert np.isfinite(scaled_confidence(logp, [0])).all()


# --- population attacks on real models ---------------------------------------------------------------

def _random_points(n, seed, d=20, c=4):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, d, generator=g), torch.randint(0, c, (n,), generator=g)


@pytest.fixture(scope="module")
def memorising():
    X, y = _random_points(60, seed=0)
    torch.manual_seed(0)
    model = mlp(20, [128], 4)
    train_model(model, X, y, Recipe(lr=0.1, momentum=0.9, epochs=300, batch_size=30))
    return model, X, y


def test_population_attack_separates_members_of_a_memorising_model(memorising):
    model, X, y = memorising
    X_out, y_out = _random_points(1000, seed=1)
    res = population_attack(model, X, y, X_out, y_out)
    assert res["loss"].auc > 0.9 and res["margin"].auc > 0.9 and res["confidence"].auc > 0.8
    assert res["loss"].n_neg == 1000 and res["loss"].max_false_positives[0.001] == 1


def test_population_attack_is_at_chance_on_two_unseen_sets(memorising):
    model = memorising[0]
    X_a, y_a = _random_points(1000, seed=2)
    X_b, y_b = _random_points(1000, seed=3)
    res = population_attack(model, X_a, y_a, X_b, y_b)
    for name in ("loss", "confidence", "margin"):
        assert abs(res[name].auc - 0.5) < 0.05, name


def test_an_unseen_set_that_overlaps_the_forgotten_points_is_refused(memorising):
    model, X, y = memorising
    X_out, y_out = _random_points(50, seed=1)
    X_bad = torch.cat([X_out, X[7:8]])
    with pytest.raises(InputValidationError, match=r"1 point\(s\) of 'X_unseen' are also in 'X_forgotten' "
                                                    r"\(first: row 50 of X_unseen = row 7 of X_forgotten\)"):
        population_attack(model, X, y, X_bad, torch.cat([y_out, y[7:8]]))
    with pytest.raises(InputValidationError, match="X_others"):
        model_difference_attack(model, model, X, y, X_bad, torch.cat([y_out, y[7:8]]))
    check_disjoint(X, X_out, "a", "b", "test")  # disjoint: no error


# --- likelihood-ratio attacks ---------------------------------------------------------------------------

def test_shadow_sets_are_balanced_seeded_and_extendable():
    mask = assign_shadow_sets(150, 50, 16, seed=3)
    assert mask.shape == (16, 150) and (mask.sum(1) == 50).all()
    counts = mask.sum(0)
    assert counts.max() - counts.min() <= 1 and set(counts) == {5, 6}
    assert np.array_equal(mask, assign_shadow_sets(150, 50, 16, seed=3))
    assert np.array_equal(mask[:8], assign_shadow_sets(150, 50, 8, seed=3))  # more shadows keep the first ones
    assert not np.array_equal(mask, assign_shadow_sets(150, 50, 16, seed=4))


def test_minimum_shadows_and_the_error_that_names_it():
    assert minimum_shadows(1500, 500) == 6      # IN in a third of them: 6 shadows give every candidate 2
    assert minimum_shadows(1000, 500) == 4      # half: 4 give 2 IN and 2 OUT
    assert minimum_shadows(1000, 900) == 20     # OUT in a tenth
    with pytest.raises(InputValidationError, match=r"'n_shadows' parameter of assign_shadow_sets must be an integer "
                                                   r"≥ 6\. Got 5 instead\. HINT: .*≥ 2 shadows on each side"):
        assign_shadow_sets(1500, 500, 5, seed=0)


def _synthetic_shadows(n=400, m=16, effect=2.0, seed=0):
    """Per-point statistics with a wide spread between points and an IN effect of ``effect``."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 5, size=n)                   # point difficulty: far larger than the effect
    ins = assign_shadow_sets(n, n // 2, m, seed=seed)
    phi = base + effect * ins + rng.normal(0, 1, size=(m, n))
    positive = np.zeros(n, dtype=bool)
    positive[rng.permutation(n)[: n // 2]] = True
    target = base + effect * positive + rng.normal(0, 1, size=n)
    return target, phi, ins, positive


def test_lira_calibrates_each_point_where_a_global_threshold_cannot():
    target, phi, ins, positive = _synthetic_shadows()
    global_auc = roc_summary(target[positive], target[~positive]).auc
    for variance in ("global", "per-example"):
        scores = lira_scores(target, phi, ins, variance=variance)
        auc = roc_summary(scores[positive], scores[~positive]).auc
        assert auc > 0.85 and auc > global_auc + 0.2, (variance, auc, global_auc)
    off = lira_scores(target, phi, ins, variant="offline")
    assert roc_summary(off[positive], off[~positive]).auc > 0.6


def test_lira_is_at_chance_when_in_and_out_are_the_same_distribution():
    target, phi, ins, positive = _synthetic_shadows(n=2000, effect=0.0, seed=1)
    for variant in ("online", "offline"):
        scores = lira_scores(target, phi, ins, variant=variant)
        assert abs(roc_summary(scores[positive], scores[~positive]).auc - 0.5) < 0.05, variant


def test_lira_scores_are_the_gaussian_log_likelihood_ratio():
    target, phi, ins, _ = _synthetic_shadows(n=6, m=8)
    scores = lira_scores(target, phi, ins, variance="per-example")
    for i in range(6):
        a, b = phi[ins[:, i], i], phi[~ins[:, i], i]
        ref = (scipy.stats.norm.logpdf(target[i], a.mean(), a.std(ddof=1))
               - scipy.stats.norm.logpdf(target[i], b.mean(), b.std(ddof=1)))
        assert scores[i] == pytest.approx(ref)


def test_lira_refuses_candidates_without_two_shadows_per_side():
    target, phi, ins, positive = _synthetic_shadows(n=10, m=4)
    ins = ins.copy()
    ins[:, 3] = [True, False, False, False]
    with pytest.raises(InputValidationError, match=r"1 candidate\(s\) have fewer than 2 shadow models on the IN side "
                                                   r"\(first: candidate 3\)"):
        lira_scores(target, phi, ins)
    with pytest.raises(InputValidationError, match="'variant' parameter of lira_scores"):
        lira_scores(target, phi, ins, variant="shadowless")


def test_likelihood_ratio_attack_on_log_probabilities():
    rng = np.random.default_rng(0)
    n, m = 40, 8
    y = rng.integers(0, 3, n)
    ins = assign_shadow_sets(n, n // 2, m, seed=0)
    # the true-class logit of a point rises by 3 when a shadow trained on it; each point has its own level
    level = rng.normal(0, 4, n)

    def logp(in_mask):
        logits = rng.normal(0, 0.3, size=(n, 3))
        logits[np.arange(n), y] += level + 3.0 * in_mask
        return torch.log_softmax(torch.from_numpy(logits), 1).numpy()

    positive = np.arange(n) < n // 2
    res = likelihood_ratio_attack(logp(positive), np.stack([logp(r) for r in ins]), ins, y, positive)
    assert res.auc > 0.9 and res.n_pos == 20 and res.n_neg == 20 and res.tpr[0.001] is None


# --- model difference -------------------------------------------------------------------------------

def test_difference_scores_measure_the_change_of_each_output():
    before = torch.log_softmax(torch.tensor([[2.0, 0.0], [0.0, 2.0]], dtype=torch.float64), 1).numpy()
    after = before.copy()
    after[0] = torch.log_softmax(torch.tensor([0.0, 2.0], dtype=torch.float64), 0).numpy()
    s = difference_scores(before, after, [0, 1])
    assert s["loss_increase"][1] == 0 and s["posterior_shift"][1] == 0
    assert s["loss_increase"][0] == pytest.approx(2.0)  # log-softmax margins swap: loss rises by exactly 2
    p = np.exp(before[0])
    assert s["posterior_shift"][0] == pytest.approx(2 * abs(p[0] - p[1]))


def test_an_unchanged_model_gives_the_attacker_nothing(memorising):
    model, X, y = memorising
    X_out, y_out = _random_points(200, seed=5)
    res = model_difference_attack(model, model, X, y, X_out, y_out)
    for name in ("loss_increase", "posterior_shift"):
        assert res[name]["auc"] == 0.5
        assert res[name]["precision_at_k"] == pytest.approx(60 / 260)


def _pairs(n, m, effect, seed):
    """Shadow and target output pairs where a withdrawn point's true-label logit drops by ``effect``."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    ins = assign_shadow_sets(n, n // 2, m, seed=seed)
    level = rng.normal(4, 2, n)

    def pair(withdrawn):
        before = rng.normal(0, 0.5, size=(n, 4))
        before[np.arange(n), y] += level
        after = before + rng.normal(0, 0.2, size=(n, 4))
        after[np.arange(n), y] -= effect * withdrawn
        lsm = lambda z: torch.log_softmax(torch.from_numpy(z), 1).numpy()  # noqa: E731
        return lsm(before), lsm(after)

    shadows = [pair(r) for r in ins]
    positive = np.arange(n) < n // 2
    tb, ta = pair(positive)
    return (np.stack([b for b, _ in shadows]), np.stack([a for _, a in shadows]), ins, y, tb, ta, positive)


def test_learned_difference_attack_learns_the_change_from_shadow_pairs():
    res = learned_difference_attack(*_pairs(300, 6, effect=1.5, seed=0), n_estimators=50)
    assert res["auc"] > 0.9 and res["precision_at_k"] > 0.8 and res["k"] == 150
    null = learned_difference_attack(*_pairs(400, 6, effect=0.0, seed=1), n_estimators=50)
    assert abs(null["auc"] - 0.5) < 0.07


def test_lira_with_real_shadow_models_finds_the_members_of_a_memorising_model():
    """Eight small MLPs, each trained on a random half of 80 random-label points; the target on a ninth half."""
    X, y = _random_points(80, seed=7)
    ins = assign_shadow_sets(80, 40, 9, seed=0)

    def trained_on(mask, seed):
        torch.manual_seed(seed)
        model = mlp(20, [64], 4)
        return train_model(model, X[torch.from_numpy(mask)], y[torch.from_numpy(mask)],
                           Recipe(lr=0.1, momentum=0.9, epochs=150, batch_size=40, seed=seed)).model

    logps = [log_probabilities(trained_on(mask, seed), X) for seed, mask in enumerate(ins)]
    res = likelihood_ratio_attack(logps[8], np.stack(logps[:8]), ins[:8], y.numpy(), ins[8])
    assert res.auc > 0.85 and res.n_pos == 40 and res.n_neg == 40
