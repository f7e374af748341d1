"""The privacy table runner: methods by name, the Unlearner interface, shadow worlds, the cache, bad input."""

import json

import pytest
import torch
from click.testing import CliRunner

from prune_unlearn.cli import cli
from prune_unlearn.core.models import default_architecture
from prune_unlearn.errors import InputValidationError
from prune_unlearn.experiments.baselines import create_baseline
from prune_unlearn.experiments.privacy import (
    PrivacyConfig,
    Unlearner,
    get_unlearner,
    register_unlearner,
    resolve_unlearners,
    run_privacy,
    unlearner_names,
)
from prune_unlearn.experiments.privacy.methods import _REGISTRY
from prune_unlearn.experiments.training import Recipe, train_from_spec

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def calls():
    """An 'unlearner' that withdraws nothing (returns the trained model), counting its calls."""
    counter = {"unlearn": 0}

    def keep_everything(model, forget, data):
        counter["unlearn"] += 1
        assert isinstance(forget, torch.Tensor) and forget.dtype == torch.int64
        assert len(data.X) == len(data.y) and data.requests is forget
        return model

    register_unlearner(Unlearner("no-op", keep_everything, params={"v": 1}, description="returns the model"))
    yield counter
    _REGISTRY.pop("no-op", None)


def _cfg(**kw):
    base = dict(dataset="digits", methods=("retrain", "prune-random", "no-op"), n_forget=20, n_unseen=40,
                n_shadows=6, n_calibration=0, epochs=2, workers=1, threads=1)
    return PrivacyConfig(**{**base, **kw})


def test_method_names_groups_and_registration(calls):
    assert unlearner_names()[:8] == ["prune-random", "prune-runner-up", "prune-unseen", "prune-unseen-cal", "retrain",
                                     "sisa", "amnesiac", "fu"]
    assert [u.name for u in resolve_unlearners("retrain,prune,retrain")] == [
        "retrain", "prune-random", "prune-runner-up", "prune-unseen", "prune-unseen-cal"]
    known = (r"Known methods: prune-random, .*groups: prune \(= prune-random, prune-runner-up, prune-unseen, "
             r"prune-unseen-cal\)")
    with pytest.raises(InputValidationError, match=r"Unknown unlearning method 'prune-nope'\. " + known):
        resolve_unlearners(["prune-nope"])
    with pytest.raises(InputValidationError, match="already registered"):
        register_unlearner(Unlearner("no-op", lambda m, i, d: m))
    with pytest.raises(InputValidationError, match="not a group name"):
        register_unlearner(Unlearner("prune", lambda m, i, d: m))
    assert get_unlearner("no-op").description == "returns the model"


