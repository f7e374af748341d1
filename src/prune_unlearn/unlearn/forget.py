"""Forgetting points by patching their linear regions (Theorem 1, Algorithm 1), or certified neighbourhoods.

``forget`` is the one entry point. It validates its arguments and computes the requested points'
linear regions (:class:`~prune_unlearn.unlearn.problem.PointProblem`); a strategy from
:mod:`~prune_unlearn.unlearn.point_strategies` (``"per-point"``: Theorem 1 for every point;
``"cluster"``: the paper's Algorithm 1) turns them into patch rows; the patched model adds the rows;
every point is checked on the float32 model; and the certificate is built from the rows
(:func:`~prune_unlearn.verify.certificate.certificate_for`). With a radius (by default ``"auto"``: 12/255 of the
input domain's narrowest side) the neighbourhood strategy (:mod:`~prune_unlearn.unlearn.neighbourhood_forget`)
patches a certified ℓ∞ ball around each point instead; ``radius=None`` keeps the paper's region-only patches.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from .._hashing import points_sha256
from .._progress import progress_bar
from .._threads import with_kernel_threads
from .._validation import as_float_tensor, as_label_tensor, check_in_box
from ..core.patches import BOUND_CODES, PatchedModel
from ..core.regions import HeadNetwork, point_regions
from ..core.split import split_model
from ..errors import InputValidationError, UncertifiedWarning, UnsupportedModelError
from ..verify.certificate import certificate_for
from .metrics import unlearning_metrics
from .neighbourhood import DEFAULT_OUTER, DEFAULT_RADIUS, forced_region_targets
from .neighbourhood_forget import neighbourhood_entries, run_neighbourhood_forget
from .options import STRATEGIES, ForgetOptions
from .point_strategies import region_rows
from .problem import PointProblem, check_fits, domain_box, group_units, model_device
from .region_patches import CERTIFIED_FACTOR, GATE_HEADROOM, class_patch_offsets
from .report import ForgetResult, Report
from .rows import PatchRows
from .reference import as_references, reference_logits
from .targets import FORGET_TARGETS, TARGET_RULES
from .unseen import unseen_claims, unseen_rows

__all__ = ["forget", "ForgetOptions", "DEFAULT_RADIUS", "ForgetResult", "Report", "STRATEGIES", "TARGET_RULES", "FORGET_TARGETS",
           "CERTIFIED_FACTOR",
           "GATE_HEADROOM", "run_forget", "warn_if_failed"]


@with_kernel_threads  # the whole run with one torch thread per kernel (see prune_unlearn._threads)
def forget(
    model: nn.Module,
    points: torch.Tensor,
    *,
    labels: torch.Tensor | None = None,
    head: str | None = None,
    strategy: str = "per-point",
    bound: str = "box",
    epsilon: float = 0.05,
    target: str = "random",
    seed: int = 0,
    domain: tuple[Any, Any] = (0.0, 1.0),
    feature_domain: tuple[Any, Any] | None = None,
    delta: float = 1.0,
    n_clusters: int | None = None,
    max_rounds: int = 10,
    dual_steps: int = 60,
    reference=None,
    test_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    remaining_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    progress: bool = False,
    radius: float | str | None = DEFAULT_RADIUS,
    min_radius: float = 2 / 255,
    max_radius: float = 16 / 255,
    outer: float = DEFAULT_OUTER,
    within_region: bool = False,
    intermediate: str = "ibp",
    ball_space: str = "input",
) -> ForgetResult:
    """Patch ``model`` so that every point in ``points`` is mispredicted, with certificates.

    Parameters
    ----------
    model : nn.Module or PatchedModel
        Trained classifier in eval mode whose last layers are Linear/ReLU. A ``PatchedModel`` gets
        more patches (a point in an already patched region re-solves that region's patch).
    points : tensor of shape (n, *input_shape)
        Inputs to forget, as the model takes them.
    labels : tensor of shape (n,), optional
        Their training labels: the labels that must stop being predicted. Default: the model's
        current predictions.
    head : str, optional
        Name of the head submodule (see :func:`prune_unlearn.split.split_model`).
    strategy : {"per-point", "cluster"}
    bound : {"box", "dual", "lp"}
        How region claims are proven (all sound; ``dual`` and ``lp`` give smaller patches).
    epsilon : float, default 0.05
        Proven margin (in logits) by which the target label wins on each certified region.
    target : {"random", "runner-up", "unseen"}
        Target label: random among the allowed labels (seeded), or the base model's runner-up (the paper's
        misprediction targets); or ``"unseen"``: each point's region answers as ``reference`` does at the
        point (a model that never trained on it), with a two-sided certified band (docs/design.md).
    seed : int
    domain : (lower, upper)
        Input domain box (scalars or tensors shaped like one input); certificates speak about it.
    feature_domain : (lower, upper), optional
        Domain box in the head's input space, if the prefix is not a plain flatten.
    delta : float in (0, 1], default 1
        Target forgotten share for ``strategy="cluster"``.
    n_clusters : int, optional
        K for ``strategy="cluster"`` (default: ceil(n / 10)).
    max_rounds : int, default 10
        Rounds of Algorithm 1 before stragglers get per-point patches.
    reference : Reference or list of Reference, required for ``target="unseen"``
        Models that never trained on the points, with the inputs they trained on; a point every reference
        saw is refused (:class:`InputValidationError`, nothing patched).
    test_data, remaining_data : (X, y), optional
        When given, the report includes ``A_tes``/``A_res`` before and after and the exact number
        of changed predictions.
    radius : float, "search", "auto" or None, default "auto"
        Certified neighbourhoods (``strategy``, ``delta`` and ``n_clusters`` do not apply): every point is
        mispredicted on the whole ℓ∞ ball ``B(x, radius) ∩ domain`` (in the input's units), proven, and its
        support is 0 beyond ``(1 + outer)·radius``. ``"search"``: per point, the radius on which full CROWN
        proves the base model still predicts the label, clamped to ``[min_radius, max_radius]``. ``None``:
        region-only (the paper's Theorem 1). ``"auto"`` (the default): 12/255 of the domain's narrowest side
        (12/255 for images in [0, 1]), and region-only where a ball does not apply (``strategy="cluster"``,
        ``target="unseen"``, ``feature_domain`` given, or a domain without a bounded side); ``report.radius``
        says which ran (None: region-only).
    min_radius, max_radius : float
        Range of the radius search.
    outer : float, default 0.5
        Width of the support's outer band, as a multiple of the radius.
    within_region : bool, default False
        Confine each neighbourhood to the point's tightened linear region too (region ∩ ball; ``bound`` proves it).
    intermediate : {"ibp", "crown"}
        Hidden-layer bounds of the proofs over the balls: CROWN-IBP (default; as tight as CROWN on small balls,
        ~10× faster) or full CROWN (smaller patches on large balls). The radius search always uses full CROWN.
    ball_space : {"input", "features"}, default "input"
        Where the balls live. ``"features"``: around each point's head input ``φ(x)`` (the output of the layers
        before the head), ``B∞(φ(x), radius) ∩ feature box`` with ``radius`` a number in feature units; every
        input whose features fall in the ball is covered. For heads behind conv layers, where an input ball
        reaches the head only through a loose interval box (``"auto"`` is region-only there).

    Returns
    -------
    ForgetResult
        ``(model, report, certificate)``.

    Warns
    -----
    UncertifiedWarning
        When some points were not forgotten (``report.failed`` says which and why).
    """
    options = ForgetOptions(strategy=strategy, bound=bound, epsilon=epsilon, target=target, seed=seed, domain=domain,
                            feature_domain=feature_domain, delta=delta, n_clusters=n_clusters, max_rounds=max_rounds,
                            dual_steps=dual_steps, radius=radius, min_radius=min_radius, max_radius=max_radius,
                            outer=outer, within_region=within_region, intermediate=intermediate,
                            ball_space=ball_space)
    result = run_forget(model, points, labels=labels, head=head, options=options, test_data=test_data,
                        remaining_data=remaining_data, progress=progress, reference=reference)
    warn_if_failed(result.report)
    return result


def warn_if_failed(report: Report) -> None:
    """Raise :class:`UncertifiedWarning` when a run left points not forgotten."""
    if report.n_failed > 0:
        reasons = sorted({f["reason"] for f in report.failed})
        warnings.warn(UncertifiedWarning(
            f"{report.n_failed} of {report.n_forget} point(s) were not forgotten ({'; '.join(reasons)}); "
            "report.failed and the certificate's 'failed' list say which."), stacklevel=_outside_the_package())


def _outside_the_package() -> int:
    """``stacklevel`` of the first frame outside prune_unlearn, so the warning names the user's line
    (decorators such as ``with_kernel_threads`` add frames; counting them by hand drifts)."""
    import sys
    from pathlib import Path

    package = str(Path(__file__).resolve().parents[1])
    frame, level = sys._getframe(1), 1
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def run_forget(model: nn.Module, points, *, labels=None, head: str | None = None, options: ForgetOptions,
               test_data=None, remaining_data=None, progress: bool = False, reference=None) -> ForgetResult:
    """:func:`forget` with its options gathered in ``options``, without the warning (for callers that
    report failures themselves, such as ``forget_class``)."""
    t_start = time.perf_counter()
    options = options.resolved(model, head)  # "auto" → the radius this run uses, or None (region-only)
    options.validate()
    if options.radius is not None:
        if options.target == "unseen":
            raise InputValidationError("target='unseen' is not available with a radius (certified neighbourhoods "
                                       "make the points mispredicted). HINT: use radius=None for target='unseen'.")
        _references(options, reference)  # a reference without target='unseen' is refused as in region mode
        return run_neighbourhood_forget(model, points, labels=labels, head=head, options=options,
                                        test_data=test_data, remaining_data=remaining_data, t_start=t_start)
    refs = _references(options, reference)
    x, x_dev, problem, timings = _point_problem(model, points, labels, head, options, progress, t_start)
    if refs is not None:  # before any patching: refuse points every reference saw
        ref_logits, which, described, raw_logits = reference_logits(refs, x, problem.head.num_classes)
    t0 = time.perf_counter()
    if refs is None:
        rows, n_resolved = _solve(problem, options)
    else:  # reference-model bands: every unit, already-patched ones solved again (their rows are replaced)
        rows, bands = unseen_rows(problem, list(range(len(problem.units))), ref_logits)
        n_resolved = sum(1 for u in range(len(problem.units)) if problem.units.prior[u] >= 0)
    problem.progress.close()
    timings["patches"] = time.perf_counter() - t0
    patched = rows.add_to(problem.model, replace=problem.replaced_prior_rows()).eval()
    offset = len(patched.patches) - len(rows)  # prior rows kept come first
    t0 = time.perf_counter()
    with torch.no_grad():  # the float32 model, as served, in one batch (as the misprediction check always ran)
        logits32 = patched(x_dev).cpu()
    after32 = logits32.argmax(1)
    timings["verify"] = time.perf_counter() - t0
    if refs is None:
        claims, failed = point_claims(problem, rows, patched, x, after32, offset)
    else:
        claims, failed = unseen_claims(problem, rows, bands, logits32, x, offset, ref_logits, which, described,
                                       raw_logits)
    multipliers = None
    if rows.multipliers is not None:
        multipliers = torch.zeros(len(patched.patches), *rows.multipliers.shape[1:], dtype=torch.float32)
        multipliers[offset:] = rows.multipliers
    certificate = certificate_for(patched, lower=problem.box.lower, upper=problem.box.upper,
                                  domain_source=problem.box.source, epsilon=options.epsilon, claims=claims,
                                  failed=failed, multipliers=multipliers,
                                  neighbourhoods=neighbourhood_entries(
                                      patched, options.domain, problem.box.source != "input box",
                                      feature_box=(problem.box.lower, problem.box.upper)))
    unlearn_seconds = time.perf_counter() - t_start  # everything but the optional evaluation below
    # "before" is the model as given (on a second run, already patched), so a point forgotten earlier counts as
    # already forgotten rather than as a point this run flipped
    given = problem.base_predictions  # a plain model's predictions, computed with the regions
    if given is None:
        with torch.no_grad():
            given = model(x_dev).argmax(1).cpu()  # the model as given, in one batch like the check above
    metrics = unlearning_metrics(model, patched, forget_data=(x, problem.labels), test_data=test_data,
                                 remaining_data=remaining_data, forget_predictions=(given, after32))
    counts = {"n_already_forgotten": int((given != problem.labels).sum()), "n_regions_resolved": n_resolved}
    report = _point_report(options, problem, rows, patched, claims, failed, unlearn_seconds, timings,
                           {**metrics, **counts})
    return ForgetResult(patched, report, certificate)


def _references(options: ForgetOptions, reference):
    """The reference models of ``target="unseen"`` (None for the misprediction targets)."""
    if options.target != "unseen":
        if reference is not None:
            raise InputValidationError(f"'reference' is used by target='unseen' only; got target={options.target!r}.")
        return None
    if reference is None:
        raise InputValidationError(
            "target='unseen' needs 'reference': a model that never trained on the points and the inputs it trained "
            "on, e.g. reference=Reference(model_without_fold, seen=X_other_folds).")
    return as_references(reference)


def validate_model(model, head: str | None, strategy: str) -> tuple[PatchedModel, str | None]:
    """The model (plain or patched, in eval mode) and its head's name; refuses what ``forget`` cannot patch."""
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(f"The 'model' parameter of forget must be a torch.nn.Module. Got {type(model).__name__}.")
    if isinstance(model, PatchedModel):
        if head is not None and head != model.head:
            raise InputValidationError("Do not pass head= for a PatchedModel: it keeps the head it was patched on.")
        head = model.head
        if model.has_neighbourhoods and strategy == "cluster":
            raise InputValidationError("strategy='cluster' is not available on a model that carries neighbourhood "
                                       "rows. HINT: use strategy='per-point'.")
        if model.has_class_patches and strategy == "cluster":
            raise InputValidationError("strategy='cluster' is not available on a model that carries whole-class "
                                       "patches. HINT: use strategy='per-point'.")
    base = model.base if isinstance(model, PatchedModel) else model
    if base.training:
        raise UnsupportedModelError("The model is in training mode (dropout/batch-norm would change its regions). "
                                    "HINT: call model.eval() first.")
    return model, head


def _point_problem(model, points, labels, head, options: ForgetOptions, progress: bool, t_start: float):
    """Validate, split the model, compute the points' regions and units: the strategy's problem."""
    model, head = validate_model(model, head, options.strategy)
    x = as_float_tensor(points, "points", "forget")
    patched = PatchedModel.wrap(model, head=head)
    base, split = patched.base, split_model(patched.base, head)
    x_dev = x.to(model_device(base))
    check_fits(base, split, x_dev, "points", "forget")
    box = domain_box(split, options.domain, options.feature_domain, x, "points", "forget")
    head64 = HeadNetwork.from_split(split)
    with torch.no_grad():
        feats = split.features(x_dev).detach()
        base_logits32 = base(x_dev).cpu()
    if options.feature_domain is not None:
        check_in_box(feats.cpu(), box.lower, box.upper, "points", "forget", "feature_domain box (after the prefix)")
    num_classes = split.num_classes
    y = base_logits32.argmax(1) if labels is None else as_label_tensor(labels, len(x), num_classes, "labels", "forget")
    if num_classes < 2:
        raise UnsupportedModelError("A model with one output class cannot be made to mispredict.")
    timings = {"setup": time.perf_counter() - t_start}
    t0 = time.perf_counter()
    pr = point_regions(head64, split, feats)
    units = group_units(pr, y, num_classes, patched.patches)
    timings["regions"] = time.perf_counter() - t0
    problem = PointProblem(
        model=patched, head=head64, features=feats.cpu(), labels=y, regions=pr, units=units, box=box,
        bound=options.bound, epsilon=options.epsilon, dual_steps=options.dual_steps, target=options.target,
        seed=options.seed, rng=np.random.default_rng(options.seed), offsets=class_patch_offsets(patched.class_patches),
        progress=progress_bar(total=len(units), desc="forget", unit="region", enabled=progress),
        base_predictions=None if isinstance(model, PatchedModel) else base_logits32.argmax(1))
    return x, x_dev, problem, timings


def _solve(problem: PointProblem, options: ForgetOptions) -> tuple[PatchRows, int]:
    """Regions already patched in the prior rows are re-solved for the union of their points (keeping their
    target where allowed), then the strategy patches the fresh ones. On a model with neighbourhood rows, a
    region that may reach one takes that row's target, and is left unpatched (``problem.blocked``) where
    rows with different targets (or its own label) reach it: no neighbourhood claim may break. → the rows
    (re-solved first) and how many rows are re-solved ones."""
    units, prior = problem.units, problem.prior
    forced = forced_region_targets(problem.model.neighbourhoods, problem.head, units.masks, units.excluded)
    problem.blocked = set((forced == -2).nonzero().flatten().tolist())
    free = forced != -2
    merged = ((units.prior >= 0) & free).nonzero().flatten().tolist()
    parts = []
    if merged:
        keep = torch.stack([forced[u] if forced[u] >= 0 else prior.targets[units.prior[u]]
                            if prior.bound_code[units.prior[u]] != BOUND_CODES["point"]
                            else torch.tensor(-1) for u in merged])
        parts.append(region_rows(problem, merged, keep))
    n_resolved = len(parts[0]) if parts else 0
    fresh = ((units.prior < 0) & free).nonzero().flatten().tolist()
    if problem.model.has_neighbourhoods:  # per-point only (validate_model refuses "cluster")
        parts.append(region_rows(problem, fresh, forced[fresh] if fresh else None))
    else:
        parts.append(options.make_strategy().rows(problem, fresh))
    return PatchRows.concat(parts), n_resolved


def point_claims(problem: PointProblem, rows: PatchRows, patched: PatchedModel, x: torch.Tensor,
                 after32: torch.Tensor, offset: int) -> tuple[list, list]:
    """One claim per forgotten point (the row covering it, how it was proven), one ``failed`` entry with the
    reason for every other point. ``offset``: the index of ``rows``' first row in ``patched.patches``."""
    y, pr = problem.labels, problem.regions
    point_unit = problem.units.point_unit(len(x)).tolist()
    point_row = rows.covering_row(len(x)).tolist()
    patches = patched.patches
    bound_names, proved = patches.bound_names(), rows.proved
    # whole columns as Python lists first: element-wise tensor indexing costs ~µs per field and point
    labels, predicted = y.tolist(), after32.tolist()
    targets, margins = patches.targets.tolist(), patches.certified_margin.tolist()
    blocked = problem.blocked
    claims, failed = [], []
    for i, digest in enumerate(points_sha256(x)):
        reason = None
        unit, prow, label = point_unit[i], point_row[i], labels[i]
        if unit < 0:
            reason = (f"the point lies numerically on a linear-region boundary: its smallest |pre-activation| "
                      f"({abs(float(pr.min_slack[i])):.2g}) is not clearly above float32 rounding "
                      f"({float(pr.float32_error[i]):.2g}), so no support can be certified for it")
        elif unit in blocked:
            reason = ("its linear region may reach certified neighbourhoods with different targets (or whose "
                      "target is its label). HINT: forget it with a radius instead")
        elif prow < 0:
            reason = "not reached: the forgotten share already met delta"
        elif predicted[i] == label:
            reason = "the float32 patched model still predicts the label"
        if reason:
            failed.append({"index": i, "point_sha256": digest, "label": label, "reason": reason})
            continue
        row = offset + prow
        claims.append({"index": i, "point_sha256": digest, "label": label, "target": targets[row],
                       "predicted_after": predicted[i], "region": row, "proved": proved[prow],
                       "margin": margins[row], "bound": bound_names[row]})
    return claims, failed


def _point_report(options: ForgetOptions, problem: PointProblem, rows: PatchRows, patched: PatchedModel,
                  claims: list, failed: list, unlearn_seconds: float, timings: dict, metrics: dict) -> Report:
    linf = rows.values.abs().max(dim=1).values if len(rows) else torch.zeros(0)
    n = problem.n_points
    return Report(
        strategy=options.strategy, bound=options.bound, seed=options.seed, epsilon=float(options.epsilon),
        target_rule=options.target, n_forget=n, n_forgotten=n - len({f["index"] for f in failed}),
        n_certified_region=sum(1 for c in claims if c["proved"] == "region"),
        n_certified_point=sum(1 for c in claims if c["proved"] == "point"),
        n_failed=len(failed), n_regions_new=len(rows) - metrics["n_regions_resolved"], n_patches_total=len(patched.patches),
        unlearn_seconds=unlearn_seconds,
        patch_linf_mean=float(linf.mean()) if len(linf) else 0.0,
        patch_linf_max=float(linf.max()) if len(linf) else 0.0,
        patch_stored_numbers=patched.patches.stored_numbers(),
        n_float32_robust=int(rows.float32_robust.sum()),
        rounds=rows.rounds, timings={k: round(v, 6) for k, v in timings.items()}, failed=failed, **metrics)
