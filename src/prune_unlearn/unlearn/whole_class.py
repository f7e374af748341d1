"""Whole-class unlearning (the paper's Algorithm 2, Eq. 11) with CROWN-relaxed supports.

``forget_class`` validates its arguments, runs the :class:`~prune_unlearn.unlearn.class_strategy.WholeClass`
strategy (Algorithm 2, described there) on the class's members, adds its class rows and exact point rows
to the model, patches the last stragglers by Theorem 1 (``delta = 1``), and builds the certificate and
report. Relaxed supports constrain fewer neurons than a linear region, so they cover nearby members and
unseen points of the class too — that is the point of the relaxation.

Decision gate (``decision_gate=True``, the default; beyond the paper): every relaxed support is
multiplied by ``clamp(λ_d · (f_label − max_{j≠label} f_j), 0, 1)`` of the base logits. CROWN's ball
is where the model provably still predicts the class; widened by ``radius_scale`` it also reaches
inputs the model assigns to other classes, and the gate cuts exactly those off. So class patches
change no input the base model does not assign to the forgotten class (bit for bit), and
``radius_scale`` trades generalisation for patch count and time instead of for damage to other
classes. ``decision_gate=False`` is the paper's plain relaxed support.

What is claimed: every training member is mispredicted (checked on the float32 model). Relaxed
supports change outputs beyond the forgotten points by design; the report counts the changed
predictions on other classes instead of promising none.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from .._hashing import points_sha256
from .._progress import progress_bar
from .._validation import as_float_tensor, check_choice, check_fraction, check_positive_float
from .._validation import check_positive_int, check_seed
from ..core.confusion import BOUND_METHODS
from ..core.patches import PatchedModel, stack_preacts
from ..core.regions import HeadNetwork, point_regions
from ..core.split import split_model
from ..errors import InputValidationError, UnsupportedModelError
from ..verify.certificate import certificate_for
from .class_strategy import ClassProblem, WholeClass
from .forget import ForgetOptions, run_forget, warn_if_failed
from .metrics import accuracy, predict
from .problem import check_fits, domain_box, model_device
from .report import ClassReport, ForgetResult, Report

RADIUS_RULES = ("per-member", "calibrated")
INTERMEDIATE_BOUNDS = ("crown", "ibp")  # hidden-layer bounds of the CROWN radius search: CROWN, CROWN-IBP

__all__ = ["forget_class", "class_metrics"]


def class_metrics(base: nn.Module, patched: nn.Module, label: int, *, train=None, test=None) -> dict:
    """The paper's Table V metrics: ``A_u`` (class, train), ``A_tes_u`` (class, test), ``A_res``
    (other classes, train), ``A_tes_r`` (other classes, test), before/after, and changed predictions
    on other classes (the numeric fields of :class:`~prune_unlearn.unlearn.report.ClassReport`)."""
    out = {}
    for split_name, data in (("train", train), ("test", test)):
        if data is None:
            continue
        X, y = data
        before, after = predict(base, X), predict(patched, X)
        cls, other = y == label, y != label
        key_u, key_r = ("A_u", "A_res") if split_name == "train" else ("A_tes_u", "A_tes_r")
        out[f"{key_u}_before"] = accuracy(before[cls], y[cls])
        out[f"{key_u}_after"] = accuracy(after[cls], y[cls])
        out[f"{key_r}_before"] = accuracy(before[other], y[other])
        out[f"{key_r}_after"] = accuracy(after[other], y[other])
        out[f"changed_other_{split_name}"] = int((before[other] != after[other]).sum())
        out[f"flipped_class_{split_name}"] = int((after[cls] != y[cls]).sum())
        if split_name == "test":
            out["reach_other_test"] = _relaxed_reach(patched, X[other])
    return out


def _relaxed_reach(patched: nn.Module, X: torch.Tensor) -> float:
    """Share of ``X`` inside some relaxed support, ignoring the decision gate: how far the relaxed regions
    themselves reach into other classes (what the gate, not the regions, keeps unchanged)."""
    if not isinstance(patched, PatchedModel) or len(X) == 0:
        return 0.0
    device = next(patched.parameters()).device
    hits = sum(int((patched.class_support(X[i: i + 4096].to(device), gated=False) > 0).any(dim=1).sum())
               for i in range(0, len(X), 4096))
    return hits / len(X)


def forget_class(
    model: nn.Module,
    label: int,
    X_class: torch.Tensor,
    *,
    head: str | None = None,
    target: int | str = "random",
    seed: int = 0,
    delta: float = 1.0,
    epsilon: float = 0.05,
    bound: str = "box",
    radius_scale: float = 1.0,
    radius: str = "per-member",
    calibration_points: int = 32,
    crown_iterations: int = 8,
    radius_rtol: float = 0.06,
    intermediate: str = "crown",
    decision_gate: bool = True,
    max_relaxed: int = 1024,
    batch_size: int = 64,
    max_rounds: int = 5,
    domain=(0.0, 1.0),
    feature_domain=None,
    train_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    test_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    progress: bool = False,
) -> ForgetResult:
    """Forget a whole class: every training member of ``label`` is mispredicted afterwards.

    Parameters
    ----------
    model : nn.Module (eval mode) with a Linear/ReLU head.
    label : int — the class to forget.
    X_class : (n, *input_shape) — the class's training points (``D_U``).
    target : "random" (seeded, per round) or an int label to push the class to.
    radius_scale : float, default 1.0
        Widening of each member's CROWN-certified ball before taking its stable neurons (1.0: the
        certified ball itself; larger: fewer constraints, more generalisation to unseen class points,
        more changes on other classes). Chosen by measurement, see ``docs/results.md``.
    radius : {"per-member", "calibrated"}
        ``per-member`` (Algorithm 2): CROWN bisection for every member that gets a relaxed support, and
        CROWN stable neurons on its ball. ``calibrated``: CROWN bisection only for ``calibration_points``
        members nearest the centroid; their median radius is used for every member, with stable
        neurons from CROWN-IBP (interval bounds inside) — far cheaper, a little looser.
    crown_iterations : most steps of the radius search.
    radius_rtol : relative precision at which the radius search stops (the default 0.06 takes three
        bisection steps once the search has bracketed a radius within ×1.5). The search is warm-started
        at the median radius of the members searched before, runs in float32, and every radius it
        returns is then proven in float64 (see :func:`~prune_unlearn.bounds.certified_radius`).
    intermediate : {"crown", "ibp"}
        Hidden-layer bounds of the per-member CROWN calls: full CROWN (tightest), or interval bounds
        (CROWN-IBP: ~9× faster on a 784-256-256 head, smaller radii, so it wants a larger ``radius_scale``).
    decision_gate : bool, default True
        Confine class patches to inputs the base model assigns to ``label`` (see the module docstring).
    max_relaxed : most CROWN-relaxed supports per round (members beyond it get exact supports).
    delta : forgotten share of ``X_class`` to reach; with 1.0 stragglers get per-point patches.
    train_data, test_data : (X, y), optional — for the report's Table V metrics (``report.whole_class``).

    Warns
    -----
    UncertifiedWarning
        When some members were not forgotten (``report.failed`` says which and why).
    """
    t_start = time.perf_counter()
    strategy = WholeClass(target=target, delta=delta, epsilon=epsilon, bound=bound, radius_scale=radius_scale,
                          radius=radius, calibration_points=calibration_points, crown_iterations=crown_iterations,
                          radius_rtol=radius_rtol, intermediate=intermediate, decision_gate=decision_gate,
                          max_relaxed=max_relaxed, batch_size=batch_size, max_rounds=max_rounds)
    _validate_options(strategy, seed)
    x, problem = _class_problem(model, label, X_class, head, strategy, seed, domain, feature_domain, progress)
    result = _patch_class(model, head, x, problem, strategy, seed, domain, feature_domain, train_data, test_data,
                          t_start)
    warn_if_failed(result.report)
    return result


def _patch_class(model, head, x, problem: ClassProblem, strategy: WholeClass, seed: int, domain, feature_domain,
                 train_data, test_data, t_start: float) -> ForgetResult:
    """Run Algorithm 2, add its rows to the model, patch the last stragglers by Theorem 1 (``delta = 1``), then
    the claims, the certificate and the report."""
    label = problem.label
    t_rounds = time.perf_counter()
    rows = strategy.rows(problem)
    problem.progress.close()
    patched = rows.add_to(PatchedModel.wrap(model, head=head)).eval()
    stragglers = rows.pending.nonzero().flatten()
    point_result = None
    if strategy.delta >= 1.0 and len(stragglers):
        point_result = run_forget(patched, x[stragglers], labels=torch.full((len(stragglers),), label),
                                  options=ForgetOptions(bound=strategy.bound, epsilon=strategy.epsilon, seed=seed,
                                                        radius=None,  # stragglers: region patches (Algorithm 2)
                                                        domain=domain, feature_domain=feature_domain))
        patched = point_result.model
    timings = {"rounds": time.perf_counter() - t_rounds}
    after = predict(patched, x, batch_size=4096) if len(x) else torch.zeros(0, dtype=torch.int64)
    claims, failed = _class_claims(x, label, after, rows, stragglers if point_result is not None else None)
    certificate = certificate_for(
        patched, lower=problem.box.lower, upper=problem.box.upper, domain_source=problem.box.source,
        epsilon=strategy.epsilon, claims=claims, failed=failed, scope=f"whole class {label}",
        multipliers=point_result.certificate.multipliers if point_result else None)
    unlearn_seconds = time.perf_counter() - t_start
    whole = ClassReport(label=label, crown_points=rows.crown_points, common_radius=rows.common_radius,
                        stragglers_per_point=int(len(stragglers)) if point_result else 0,
                        **class_metrics(model, patched, label, train=train_data, test=test_data))
    report = _class_report(strategy, seed, x, model, patched, rows, point_result, claims, failed, after,
                           unlearn_seconds, timings, whole)
    return ForgetResult(patched, report, certificate)


def _validate_options(strategy: WholeClass, seed) -> None:
    caller = "forget_class"
    check_seed(caller, seed)
    check_fraction("delta", caller, strategy.delta)
    check_positive_float("epsilon", caller, strategy.epsilon)
    check_positive_float("radius_scale", caller, strategy.radius_scale)
    check_positive_float("radius_rtol", caller, strategy.radius_rtol, allow_zero=True)
    check_positive_int("crown_iterations", caller, strategy.crown_iterations)
    check_positive_int("max_rounds", caller, strategy.max_rounds)
    check_positive_int("batch_size", caller, strategy.batch_size)
    check_choice("bound", caller, strategy.bound, BOUND_METHODS)
    check_choice("radius", caller, strategy.radius, RADIUS_RULES)
    check_choice("intermediate", caller, strategy.intermediate, INTERMEDIATE_BOUNDS)
    if not isinstance(strategy.decision_gate, bool):
        raise InputValidationError(f"The 'decision_gate' parameter of {caller} must be True or False. "
                                   f"Got {strategy.decision_gate!r} instead.")
    check_positive_int("calibration_points", caller, strategy.calibration_points)
    max_relaxed = strategy.max_relaxed
    if isinstance(max_relaxed, bool) or not isinstance(max_relaxed, int) or max_relaxed < 0:
        raise InputValidationError(f"The 'max_relaxed' parameter of {caller} must be a non-negative integer. "
                                   f"Got {max_relaxed!r} instead.")


def _class_problem(model, label, X_class, head, strategy: WholeClass, seed: int, domain, feature_domain,
                   progress: bool) -> tuple[torch.Tensor, ClassProblem]:
    """Check the model, label and target; compute the members' regions: Algorithm 2's problem."""
    caller = "forget_class"
    if isinstance(model, PatchedModel):
        raise UnsupportedModelError("forget_class needs the unpatched model (class patches are built on the base "
                                    "model's regions). HINT: pass patched.unpatched().")
    if model.training:
        raise UnsupportedModelError("The model is in training mode. HINT: call model.eval() first.")
    x = as_float_tensor(X_class, "X_class", caller)
    split = split_model(model, head)
    num_classes = split.num_classes
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= int(label) < num_classes:
        raise InputValidationError(f"The 'label' parameter of {caller} must be a class in [0, {num_classes - 1}]. "
                                   f"Got {label!r} instead.")
    label = int(label)
    target = strategy.target
    if target != "random" and (isinstance(target, bool) or not isinstance(target, (int, np.integer))
                               or not 0 <= int(target) < num_classes or int(target) == label):
        raise InputValidationError(f"The 'target' parameter of {caller} must be 'random' or a label in "
                                   f"[0, {num_classes - 1}] other than {label}. Got {target!r} instead.")
    device = model_device(model)
    check_fits(model, split, x.to(device), "X_class", caller)
    box = domain_box(split, domain, feature_domain, x, "X_class", caller)
    head64 = HeadNetwork.from_split(split)
    with torch.no_grad():
        feats = split.features(x.to(device)).detach()
        preacts, base_logits = split.head_forward(feats)
    problem = ClassProblem(head=head64, label=label, features=feats.to("cpu", torch.float64),
                           regions=point_regions(head64, split, feats), z=stack_preacts(preacts, base_logits),
                           base_logits=base_logits, box=box, rng=np.random.default_rng(seed),
                           progress=progress_bar(total=len(x), desc="forget-class", unit="point", enabled=progress))
    return x, problem


def _class_claims(x: torch.Tensor, label: int, after: torch.Tensor, rows, stragglers) -> tuple[list, list]:
    """One claim per member no longer predicted as ``label`` (and by what), one ``failed`` entry per other."""
    claims, failed = [], []
    straggler_set = set(stragglers.tolist()) if stragglers is not None else set()
    degenerate, already = rows.degenerate.tolist(), rows.already.tolist()
    for i, (digest, predicted) in enumerate(zip(points_sha256(x), after.tolist())):
        if predicted == label:
            reason = ("the point lies numerically on a linear-region boundary" if degenerate[i]
                      else "not reached: the forgotten share already met delta")
            failed.append({"index": i, "point_sha256": digest, "label": label, "reason": reason})
            continue
        claims.append({"index": i, "point_sha256": digest, "label": label, "target": predicted,
                       "predicted_after": predicted, "region": -1, "proved": "point", "margin": 0.0,
                       "bound": "per-point patch" if i in straggler_set else
                       "base model" if already[i] else "class patch"})
    return claims, failed


def _class_report(strategy: WholeClass, seed: int, x, model, patched: PatchedModel, rows, point_result, claims,
                  failed, after, unlearn_seconds: float, timings: dict, whole: ClassReport) -> Report:
    n, label = len(x), rows.label
    class_set = patched.class_patches
    values = class_set.values
    y = torch.full((n,), label, dtype=torch.int64)
    return Report(
        strategy="class", bound=strategy.bound, seed=seed, epsilon=float(strategy.epsilon),
        target_rule=str(strategy.target), n_forget=n, n_forgotten=len(claims), n_certified_region=0,
        n_certified_point=len(claims), n_failed=len(failed),
        n_regions_new=len(class_set) + (len(point_result.model.patches) if point_result else 0),
        n_patches_total=len(class_set) + len(patched.patches),
        A_u_before=float(accuracy(predict(model, x), y)) if n else None,
        A_u_after=float((after == label).float().mean()) if n else None,
        unlearn_seconds=unlearn_seconds,
        patch_linf_mean=float(values.abs().max(dim=1).values.mean()) if len(values) else 0.0,
        patch_linf_max=float(values.abs().max()) if len(values) else 0.0,
        patch_stored_numbers=float(len(class_set) * (2 * rows.num_hidden / 32 + 2) + values.numel()),
        n_float32_robust=0, rounds=rows.rounds, timings={k: round(v, 6) for k, v in timings.items()},
        failed=failed, whole_class=whole)

