"""What the privacy runner attacks: an *unlearner*, i.e. a way to train a model and then withdraw points.

An :class:`Unlearner` is one function, plus an optional training phase::

    unlearn(trained, forget, data) -> nn.Module      # the model after the withdrawal
    train(data) -> trained                           # optional; default: the plain model

* ``data`` is a :class:`TrainingSet`: the inputs ``X`` and labels ``y`` the model was trained on, the
  architecture ``spec``, the training ``recipe`` (its ``seed`` is the world's seed), the input
  ``domain`` and ``requests``, the rows that will be withdrawn (for methods that plan for them at
  training time, like Amnesiac's recorded updates).
  ``held_out`` (optional) holds points no world trains on and no attack evaluates (``n_calibration`` test
  points), for methods that calibrate on data neither model saw.
* ``forget`` is a LongTensor of rows of ``data.X`` to withdraw.
* ``trained`` is what ``train`` returned. Without ``train`` it is the plain model
  ``train_from_spec(spec, X, y, recipe).model``, which the runner trains once per world, caches and
  shares between all such methods (PRUNE, Retrain, FU); ``unlearn`` gets a private copy. A ``train``
  may return a model or an object with a ``model_`` attribute (a fitted baseline estimator); that
  model is the "before" model of the model-difference attack.

Adding a method is one registration, no change to the attacks::

    register_unlearner(Unlearner("prune-unseen", lambda m, idx, d: forget(m, d.X[idx], labels=d.y[idx],
                                 target="unseen", seed=d.recipe.seed, domain=d.domain).model,
                                 group="prune", params={"target": "unseen"}))

``params`` (what the outputs depend on beyond data, recipe and seed) and the source of ``code``
(modules) are part of the cache key, so a changed parameter or changed code never reuses stale shadows.
``extends_plain=True`` declares a ``train(data, plain)`` that starts from the world's plain model (from the
cache, or trained once for every method) and adds what it trains before any request (PRUNE ``unseen``'s K-fold
references, :func:`unseen_unlearners`); its ``train`` time is that addition alone.
``plain_from_train=True`` declares that ``train`` runs exactly the plain training (same initialisation,
batches and steps; Amnesiac only records the updates on the way), so that the runner uses its model as the
plain model instead of training another one (tested: the two are bit-identical).
Names are selected by ``resolve_unlearners``; a group name (``"prune"``) selects every member.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, NoReturn

import torch
from torch import nn

from ..._validation import check_choice, param_error
from ...errors import InputValidationError
from ..training import Recipe, train_from_spec

__all__ = ["TrainingSet", "Unlearner", "register_unlearner", "unlearner_names", "get_unlearner",
           "resolve_unlearners", "model_before", "unseen_unlearners", "with_reference_folds", "REFERENCE_FOLDS",
           "REFERENCE_STEPS", "matched_steps_recipe"]


@dataclass(frozen=True)
class TrainingSet:
    """The data one model was trained on, and how (see the module docstring)."""

    X: torch.Tensor
    y: torch.Tensor
    spec: dict
    recipe: Recipe
    domain: tuple
    requests: torch.Tensor
    held_out: tuple | None = None  # (X, y): points no world trains on and no attack uses (calibration)


@dataclass(frozen=True)
class Unlearner:
    """A named unlearning method for the privacy runner (see the module docstring for the contract)."""

    name: str
    unlearn: Callable[[Any, torch.Tensor, TrainingSet], nn.Module]
    train: Callable[[TrainingSet], Any] | None = None
    params: Mapping = field(default_factory=dict)
    group: str | None = None
    code: tuple = ()
    description: str = ""
    plain_from_train: bool = False
    extends_plain: bool = False


def model_before(trained) -> nn.Module:
    """The model an unlearner starts from: ``trained`` itself, or its ``model_`` (a fitted estimator)."""
    if isinstance(trained, nn.Module):
        return trained
    model = getattr(trained, "model_", None)
    if not isinstance(model, nn.Module):
        raise InputValidationError(
            f"An unlearner's train() must return an nn.Module or an object with a 'model_' module; got "
            f"{type(trained).__name__}.")
    return model


# --- built-in methods: PRUNE's paper targets and the paper's baselines --------------------------------

_PRUNE_CODE = ("prune_unlearn.unlearn", "prune_unlearn.core")
_BASELINE_CODE = ("prune_unlearn.experiments.baselines", "prune_unlearn.experiments.training",
                  "prune_unlearn.core.models")


def _prune(target: str) -> Unlearner:
    params = {"target": target, "strategy": "per-point", "bound": "box", "epsilon": 0.05}

    def unlearn(model, forget, data):
        from ...unlearn.forget import forget as prune_forget

        return prune_forget(model, data.X[forget], labels=data.y[forget], target=target,
                            strategy=params["strategy"], bound=params["bound"], epsilon=params["epsilon"],
                            seed=data.recipe.seed, domain=data.domain, radius=None).model  # region-only

    return Unlearner(f"prune-{target}", unlearn, params=params, group="prune", code=_PRUNE_CODE,
                     description=f"PRUNE, per-point patches, box bound, target={target!r} (the paper's rule)")


REFERENCE_FOLDS = 5  # K: reference k of a world is trained on every training row outside fold k (PrivacyConfig.folds)
# How long each reference trains (PrivacyConfig.reference_steps): "epochs" = the world's recipe as it is, so a reference
# on (K−1)/K of the rows takes (K−1)/K of the plain model's SGD steps; "matched" = as many steps as the plain model.
REFERENCE_STEPS = ("epochs", "matched")


def matched_steps_recipe(recipe: Recipe, n_full: int, n_ref: int) -> tuple[Recipe, int]:
    """``(recipe, max_steps)`` that train a model on ``n_ref`` rows for exactly as many SGD steps as ``recipe`` takes
    on ``n_full`` rows (``epochs · ⌈n_full / batch⌉``): the epochs raised to cover them (each a fresh permutation, as
    in the plain training), the annealed epochs scaled alike (rounded up).

    Why: a model stopped before it converged (the privacy table's 5 epochs) is less trained after fewer steps, and
    how much less differs from point to point (hard points are learned late), which one temperature cannot undo.
    Only the constant (optionally annealed) schedule is supported: a one-cycle schedule would end elsewhere."""
    if recipe.schedule != "constant":
        raise param_error("reference_steps", "matched_steps_recipe", "'epochs' for a recipe whose schedule is not "
                          "'constant' (matching steps would cut a one-cycle schedule short)", "matched")
    if not 0 < n_ref <= n_full:
        raise param_error("n_ref", "matched_steps_recipe", f"in [1, {n_full}]", n_ref)
    steps = recipe.epochs * -(-n_full // recipe.batch_size)
    epochs = -(-steps // -(-n_ref // recipe.batch_size))
    anneal = min(epochs, -(-recipe.anneal_epochs * epochs // recipe.epochs))
    return replace(recipe, epochs=epochs, anneal_epochs=anneal), steps


@dataclass
class _WithReferences:
    """The plain model (``model_``) and the fold references trained next to it, before any request."""

    model_: nn.Module
    references: list


_REFERENCE_MEMO: dict = {}  # the last world's references: the raw and calibrated methods share one training


def _training_key(data: TrainingSet, folds: int, steps: str = "epochs") -> str:
    import hashlib

    from ..._hashing import tensor_bytes

    h = hashlib.sha256(repr((data.spec, data.recipe.to_dict(), folds, steps)).encode())
    h.update(tensor_bytes(data.X))
    h.update(tensor_bytes(data.y))
    return h.hexdigest()


def _reference_trainer(folds: int, steps: str = "epochs"):
    def train(data: TrainingSet, plain: nn.Module) -> _WithReferences:
        """``folds`` references next to the world's plain model (``fold_references``: a K-fold split drawn from
        the world's seed alone, identical inputs in one fold; the requests play no part, so each forgotten row's
        own fold's reference never saw it), each trained with the world's recipe, for as many SGD steps as the
        plain model with ``steps="matched"``. The raw and the calibrated method of one world train them once."""
        from ...unlearn.folds import fold_references
        from ..baselines.base import derive_seed

        def fit(X, y):
            if steps == "matched":
                recipe, budget = matched_steps_recipe(data.recipe, len(data.X), len(X))
                return train_from_spec(data.spec, X, y, recipe, max_steps=budget).model
            return train_from_spec(data.spec, X, y, data.recipe).model

        key = _training_key(data, folds, steps)
        if _REFERENCE_MEMO.get("key") != key:
            _REFERENCE_MEMO.clear()
            refs = fold_references(data.X, data.y, fit, folds, seed=derive_seed(data.recipe.seed, 0x0F01D))
            _REFERENCE_MEMO.update(key=key, references=refs)
        return _WithReferences(plain.eval(), _REFERENCE_MEMO["references"])

    return train


def _unseen_unlearn(trained: _WithReferences, forget, data, calibrate: str | None = None):
    from ...unlearn.forget import forget as prune_forget

    refs = trained.references
    if calibrate:
        if data.held_out is None:
            raise InputValidationError("prune-unseen-cal calibrates on held-out points; this world has none. HINT: "
                                       "run_privacy with n_calibration > 0.")
        refs = [r.calibrated(trained.model_, *data.held_out, method=calibrate) for r in refs]
    return prune_forget(copy.deepcopy(trained.model_), data.X[forget], labels=data.y[forget], target="unseen",
                        reference=refs, seed=data.recipe.seed, domain=data.domain).model


def _calibrated_unlearn(method: str):
    def unlearn(trained: _WithReferences, forget, data):
        return _unseen_unlearn(trained, forget, data, calibrate=method)

    return unlearn


def unseen_unlearners(folds: int = REFERENCE_FOLDS, steps: str = "epochs",
                      calibration: str = "temperature") -> list[Unlearner]:
    """``prune-unseen`` and ``prune-unseen-cal`` with ``folds``-fold references (K ≥ 2), each trained for the
    recipe's epochs or (``steps="matched"``) as many SGD steps as the plain model; ``prune-unseen-cal`` calibrates
    them with ``calibration`` (a temperature, or an affine map of the logits: :mod:`~prune_unlearn.unlearn.
    calibration`). All are part of the cache key (``steps`` and ``calibration`` only when they are not the
    defaults, so that the defaults' cached worlds stay valid)."""
    from ...unlearn.calibration import CALIBRATION_METHODS

    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise param_error("folds", "unseen_unlearners", "an integer ≥ 2", folds)
    check_choice("steps", "unseen_unlearners", steps, REFERENCE_STEPS)
    check_choice("calibration", "unseen_unlearners", calibration, CALIBRATION_METHODS)
    train = _reference_trainer(folds, steps)
    extra = {} if steps == "epochs" else {"reference_steps": steps}
    how = f"{folds}-fold reference models" + (" (each as many SGD steps as the plain model)" if extra else "")
    cal = {"calibration": "temperature, log-loss quantiles"} if calibration == "temperature" else \
        {"calibration": "affine map of the logits, least squares on held-out logits"}
    cal_how = "calibrated (one temperature each)" if calibration == "temperature" else \
        "calibrated (one affine map of the logits each, least squares)"
    return [
        Unlearner("prune-unseen", _unseen_unlearn, train=train, params={"target": "unseen", "folds": folds, **extra},
                  group="prune", code=_PRUNE_CODE + _BASELINE_CODE, extends_plain=True,
                  description=f"PRUNE, target='unseen': answers as {how} trained before "
                              "the requests (the fold that held each point left out), raw logits"),
        Unlearner("prune-unseen-cal", _calibrated_unlearn(calibration), train=train,
                  params={"target": "unseen", "folds": folds, **extra, **cal},
                  group="prune", code=_PRUNE_CODE + _BASELINE_CODE, extends_plain=True,
                  description=f"PRUNE, target='unseen', {how} {cal_how} "
                              "to the base model's on held-out test points no attack uses"),
    ]


def with_reference_folds(methods: list[Unlearner], folds: int, steps: str = "epochs",
                         calibration: str = "temperature") -> list[Unlearner]:
    """``methods`` with the built-in ``prune-unseen``/``prune-unseen-cal`` rebuilt for ``folds``-fold references
    trained ``steps`` long and calibrated with ``calibration`` (:func:`unseen_unlearners`)."""
    rebuilt = {u.name: u for u in unseen_unlearners(folds, steps, calibration)}
    return [rebuilt[m.name] if m.name in rebuilt and m is _REGISTRY.get(m.name) else m for m in methods]


def _retrain(model, forget, data):
    keep = torch.ones(len(data.y), dtype=torch.bool)
    keep[forget] = False
    return train_from_spec(data.spec, data.X[keep], data.y[keep], data.recipe).model


def _estimator_unlearn(trained, forget, data):
    return trained.forget(forget).model


def _sisa_train(data):
    from ..baselines import create_baseline

    return create_baseline("sisa", shards=5, slices=5).fit(data.spec, data.X, data.y, data.recipe)


def _amnesiac_train(data):
    from ..baselines import create_baseline

    # the paper's setup: the requests are known at training time; 10 recovery SGD steps as in Table III
    return create_baseline("amnesiac", recovery_epochs=1, recovery_steps=10,
                           request_sets=[data.requests]).fit(data.spec, data.X, data.y, data.recipe)


def _fu_unlearn(model, forget, data):
    from ..baselines import FU

    class _TrainedFU(FU):
        """FU whose training phase is the plain model already trained (FU's own fit would train the same)."""

        def _fit(self) -> None:
            self._model = copy.deepcopy(model).eval()

    method = _TrainedFU(damping=0.01, hessian_samples=5000, cg_iterations=100, step_scale=1.0)
    return method.fit(data.spec, data.X, data.y, data.recipe).forget(forget).model


_BUILTIN = [
    _prune("random"),
    _prune("runner-up"),
    *unseen_unlearners(REFERENCE_FOLDS),
    Unlearner("retrain", _retrain, code=_BASELINE_CODE, description="retraining on the remaining data, same seed"),
    Unlearner("sisa", _estimator_unlearn, train=_sisa_train, params={"shards": 5, "slices": 5}, code=_BASELINE_CODE,
              description="SISA, 5 shards × 5 slices, majority vote (scored by its mean softmax)"),
    Unlearner("amnesiac", _estimator_unlearn, train=_amnesiac_train, params={"recovery_steps": 10},
              code=_BASELINE_CODE, description="Amnesiac ML, requests known at training time, 10 recovery steps",
              plain_from_train=True),
    Unlearner("fu", _fu_unlearn, params={"damping": 0.01, "hessian_samples": 5000, "cg_iterations": 100,
                                         "step_scale": 1.0}, code=_BASELINE_CODE,
              description="FU: one damped Newton (influence) step, τ = 1"),
]
_REGISTRY: dict[str, Unlearner] = {u.name: u for u in _BUILTIN}


def register_unlearner(unlearner: Unlearner, force: bool = False) -> None:
    """Make ``unlearner`` available by its name; an existing name is only replaced with ``force=True``."""
    if not isinstance(unlearner, Unlearner):
        raise param_error("unlearner", "register_unlearner", "an Unlearner", type(unlearner).__name__)
    if not unlearner.name or "," in unlearner.name or unlearner.name in _groups():
        raise param_error("unlearner.name", "register_unlearner", "a non-empty name without commas that is not a "
                          "group name", unlearner.name)
    if unlearner.name in _REGISTRY and not force:
        raise InputValidationError(f"An unlearner named {unlearner.name!r} is already registered. "
                                   f"HINT: pass force=True to replace it.")
    _REGISTRY[unlearner.name] = unlearner


def _groups() -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for u in _REGISTRY.values():
        if u.group:
            groups.setdefault(u.group, []).append(u.name)
    return groups


def unlearner_names() -> list[str]:
    """Registered method names, in registration order."""
    return list(_REGISTRY)


def get_unlearner(name: str) -> Unlearner:
    """The unlearner registered as ``name`` (a clear error for an unknown name)."""
    if name not in _REGISTRY:
        _unknown(name)
    return _REGISTRY[name]


def _unknown(name: str) -> NoReturn:
    groups = _groups()
    raise InputValidationError(
        f"Unknown unlearning method {name!r}. Known methods: {', '.join(_REGISTRY)}; groups: "
        + ", ".join(f"{g} (= {', '.join(m)})" for g, m in groups.items())
        + ". HINT: register new ones with prune_unlearn.experiments.privacy.register_unlearner.")


def resolve_unlearners(names) -> list[Unlearner]:
    """The unlearners named (group names expand to their members), without repeats, in the order given."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    out: list[str] = []
    groups = _groups()
    for name in names:
        members = groups.get(name, [name])
        for m in members:
            if m not in _REGISTRY:
                _unknown(m)
            if m not in out:
                out.append(m)
    if not out:
        raise param_error("methods", "resolve_unlearners", "at least one method name", list(names))
    return [_REGISTRY[m] for m in out]
