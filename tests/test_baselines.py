import dataclasses

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parameters_to_vector

from prune_unlearn.experiments.baselines import (
    FU,
    SISA,
    Amnesiac,
    BaselineResult,
    MajorityVote,
    Retrain,
    UnlearningMethod,
    baseline_names,
    create_baseline,
    register_baseline,
)
from prune_unlearn.experiments.baselines.base import derive_seed
from prune_unlearn.experiments.baselines.influence import conjugate_gradient
from prune_unlearn.errors import FormatError, InputValidationError, NotFittedError
from prune_unlearn.core.models import build_model, mlp
from prune_unlearn.experiments.training import Recipe, train_from_spec, train_model


pytestmark = pytest.mark.usefixtures("one_thread")


def _spec(d, hidden, c):
    return {"kind": "mlp", "input_dim": d, "hidden": list(hidden), "num_classes": c}


def _pick(n, k, seed):
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k]


def _blobs(n=120, d=8, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    y = (X @ torch.randn(d, c, generator=g) + 0.5 * torch.randn(n, c, generator=g)).argmax(1)
    return X, y


def _flat(model):
    return parameters_to_vector(model.parameters()).detach()


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- conformance over the registry ------------------------------------------------------------

@pytest.mark.parametrize("name", baseline_names())
def test_every_baseline_behaves_like_an_estimator(name, digits):
    spec = _spec(digits.input_dim, [32], digits.num_classes)
    recipe = Recipe(lr=0.1, epochs=3, batch_size=32)
    method = create_baseline(name)
    assert isinstance(method, UnlearningMethod)
    cls = type(method).__name__
    msg = f"This {cls} instance is not fitted yet. Call 'fit' with appropriate arguments before using this method."
    for use in (lambda: method.forget([0]), lambda: method.predict(digits.X_test), lambda: method.model_):
        with pytest.raises(NotFittedError, match=msg):
            use()
    assert not hasattr(method, "model_")
    assert type(method)(**method.get_params()).get_params() == method.get_params()

    assert method.fit(spec, digits.X_train, digits.y_train, recipe) is method
    assert isinstance(method.train_seconds_, float) and method.train_seconds_ > 0
    idx = _pick(len(digits.y_train), 10, seed=11)
    result = method.forget(idx)
    assert isinstance(result, BaselineResult)
    model, train_s, unlearn_s, info = result
    assert isinstance(model, nn.Module) and model is method.model_
    assert train_s == method.train_seconds_
    assert isinstance(unlearn_s, float) and unlearn_s > 0
    assert info["n_forget"] == 10 and info["n_remaining"] == len(digits.y_train) - 10
    assert torch.equal(method.forgotten_, idx.sort().values)

    pred = method.predict(digits.X_test)
    assert pred.dtype == torch.int64 and pred.shape == digits.y_test.shape
    assert (pred == digits.y_test).float().mean() > 0.3  # well above chance (0.1) after 3 short epochs
    with torch.no_grad():
        assert torch.equal(model(digits.X_test).argmax(1), pred)
    with pytest.raises(InputValidationError, match="already forgotten"):
        method.forget(idx[:2])


def test_unknown_baseline_lists_known_names():
    with pytest.raises(InputValidationError,
                       match=r"Unknown baseline 'sisaa'\. Known baselines: amnesiac, fu, retrain, sisa\."):
        create_baseline("sisaa")


def test_register_baseline_refuses_to_overwrite_unless_forced():
    class MyRetrain(Retrain):
        pass

    with pytest.raises(InputValidationError, match=r"'sisa' is already registered \(SISA\).*force=True"):
        register_baseline("sisa", MyRetrain)
    with pytest.raises(InputValidationError, match="must be a subclass of UnlearningMethod"):
        register_baseline("mine", object)
    try:
        register_baseline("mine", MyRetrain)
        assert "mine" in baseline_names() and isinstance(create_baseline("mine"), MyRetrain)
        register_baseline("mine", Retrain, force=True)
        assert type(create_baseline("mine")) is Retrain
    finally:
        from prune_unlearn.experiments.baselines import registry

        registry._REGISTRY.pop("mine", None)


def test_constructor_only_stores_and_fit_validates_with_the_template():
    X, y = _blobs(40)
    sisa = SISA(shards=0)  # no error here: validation happens in fit
    assert sisa.shards == 0 and repr(sisa) == "SISA(shards=0)"
    with pytest.raises(InputValidationError,
                       match=r"^The 'shards' parameter of SISA must be a positive integer\. Got 0 instead\.$"):
        sisa.fit(_spec(8, [4], 3), X, y)
    with pytest.raises(InputValidationError, match=r"The 'damping' parameter of FU must be a float in \[0, inf\)\. "
                                                   r"Got -1 instead\."):
        FU(damping=-1).fit(_spec(8, [4], 3), X, y)
    with pytest.raises(InputValidationError,
                       match="The 'recovery_epochs' parameter of Amnesiac must be a non-negative integer"):
        Amnesiac(recovery_epochs=1.5).fit(_spec(8, [4], 3), X, y)
    with pytest.raises(InputValidationError, match="Invalid parameter 'shard' for SISA"):
        SISA().set_params(shard=3)
    with pytest.raises(InputValidationError, match="at most n / slices"):
        SISA(shards=20, slices=5).fit(_spec(8, [4], 3), X, y)
    with pytest.raises(FormatError):
        Retrain().fit({"kind": "resnet"}, X, y)
    with pytest.raises(InputValidationError, match="inconsistent numbers of samples"):
        Retrain().fit(_spec(8, [4], 3), X, y[:-1])


def test_forget_validates_indices():
    X, y = _blobs(40)
    r = Retrain().fit(_spec(8, [4], 3), X, y, Recipe(epochs=1, batch_size=20))
    with pytest.raises(InputValidationError, match=r"indices in \[0, 39\]\. Got \[40, -1\] instead"):
        r.forget([3, 40, -1])
    with pytest.raises(InputValidationError, match=r"Got dtype\('float64'\) instead\. HINT"):
        r.forget(np.array([1.0, 2.0]))
    with pytest.raises(InputValidationError, match=r"Got \[\] instead\.$"):
        r.forget([])
    with pytest.raises(InputValidationError, match="Cannot forget every remaining training point"):
        r.forget(np.arange(40))
    assert r.forget(torch.tensor([5, 5, 2])).info["n_forget"] == 2  # duplicates count once


def test_fit_accepts_a_model_built_from_a_spec():
    X, y = _blobs(40)
    model = mlp(8, [4], 3)
    r = Retrain().fit(model, X, y, Recipe(epochs=1, batch_size=20))
    assert r.spec_ == _spec(8, [4], 3)
    with pytest.raises(InputValidationError, match="HINT: baselines retrain from scratch"):
        Retrain().fit(nn.Linear(8, 3), X, y)


# --- Retrain ----------------------------------------------------------------------------------

def test_retrain_equals_training_from_scratch_bit_for_bit(digits):
    spec = _spec(digits.input_dim, [16], digits.num_classes)
    recipe = Recipe(lr=0.1, epochs=2, batch_size=32, seed=3)
    idx = _pick(len(digits.y_train), 25, seed=5)
    result = Retrain().fit(spec, digits.X_train, digits.y_train, recipe).forget(idx)
    reference = train_from_spec(spec, *digits.remaining(idx), recipe).model
    assert _same_state(result.model.state_dict(), reference.state_dict())


# --- SISA -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sisa_setup(digits):
    X, y = digits.X_train[:240], digits.y_train[:240]
    spec = _spec(digits.input_dim, [16], digits.num_classes)
    recipe = Recipe(lr=0.1, epochs=2, batch_size=16, seed=7)
    sisa = SISA(shards=3, slices=4, epochs_per_slice=1).fit(spec, X, y, recipe)
    return sisa, X, y, recipe


def test_sisa_partitions_the_data_and_votes(sisa_setup):
    sisa, X, _, _ = sisa_setup
    rows = torch.cat([torch.cat(slices) for slices in sisa.shards_])
    assert torch.equal(rows.sort().values, torch.arange(len(X)))
    assert all(len(s) == 20 for slices in sisa.shards_ for s in slices)
    assert all(len(ck) == sisa.slices + 1 for ck in sisa.checkpoints_)
    for k, model in enumerate(sisa.shard_models_):
        assert _same_state(sisa.checkpoints_[k][-1], model.state_dict())
    with torch.no_grad():
        votes = torch.stack([m(X).argmax(1) for m in sisa.shard_models_])
    counts = torch.stack([(votes == c).sum(0) for c in range(10)], 1)
    assert torch.equal(sisa.predict(X), counts.argmax(1))


def test_majority_vote_breaks_ties_to_the_smallest_label():
    def constant(label):
        lin = nn.Linear(2, 4)
        with torch.no_grad():
            lin.weight.zero_()
            lin.bias.copy_(torch.nn.functional.one_hot(torch.tensor(label), 4).float())
        return lin

    vote = MajorityVote([constant(3), constant(1), constant(3), constant(1), constant(2)])
    out = vote(torch.zeros(5, 2))
    assert torch.allclose(out[0], torch.tensor([0.0, 0.4, 0.2, 0.4]))
    assert (out.argmax(1) == 1).all()
    assert torch.allclose(vote.log_probabilities(torch.zeros(1, 2)).exp().sum(), torch.tensor(1.0))


def test_sisa_retrains_only_affected_shards_from_the_right_checkpoint(digits):
    X, y = digits.X_train[:240], digits.y_train[:240]
    spec = _spec(digits.input_dim, [16], digits.num_classes)
    recipe = Recipe(lr=0.1, epochs=2, batch_size=16, seed=7)
    sisa = SISA(shards=3, slices=4, epochs_per_slice=1).fit(spec, X, y, recipe)
    before_models = list(sisa.shard_models_)
    before_states = [m.state_dict() for m in before_models]
    before_ckpts = [[dict(c) for c in ck] for ck in sisa.checkpoints_]
    before_shards = [[s.clone() for s in slices] for slices in sisa.shards_]
    # one point from slice 2 of shard 0, two from slices 0 and 3 of shard 2; shard 1 untouched
    idx = torch.stack([sisa.shards_[0][2][5], sisa.shards_[2][0][0], sisa.shards_[2][3][1]])

    info = sisa.forget(idx).info
    assert info["retrained_shards"] == [0, 2] and info["restart_slice"] == {0: 2, 2: 0}
    assert info["slices_retrained"] == (4 - 2) + (4 - 0)
    # unaffected shard: same object, same weights, same checkpoints, same data
    assert sisa.shard_models_[1] is before_models[1]
    assert _same_state(sisa.shard_models_[1].state_dict(), before_states[1])
    assert all(_same_state(a, b) for a, b in zip(sisa.checkpoints_[1], before_ckpts[1]))
    assert all(torch.equal(a, b) for a, b in zip(sisa.shards_[1], before_shards[1]))
    # shard 0 keeps checkpoints 0..2 (before its first affected slice) and changes after
    assert all(_same_state(sisa.checkpoints_[0][j], before_ckpts[0][j]) for j in range(3))
    assert not _same_state(sisa.checkpoints_[0][4], before_ckpts[0][4])
    assert not _same_state(sisa.shard_models_[2].state_dict(), before_states[2])
    # forgotten points are gone from every shard and slice; the rest are still there exactly once
    rows = torch.cat([torch.cat(slices) for slices in sisa.shards_])
    assert not torch.isin(rows, idx).any()
    assert len(rows) == len(X) - 3 and len(rows.unique()) == len(rows)

    # manual reference: checkpoint 2 of shard 0, then slices 2 and 3 of the reduced data (the documented schedule)
    reference = build_model(spec)
    reference.load_state_dict(before_ckpts[0][2])
    reduced = [s[~torch.isin(s, idx)] for s in before_shards[0]]
    for r in (2, 3):
        rows = torch.cat(reduced[: r + 1])
        train_model(reference, X[rows], y[rows],
                    dataclasses.replace(recipe, epochs=1, seed=derive_seed(recipe.seed, 1, 0, r)))
    assert _same_state(sisa.shard_models_[0].state_dict(), reference.state_dict())


def test_sisa_default_epochs_per_slice_follows_the_sisa_rule(sisa_setup):
    _, X, y, _ = sisa_setup
    s = SISA(shards=2, slices=4).fit(_spec(64, [4], 10), X, y, Recipe(epochs=5, batch_size=64))
    assert s.epochs_per_slice_ == 2  # round(2 * 5 / (4 + 1))


# --- Amnesiac ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def blobs_setup():
    X, y = _blobs(120)
    spec = _spec(8, [8], 3)
    recipe = Recipe(lr=0.1, momentum=0.5, epochs=3, batch_size=16, seed=2)
    return X, y, spec, recipe


def test_amnesiac_records_every_step_and_they_sum_to_the_training_change(blobs_setup):
    X, y, spec, recipe = blobs_setup
    aml = Amnesiac(recovery_epochs=0).fit(spec, X, y, recipe)
    plain = train_from_spec(spec, X, y, recipe).model
    assert _same_state(aml.model_.state_dict(), plain.state_dict())  # recording does not change training
    assert len(aml.batch_updates_) == recipe.epochs * 8  # ceil(120 / 16) steps per epoch
    assert all(u.dtype == torch.float32 for u in aml.batch_updates_)
    total = torch.stack(aml.batch_updates_).double().sum(0)
    change = _flat(aml.model_).double() - aml.initial_parameters_.double()
    assert torch.allclose(total, change, atol=1e-5)
    # every point is in exactly one batch per epoch
    counts = torch.bincount(torch.cat(aml.batch_ids_), minlength=len(X))
    assert (counts == recipe.epochs).all()
    assert aml.recorded_bytes_ == sum(u.numel() * 4 + b.numel() * 8 for u, b in zip(aml.batch_updates_, aml.batch_ids_))


def test_amnesiac_subtracts_exactly_the_batches_that_saw_the_points(blobs_setup):
    X, y, spec, recipe = blobs_setup
    aml = Amnesiac(recovery_epochs=0).fit(spec, X, y, recipe)
    idx = _pick(len(X), 4, seed=9)
    expected = [b for b, ids in enumerate(aml.batch_ids_) if set(ids.tolist()) & set(idx.tolist())]
    assert 0 < len(expected) <= 4 * recipe.epochs
    result = aml.forget(idx)
    assert result.info["removed_steps"] == expected
    others = [u for b, u in enumerate(aml.batch_updates_) if b not in expected]
    rebuilt = aml.initial_parameters_.double() + torch.stack(others).double().sum(0)
    assert torch.allclose(_flat(result.model).double(), rebuilt, atol=1e-5)
    # a second request never subtracts a step twice
    idx2 = torch.tensor([i for i in range(len(X)) if i not in set(idx.tolist())][:4])
    second = aml.forget(idx2).info["removed_steps"]
    assert not set(second) & set(expected)
    assert second == [b for b, ids in enumerate(aml.batch_ids_)
                      if set(ids.tolist()) & set(idx2.tolist()) and b not in expected]


def test_amnesiac_recovery_trains_on_remaining_data_only(blobs_setup):
    X, y, spec, recipe = blobs_setup
    aml = Amnesiac(recovery_epochs=1).fit(spec, X, y, recipe)
    n_train_steps = len(aml.batch_updates_)
    idx = _pick(len(X), 5, seed=4)
    info = aml.forget(idx).info
    recovery = [ids for ids, phase in zip(aml.batch_ids_, aml.batch_phase_) if phase == "recovery-0"]
    assert len(recovery) == info["recorded_steps"] - n_train_steps == 8  # ceil(115 / 16)
    seen = torch.cat(recovery)
    assert not torch.isin(seen, idx).any() and len(seen) == len(X) - 5


def test_amnesiac_can_record_only_candidate_batches(blobs_setup):
    X, y, spec, recipe = blobs_setup
    candidates = torch.tensor([1, 2, 3])
    aml = Amnesiac(recovery_epochs=0, record_candidates=candidates).fit(spec, X, y, recipe)
    assert 0 < len(aml.batch_ids_) <= 3 * recipe.epochs
    assert all(torch.isin(ids, candidates).any() for ids in aml.batch_ids_)
    plain = train_from_spec(spec, X, y, recipe).model
    assert _same_state(aml.model_.state_dict(), plain.state_dict())
    with pytest.raises(InputValidationError, match=r"Indices \[7\] were not in 'record_candidates'"):
        aml.forget([2, 7])
    assert aml.forget([2]).info["n_removed_steps"] == recipe.epochs


def test_amnesiac_request_sets_equal_per_step_records(blobs_setup):
    X, y, spec, recipe = blobs_setup
    small, large = _pick(len(X), 3, seed=1), _pick(len(X), 9, seed=1)
    full = Amnesiac(recovery_epochs=0).fit(spec, X, y, recipe)
    summed = Amnesiac(recovery_epochs=0, request_sets=[small, large]).fit(spec, X, y, recipe)
    assert summed.batch_updates_ == []  # nothing stored per step
    assert _same_state(summed.model_.state_dict(), full.model_.state_dict())
    expected = full.forget(large).model
    got = summed.forget(large).model
    assert torch.allclose(_flat(got).double(), _flat(expected).double(), atol=1e-6)
    with pytest.raises(InputValidationError, match="exactly one of the declared sets"):
        summed.forget(torch.tensor([i for i in range(len(X)) if i not in set(large.tolist())][:2]))


# --- FU ---------------------------------------------------------------------------------------

def test_conjugate_gradient_solves_a_symmetric_positive_definite_system():
    g = torch.Generator().manual_seed(0)
    M = torch.randn(12, 12, generator=g, dtype=torch.float64)
    A = M @ M.T + 0.5 * torch.eye(12, dtype=torch.float64)
    b = torch.randn(12, generator=g, dtype=torch.float64)
    x, info = conjugate_gradient(lambda v: A @ v, b, 50, 1e-12)
    assert info["cg_converged"] and not info["negative_curvature"]
    assert torch.allclose(x, torch.linalg.solve(A, b), atol=1e-9)
    _, info = conjugate_gradient(lambda v: -v, b, 50, 1e-12)
    assert info["negative_curvature"] and info["cg_iterations"] == 0


def test_fu_approximates_retraining_on_a_convex_problem():
    # multinomial logistic regression (one Linear layer) with an L2 term, trained to convergence
    X, y = _blobs(80, d=5, c=3, seed=1)
    spec = _spec(5, [], 3)
    recipe = Recipe(lr=0.5, momentum=0.9, batch_size=80, epochs=300, weight_decay=0.05, seed=0)
    fu = FU(damping=0.0, cg_iterations=50, cg_tol=1e-10).fit(spec, X, y, recipe)
    before = _flat(fu.model_).double()
    idx = torch.arange(0, 80, 8)
    result = fu.forget(idx)
    keep = torch.ones(80, dtype=torch.bool)
    keep[idx] = False
    retrained = _flat(train_from_spec(spec, X[keep], y[keep], recipe).model).double()
    after = _flat(result.model).double()
    nothing, fu_err = float((before - retrained).norm()), float((after - retrained).norm())
    assert result.info["cg_converged"]
    assert fu_err < 0.1 * nothing, (fu_err, nothing)


def test_fu_step_matches_a_dense_solve_on_a_tiny_network():
    X, y = _blobs(30, d=4, c=3, seed=3)
    spec = _spec(4, [5], 3)
    recipe = Recipe(lr=0.2, epochs=20, batch_size=10, seed=1)
    idx = torch.tensor([0, 7, 11])
    keep = torch.ones(30, dtype=torch.bool)
    keep[idx] = False

    model = train_from_spec(spec, X, y, recipe).model.double()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    theta = _flat(model).double()

    def unflat(t):
        return dict(zip(names, (c.reshape(s) for c, s in zip(t.split([s.numel() for s in shapes]), shapes))))

    def mean_loss(t):
        out = torch.func.functional_call(model, unflat(t), (X[keep].double(),))
        return nn.functional.cross_entropy(out, y[keep])

    H = torch.autograd.functional.hessian(mean_loss, theta)
    damping = max(0.0, -float(torch.linalg.eigvalsh(H).min())) + 0.5  # make H + δI positive definite
    g_u = torch.func.grad(lambda t: nn.functional.cross_entropy(
        torch.func.functional_call(model, unflat(t), (X[idx].double(),)), y[idx], reduction="sum"))(theta)
    expected = theta + torch.linalg.solve(H + damping * torch.eye(len(theta), dtype=torch.float64), g_u / 27)

    fu = FU(damping=damping, cg_iterations=200, cg_tol=1e-9).fit(spec, X, y, recipe)
    result = fu.forget(idx)
    assert result.info["cg_converged"] and not result.info["negative_curvature"]
    assert torch.allclose(_flat(result.model).double(), expected, rtol=1e-4, atol=1e-5)


def test_fu_can_estimate_the_hessian_on_a_subsample(blobs_setup):
    X, y, spec, recipe = blobs_setup
    fu = FU(damping=1.0, hessian_samples=30).fit(spec, X, y, recipe)
    info = fu.forget([0, 1]).info
    assert info["hessian_samples"] == 30 and info["update_norm"] > 0