def test_amnesiac_training_is_the_plain_training(digits):
    """Unlearner.plain_from_train for Amnesiac: its recorded training is bit for bit the plain model."""
    spec = default_architecture("digits", digits.input_dim, digits.num_classes)
    recipe = Recipe(lr=0.1, epochs=3, batch_size=32, seed=5)
    plain = train_from_spec(spec, digits.X_train, digits.y_train, recipe).model
    amnesiac = create_baseline("amnesiac", recovery_steps=10, request_sets=[torch.arange(0, 300, 7)]).fit(
        spec, digits.X_train, digits.y_train, recipe)
    for (name, a), b in zip(amnesiac.model_.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(a, b), name
    assert get_unlearner("amnesiac").plain_from_train


def test_prune_unseen_adds_k_fold_references_to_the_plain_model(digits):
    """extends_plain: prune-unseen's training starts from the world's plain model and trains K references, each
    without one fold; every forgotten row is answered by the one reference whose fold held it."""
    from prune_unlearn._hashing import points_sha256
    from prune_unlearn.experiments.privacy.methods import TrainingSet, with_reference_folds

    spec = default_architecture("digits", digits.input_dim, digits.num_classes)
    recipe = Recipe(lr=0.1, epochs=2, batch_size=32, seed=5)
    data = TrainingSet(digits.X_train, digits.y_train, spec, recipe, (0.0, 1.0), torch.arange(0, 300, 7))
    plain = train_from_spec(spec, digits.X_train, digits.y_train, recipe).model.eval()
    u = with_reference_folds([get_unlearner("prune-unseen")], 3)[0]
    assert u.extends_plain and u.params["folds"] == 3 and get_unlearner("prune-unseen").params["folds"] == 5
    trained = u.train(data, plain)
    assert trained.model_ is plain and len(trained.references) == 3
    n = len(digits.y_train)
    assert sum(n - len(r.seen) for r in trained.references) == n  # each row left out by exactly one reference
    for h in points_sha256(digits.X_train[data.requests]):
        assert sum(not r.saw(h) for r in trained.references) == 1
    after = u.unlearn(trained, data.requests, data)
    with torch.no_grad():
        assert not torch.equal(after(digits.X_train[data.requests]), plain(digits.X_train[data.requests]))


def test_matched_references_take_as_many_sgd_steps_as_the_plain_model(digits):
    """reference_steps="matched": a reference on 2/3 of the rows runs the plain model's number of SGD steps (more
    epochs), at the same learning rates when every epoch is annealed (the privacy table's Fashion-MNIST recipe);
    the default ("epochs") takes 2/3 of them."""
    from prune_unlearn.experiments.privacy.methods import matched_steps_recipe
    from prune_unlearn.experiments.training import lr_at_step, train_model
    from prune_unlearn.core.models import build_model

    spec = default_architecture("digits", digits.input_dim, digits.num_classes)
    X, y = digits.X_train, digits.y_train
    n, m = len(y), 2 * len(y) // 3

    def schedule(recipe, rows, **kw):
        """(the number of SGD steps, the learning rate of each) of training on the first ``rows`` rows."""
        model = build_model(spec, seed=recipe.seed)
        lrs = []
        res = train_model(model, X[:rows], y[:rows], recipe, step_hook=lambda idx: lrs.append(len(idx)), **kw)
        per_epoch = -(-rows // recipe.batch_size)
        rates = [lr_at_step(recipe, s // per_epoch, s % per_epoch, per_epoch) for s in range(len(lrs))]
        return len(lrs), rates, res

    base = Recipe(lr=0.1, epochs=2, batch_size=32, anneal_epochs=2, seed=3)
    full_steps, full_rates, _ = schedule(base, n)
    assert full_steps == 2 * -(-n // 32) and set(full_rates) == {0.01}
    recipe, budget = matched_steps_recipe(base, n, m)
    assert budget == full_steps and recipe.epochs == 3 and recipe.anneal_epochs == 3
    steps, rates, _ = schedule(recipe, m, max_steps=budget)
    assert steps == full_steps and set(rates) == {0.01}
    assert schedule(base, m)[0] < 0.7 * full_steps  # the default: the recipe's epochs, so fewer steps
    # a partly annealed recipe keeps its constant phase first and its annealed epochs last, scaled
    recipe, budget = matched_steps_recipe(Recipe(lr=0.1, epochs=4, batch_size=32, anneal_epochs=1), n, m)
    assert budget == 4 * -(-n // 32) and recipe.epochs == 6 and recipe.anneal_epochs == 2
    with pytest.raises(InputValidationError, match="'reference_steps' parameter of matched_steps_recipe must be "
                                                   "'epochs' for a recipe whose schedule is not 'constant'"):
        matched_steps_recipe(Recipe(schedule="onecycle"), n, m)


def test_matched_unseen_unlearners_pass_the_step_budget_and_key_it(digits, monkeypatch):
    """The built-in prune-unseen with steps="matched" trains each reference with the plain model's step budget, and
    says so in its parameters (the cache key); the default keeps the parameters (and cached worlds) it had."""
    from prune_unlearn.experiments.privacy import methods
    from prune_unlearn.experiments.privacy.methods import TrainingSet, unseen_unlearners, with_reference_folds

    assert "reference_steps" not in get_unlearner("prune-unseen").params
    assert get_unlearner("prune-unseen-cal").params["calibration"].startswith("temperature")
    u = with_reference_folds([get_unlearner("prune-unseen"), get_unlearner("retrain")], 3, "matched")
    assert u[0].params["reference_steps"] == "matched" and u[1] is get_unlearner("retrain")
    cal = with_reference_folds([get_unlearner("prune-unseen-cal")], 3, "matched", "affine")[0]
    assert cal.params["calibration"].startswith("affine") and cal.params["reference_steps"] == "matched"
    with pytest.raises(InputValidationError, match="'calibration' parameter of unseen_unlearners must be one of"):
        unseen_unlearners(3, "matched", "isotonic")
    calls = []
    real = methods.train_from_spec
    monkeypatch.setattr(methods, "train_from_spec",
                        lambda spec, X, y, recipe, **kw: calls.append((len(X), recipe.epochs, kw)) or
                        real(spec, X, y, recipe, **kw))
    spec = default_architecture("digits", digits.input_dim, digits.num_classes)
    recipe = Recipe(lr=0.1, epochs=2, batch_size=32, seed=5)
    data = TrainingSet(digits.X_train, digits.y_train, spec, recipe, (0.0, 1.0), torch.arange(0, 300, 7))
    plain = real(spec, digits.X_train, digits.y_train, recipe).model.eval()
    methods._REFERENCE_MEMO.clear()
    u[0].train(data, plain)
    budget = 2 * -(-len(digits.y_train) // 32)
    assert len(calls) == 3 and all(kw == {"max_steps": budget} and epochs == 3 for _, epochs, kw in calls)
    calls.clear()
    methods._REFERENCE_MEMO.clear()
    unseen_unlearners(3)[0].train(data, plain)
    assert len(calls) == 3 and all(kw == {} and epochs == 2 for _, epochs, kw in calls)
    with pytest.raises(InputValidationError, match="'steps' parameter of unseen_unlearners must be one of"):
        unseen_unlearners(3, "long")


def test_calibrated_unseen_target_holds_out_test_points_and_shares_the_references(tmp_path, monkeypatch):
    """prune-unseen and prune-unseen-cal train one set of references per world; the calibration points are
    neither attacked nor candidates, and both variants change no prediction outside the forgotten points."""
    from prune_unlearn.experiments.privacy import methods

    trained = []
    real = methods.train_from_spec
    monkeypatch.setattr(methods, "train_from_spec", lambda *a, **k: trained.append(1) or real(*a, **k))
    result = run_privacy(_cfg(methods=("prune-unseen", "prune-unseen-cal"), n_calibration=100, n_shadows=6,
                              folds=3), tmp_path, log=lambda m: None)
    assert len(trained) == 7 * 3  # each world: its 3 references, once for both methods (the plain model: worlds)
    assert result["config"]["folds"] == 3
    des = result["design"]
    assert des["n_calibration"] == 100 and des["n_unseen_population"] == 260
    rows = {r["method"]: r for r in result["rows"]}
    for row in rows.values():
        assert row["changed_tes"] == 0 and row["changed_res"] == 0
    assert rows["prune-unseen"]["population"]["loss"] != rows["prune-unseen-cal"]["population"]["loss"]


def test_run_privacy_on_digits_writes_the_table_and_reuses_its_shadows(tmp_path, calls):
    logs = []
    result = run_privacy(_cfg(), tmp_path, log=logs.append)
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == ["retrain", "prune-random", "no-op"]
    assert calls["unlearn"] == 7  # the target and 6 shadows
    prune, noop = rows["prune-random"], rows["no-op"]
    # PRUNE: every forgotten point mispredicted, nothing else changed, so the pair of models gives them away
    assert prune["A_u_a"] == 0.0 and prune["changed_tes"] == 0 and prune["changed_res"] == 0
    for where in ("remaining", "unseen"):
        assert prune["difference"][where]["posterior_shift"]["auc"] == 1.0
        assert prune["difference"][where]["posterior_shift"]["precision_at_k"] == 1.0
    assert prune["ulira"]["online"]["auc"] > 0.95  # "patched" is far from "never seen"
    # a method that withdraws nothing: the model did not move, and it still remembers what it saw
    assert noop["A_u_a"] == noop["A_u_b"] and noop["changed_tes"] == 0
    assert noop["difference"]["remaining"]["loss_increase"]["auc"] == 0.5
    assert noop["ulira"]["online"] == noop["lira_before"]["online"]
    des = result["design"]
    assert des["n_forget"] == 20 and des["n_unseen_candidates"] == 40 and des["in_per_candidate"] == [2]
    assert des["n_unseen_population"] == 360 and des["n_remaining"] == 1417
    pop = prune["population"]["loss"]
    assert pop["n_pos"] == 20 and pop["n_neg"] == 360 and pop["max_false_positives"] == {"0.01": 3, "0.001": 0}
    assert pop["tpr"]["0.001"] is None
    for name in ("privacy-digits.md", "privacy-digits.json", "privacy-digits.csv"):
        assert (tmp_path / name).is_file()
    md = (tmp_path / "privacy-digits.md").read_text()
    assert "| metric | retrain | prune-random | no-op |" in md and "U-LiRA online AUC" in md
    assert json.loads((tmp_path / "privacy-digits.json").read_text())["config"]["n_shadows"] == 6
    assert sorted(p.name for p in (tmp_path / "privacy-cache" / "digits" / "shadow-00").iterdir()) == [
        "no-op.safetensors", "plain.safetensors", "prune-random.safetensors", "retrain.safetensors"]

    # same configuration again: everything comes from the cache, the numbers are the same
    logs.clear()
    again = run_privacy(_cfg(), tmp_path, log=logs.append)
    assert calls["unlearn"] == 7 and not any("trained" in m or "stale" in m for m in logs)
    assert [r["ulira"] for r in again["rows"]] == [r["ulira"] for r in result["rows"]]


    # a changed method parameter: its entries are stale, recomputed and said so; the plain models still count
    _REGISTRY["no-op"] = Unlearner("no-op", _REGISTRY["no-op"].unlearn, params={"v": 2})
    logs.clear()
    run_privacy(_cfg(methods=("no-op",)), tmp_path, log=logs.append)
    stale = [m for m in logs if "is stale" in m]
    assert len(stale) == 7 and all("changed: params" in m for m in stale)
    assert calls["unlearn"] == 14 and not any("plain model trained" in m for m in logs)


def test_workers_give_the_same_numbers(tmp_path, calls):
    one = run_privacy(_cfg(methods=("no-op",)), tmp_path / "a", log=lambda m: None)
    two = run_privacy(_cfg(methods=("no-op",), workers=2), tmp_path / "b", log=lambda m: None)
    assert one["rows"][0]["ulira"] == two["rows"][0]["ulira"]
    assert one["rows"][0]["population"] == two["rows"][0]["population"]


def test_a_failing_method_stops_the_run_with_its_error(tmp_path):
    def broken(model, forget, data):
        raise RuntimeError("boom in unlearn")

    register_unlearner(Unlearner("broken", broken))
    try:
        with pytest.raises(RuntimeError, match="boom in unlearn"):
            run_privacy(_cfg(methods=("broken",), workers=2), tmp_path, log=lambda m: None)
    finally:
        _REGISTRY.pop("broken", None)
    assert not (tmp_path / "privacy-digits.md").exists()


@pytest.mark.parametrize("change, message", [
    ({"methods": ("retrain", "prune-nope")}, "Unknown unlearning method 'prune-nope'"),
    ({"n_shadows": 5}, r"'n_shadows' parameter of run_privacy must be an integer ≥ 6"),
    ({"n_forget": 200, "n_unseen": 361}, r"'n_unseen' parameter of run_privacy must be at most the 360 test points"),
    ({"n_forget": 1437, "n_shadows": 100}, r"'n_forget' parameter of run_privacy must be smaller than the 1437 "),
    ({"variance": "pooled"}, "'variance' parameter of run_privacy must be one of"),
    ({"workers": 0}, "'workers' parameter of run_privacy must be an integer ≥ 1"),
    ({"methods": ("prune-unseen-cal",)}, "'n_calibration' parameter of run_privacy must be at least 50"),
    ({"folds": 1}, "'folds' parameter of run_privacy must be an integer ≥ 2"),
    ({"reference_steps": "long"}, "'reference_steps' parameter of run_privacy must be one of 'epochs', 'matched'"),
    ({"reference_calibration": "iso"}, "'reference_calibration' parameter of run_privacy must be one of 'temperature'"),
    ({"methods": ("prune-unseen-cal",), "n_calibration": 100, "reference_calibration": "affine"},
     r"'n_calibration' parameter of run_privacy must be at least 110 for prune-unseen-cal's affine calibration"),
    ({"folds": 1438}, "'folds' parameter of run_privacy must be at most the 1437 training points"),
    ({"n_calibration": 330}, r"'n_unseen' parameter of run_privacy must be at most the 360 .* less the 330 held out"),
])
def test_bad_input_is_refused_before_anything_is_written(tmp_path, change, message):
    out = tmp_path / "out"
    with pytest.raises(InputValidationError, match=message):
        run_privacy(_cfg(methods=("retrain",), **change) if "methods" not in change else _cfg(**change), out,
                    log=lambda m: None)
    assert not out.exists()


def test_bench_privacy_cli_errors_are_one_line_and_write_nothing(tmp_path):
    res = CliRunner().invoke(cli, ["bench", "privacy", "--data", "digits", "--methods", "retrain,nope",
                                   "--out", str(tmp_path)])
    # a method name outside the list is a usage error (exit 2) naming the option and the choices
    assert res.exit_code == 2 and "'nope' is not one of prune, retrain, sisa, amnesiac, fu" in res.output
    res = CliRunner().invoke(cli, ["bench", "privacy", "--data", "digits", "--out", str(tmp_path)])
    # digits has 360 test points: too few for the default 1,000 unseen candidates
    assert res.exit_code == 1 and "'n_unseen' parameter of run_privacy must be at most the 360" in res.output
    # too few shadow models for the likelihood-ratio attacks: a clear error naming the minimum
    res = CliRunner().invoke(cli, ["bench", "privacy", "--data", "digits", "--shadows", "3", "--calibration", "0",
                                   "--out", str(tmp_path)])
    assert res.exit_code == 1 and "Error: The 'n_shadows' parameter of run_privacy must be an integer ≥ 6" in res.output
    res = CliRunner().invoke(cli, ["bench", "privacy", "--data", "digits", "--folds", "1", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "--folds" in res.output and "1 is not in the range x>=2" in res.output
    res = CliRunner().invoke(cli, ["bench", "privacy", "--data", "digits", "--reference-steps", "long", "--out",
                                   str(tmp_path)])
    assert res.exit_code == 2 and "--reference-steps" in res.output and "'long' is not one of" in res.output
    assert list(tmp_path.iterdir()) == []
