"""Forgetting points by patching their linear regions (Theorem 1, Algorithm 1).

``forget`` is the one entry point. Two strategies:

``"per-point"`` (default)
    Every requested point gets Theorem 1's treatment: a support on its own linear region and a
    confusion patch proven to make a wrong label win on the whole (tightened) region.
    Points sharing a region share one patch.
``"cluster"``
    The paper's Algorithm 1: K-means on the points (in feature space); the point nearest each
    centroid is the representative; its region gets a certified patch; every member that the same
    patch value flips gets a support on its own region with that value (certified at the point);
    the rest go to the next round, until the forgotten share reaches ``delta``. With
    ``delta = 1`` every straggler left after ``max_rounds`` gets a per-point patch.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from .._version import __version__
from .._hashing import points_sha256, state_sha256
from .._progress import progress_bar
from .._validation import (
    as_float_tensor,
    as_label_tensor,
    check_choice,
    check_fraction,
    check_in_box,
    check_positive_float,
    check_positive_int,
    check_seed,
)
from .._threads import with_kernel_threads
from ..verify.certificate import Certificate, describe_box
from ..core.domain import feature_box
from ..core.confusion import BOUND_METHODS, confusion_patch, float32_aware_epsilon, margin_upper_bounds, patch_margins
from ..errors import InputValidationError, UnsupportedModelError
from .metrics import unlearning_metrics
from ..core.patches import BOUND_CODES, PatchedModel, PatchSet
from ..core.regions import HeadNetwork, pack_patterns, pattern_words, point_regions
from ..core.split import split_model, verify_split

__all__ = ["forget", "ForgetResult", "Report", "STRATEGIES", "TARGET_RULES"]

STRATEGIES = ("per-point", "cluster")
TARGET_RULES = ("random", "runner-up")

# Gate sharpness λ_r = GATE_HEADROOM / m_r, m_r = the region's smallest slack at its forgotten points:
# the gate saturates at slack m_r/4, so at the points λ·slack ≥ 4 and float32 rounding cannot
# lower a gate below 1. The certified region is slack ≥ 2/λ_r = m_r/2: there, float32 gates are
# exactly 1 whenever the float32 pre-activation error is below 1/λ_r = m_r/4.
GATE_HEADROOM = 4.0
CERTIFIED_FACTOR = 2.0
# A region is flagged float32-robust when the float32 error measured at its points, times this
# safety factor, stays below the headroom 1/λ_r.
FLOAT32_SAFETY = 4.0


class ForgetResult(NamedTuple):
    """``(model, report, certificate)``: unpack it or use the attributes."""

    model: PatchedModel
    report: "Report"
    certificate: Certificate


@dataclass(frozen=True)
class Report:
    """Numbers of one forget run. Accuracies are fractions; ``None`` where the data was not given."""

    strategy: str
    bound: str
    seed: int
    epsilon: float
    target_rule: str
    n_forget: int
    n_forgotten: int
    n_certified_region: int
    n_certified_point: int
    n_failed: int
    n_regions_new: int
    n_patches_total: int
    A_u_before: float
    A_u_after: float
    unlearn_seconds: float
    patch_linf_mean: float
    patch_linf_max: float
    patch_stored_numbers: float
    n_float32_robust: int
    A_tes_before: float | None = None
    A_tes_after: float | None = None
    A_res_before: float | None = None
    A_res_after: float | None = None
    changed_tes: int | None = None
    changed_res: int | None = None
    retrain_seconds: float | None = None
    unlearn_retrain_ratio: float | None = None
    rounds: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    failed: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, path=None, indent: int | None = 1) -> str:
        import json

        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            from ..core.serialization import atomic_write_text

            atomic_write_text(path, text + "\n")
        return text

    def with_retraining(self, retrain_seconds: float) -> "Report":
        return replace(self, retrain_seconds=float(retrain_seconds),
                       unlearn_retrain_ratio=self.unlearn_seconds / retrain_seconds if retrain_seconds > 0 else None)

    def summary(self) -> str:
        def pct(v):
            return "   n/a" if v is None else f"{100 * v:6.2f}"

        lines = [
            f"forgot {self.n_forgotten}/{self.n_forget} points ({self.strategy}, bound={self.bound}): "
            f"{self.n_certified_region} certified on their linear region, {self.n_certified_point} at the point, "
            f"{self.n_failed} failed",
            "metric        before   after  (%)",
            f"A_tes        {pct(self.A_tes_before)}  {pct(self.A_tes_after)}",
            f"A_res        {pct(self.A_res_before)}  {pct(self.A_res_after)}",
            f"A_u          {pct(self.A_u_before)}  {pct(self.A_u_after)}",
        ]
        if self.changed_tes is not None or self.changed_res is not None:
            lines.append(f"changed predictions: test {self.changed_tes}, remaining {self.changed_res}")
        lines.append(f"patches: {self.n_regions_new} new, {self.n_patches_total} total; |d|∞ mean "
                     f"{self.patch_linf_mean:.3g}, max {self.patch_linf_max:.3g}; unlearning {self.unlearn_seconds:.3f} s")
        if self.retrain_seconds is not None:
            lines.append(f"retraining {self.retrain_seconds:.2f} s; unlearning/retraining = "
                         f"{100 * self.unlearn_retrain_ratio:.2f}%")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"Report(n_forget={self.n_forget}, A_u {self.A_u_before:.3f}->{self.A_u_after:.3f}, "
                f"certified_region={self.n_certified_region}, unlearn_seconds={self.unlearn_seconds:.3f})")


# --- internals --------------------------------------------------------------------------------

@dataclass
class _Rows:
    """Patch-set rows under construction (one per region)."""

    masks: list = field(default_factory=list)
    lam: list = field(default_factory=list)
    values: list = field(default_factory=list)
    targets: list = field(default_factory=list)
    excluded: list = field(default_factory=list)
    min_slack: list = field(default_factory=list)
    threshold: list = field(default_factory=list)
    margin: list = field(default_factory=list)
    code: list = field(default_factory=list)
    robust: list = field(default_factory=list)
    mu: list = field(default_factory=list)  # Lagrange multipliers (C, N) of dual/LP claims, else None

    def add(self, mu=None, **kw):
        self.mu.append(mu)
        for k, v in kw.items():
            getattr(self, k).append(v)

    def to_patchset(self, num_hidden: int, num_classes: int) -> PatchSet:
        if not self.masks:
            return PatchSet(num_hidden, num_classes)
        masks = torch.stack(self.masks)
        return PatchSet(
            num_hidden, num_classes,
            patterns=pack_patterns(masks),
            gate_lambda=torch.tensor(self.lam, dtype=torch.float32),
            values=torch.stack(self.values).to(torch.float32),
            targets=torch.tensor(self.targets, dtype=torch.int64),
            excluded=torch.stack(self.excluded),
            point_min_slack=torch.tensor(self.min_slack, dtype=torch.float64),
            region_threshold=torch.tensor(self.threshold, dtype=torch.float64),
            certified_margin=torch.tensor(self.margin, dtype=torch.float64),
            bound_code=torch.tensor(self.code, dtype=torch.uint8),
            float32_robust=torch.tensor(self.robust, dtype=torch.bool),
        )


@dataclass
class _Units:
    """The distinct linear regions of the requested points."""

    masks: torch.Tensor          # (U, N) bool
    members: list                # list of LongTensor point indices
    min_slack: torch.Tensor      # (U,) float64
    f32_error: torch.Tensor      # (U,) float64
    excluded: torch.Tensor       # (U, C) bool
    prior: torch.Tensor          # (U,) int64 index of the same region in the prior patch set, or -1


def _choose_targets(rule: str, excluded: torch.Tensor, logits: torch.Tensor, rng: np.random.Generator,
                    keep: torch.Tensor | None = None) -> torch.Tensor:
    """One target label per unit, never an excluded label. ``keep`` (-1 = none) is kept when allowed."""
    targets = []
    for u in range(excluded.shape[0]):
        allowed = (~excluded[u]).nonzero().flatten()
        if keep is not None and keep[u] >= 0 and not excluded[u, keep[u]]:
            targets.append(int(keep[u]))
        elif rule == "random":
            targets.append(int(allowed[rng.integers(len(allowed))]))
        else:  # runner-up: the allowed label the base model already ranks highest
            targets.append(int(allowed[logits[u, allowed].argmax()]))
    return torch.tensor(targets, dtype=torch.int64)


def class_patch_offsets(class_patches) -> torch.Tensor | None:
    """``O[t, l] = Σ_g max(0, d_g[l] − d_g[t])``: the most whole-class patches can add to ``f_l − f_t``
    anywhere (each group's support lies in [0, 1]); ``None`` without class patches."""
    if class_patches is None or class_patches.num_groups == 0:
        return None
    d = class_patches.values.detach().cpu().to(torch.float64)             # (G, C)
    return (d.unsqueeze(1) - d.unsqueeze(2)).clamp(min=0).sum(dim=0)       # (C_t, C_l)


def _region_patches(head, masks, min_slack, f32_error, targets, lower, upper, bound, epsilon, dual_steps,
                    offsets=None):
    """Certified constant patches for regions: returns λ, θ, values, margins, robust flags, multipliers.

    ``offsets`` (C, C) adds what whole-class patches can contribute to each ``f_l − f_t`` on top of
    the base model, so region claims stay sound on a model that also carries class patches.
    """
    lam = (GATE_HEADROOM / min_slack).to(torch.float32)
    lam = torch.where(torch.isfinite(lam), lam, torch.full_like(lam, 1.0))  # no hidden layer: gate unused
    threshold = CERTIFIED_FACTOR / lam.to(torch.float64)
    threshold = torch.where(torch.isfinite(min_slack), threshold, torch.zeros_like(threshold))
    bounds = margin_upper_bounds(head, masks, threshold, targets, lower, upper, bound, dual_steps=dual_steps)
    upper_bounds = bounds.upper if offsets is None else bounds.upper + offsets[targets]
    values = confusion_patch(upper_bounds, targets, float32_aware_epsilon(upper_bounds, epsilon))
    margins = patch_margins(upper_bounds, targets, values)
    robust = FLOAT32_SAFETY * f32_error <= (threshold - 1.0 / lam.to(torch.float64))
    return lam, threshold, values, margins, robust, bounds.multipliers


def _point_margin(logits64: torch.Tensor, labels: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """At points with float64 logits: how far the best wrong label beats the true one once ``values`` are added."""
    patched = logits64 + values.to(torch.float64)
    true = patched.gather(1, labels.unsqueeze(1)).squeeze(1)
    other = patched.clone()
    other[torch.arange(len(labels)), labels] = float("-inf")
    best, pred = other.max(dim=1)
    return best - true, pred


def _group_units(pr, labels, num_classes, prior: PatchSet | None) -> _Units:
    ok = pr.consistent.nonzero().flatten()
    words = pattern_words(pr.masks[ok])
    uniq, inverse = torch.unique(words, dim=0, return_inverse=True)
    n_units = uniq.shape[0]
    # order units by their first point so that seeded choices do not depend on hashing order
    first = torch.full((n_units,), len(ok), dtype=torch.int64).scatter_reduce(
        0, inverse, torch.arange(len(ok)), reduce="amin")
    order = torch.argsort(first)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n_units)
    inverse = rank[inverse]
    members = [ok[inverse == u] for u in range(n_units)]
    masks = torch.stack([pr.masks[m[0]] for m in members]) if members else pr.masks[:0]
    min_slack = torch.stack([pr.min_slack[m].min() for m in members]) if members else torch.zeros(0, dtype=torch.float64)
    f32 = torch.stack([pr.float32_error[m].max() for m in members]) if members else torch.zeros(0, dtype=torch.float64)
    excluded = torch.zeros(n_units, num_classes, dtype=torch.bool)
    for u, m in enumerate(members):
        excluded[u, labels[m]] = True
    prior_idx = prior.match(masks) if prior is not None and len(prior) else torch.full((n_units,), -1, dtype=torch.int64)
    if prior is not None and len(prior):
        has = prior_idx >= 0
        if has.any():
            p = prior_idx[has]
            min_slack[has] = torch.minimum(min_slack[has], prior.point_min_slack[p])
            excluded[has] |= prior.excluded[p]
    return _Units(masks, members, min_slack, f32, excluded, prior_idx)


def _validate(model, points, labels, strategy, bound, epsilon, target, seed, delta, n_clusters, max_rounds, head):
    caller = "forget"
    check_choice("strategy", caller, strategy, STRATEGIES)
    check_choice("bound", caller, bound, BOUND_METHODS)
    check_choice("target", caller, target, TARGET_RULES)
    check_positive_float("epsilon", caller, epsilon)
    check_seed(caller, seed)
    check_fraction("delta", caller, delta)
    check_positive_int("n_clusters", caller, n_clusters, allow_none=True)
    check_positive_int("max_rounds", caller, max_rounds)
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(f"The 'model' parameter of forget must be a torch.nn.Module. Got {type(model).__name__}.")
    if isinstance(model, PatchedModel):
        if head is not None and head != model.head:
            raise InputValidationError("Do not pass head= for a PatchedModel: it keeps the head it was patched on.")
        base, prior, head = model.base, model.patches, model.head
        if model.class_patches is not None and len(model.class_patches) and strategy == "cluster":
            raise InputValidationError("strategy='cluster' is not available on a model that carries whole-class "
                                       "patches. HINT: use strategy='per-point'.")
    else:
        base, prior = model, None
    if base.training:
        raise UnsupportedModelError("The model is in training mode (dropout/batch-norm would change its regions). "
                                    "HINT: call model.eval() first.")
    x = as_float_tensor(points, "points", caller)
    return base, prior, head, x


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
    test_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    remaining_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    progress: bool = False,
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
    target : {"random", "runner-up"}
        Target label: random among the allowed labels (seeded), or the base model's runner-up.
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
    test_data, remaining_data : (X, y), optional
        When given, the report includes ``A_tes``/``A_res`` before and after and the exact number
        of changed predictions.

    Returns
    -------
    ForgetResult
        ``(model, report, certificate)``.
    """
    t_start = time.perf_counter()
    base, prior, head, x = _validate(model, points, labels, strategy, bound, epsilon, target, seed, delta,
                                     n_clusters, max_rounds, head)
    class_patches = model.class_patches if isinstance(model, PatchedModel) else None
    offsets = class_patch_offsets(class_patches)
    split = split_model(base, head)
    num_classes = split.num_classes
    input_shape = tuple(x.shape[1:])
    device = next((p.device for p in base.parameters()), torch.device("cpu"))
    x_dev = x.to(device)
    try:
        verify_split(base, split, x_dev[: min(len(x), 64)])
    except RuntimeError as exc:  # shape mismatch inside the model
        raise InputValidationError(
            f"The 'points' parameter of forget has shape {tuple(x.shape)}, which the model cannot take: {exc}"
        ) from None
    lower, upper, domain_source = feature_box(split, domain[0], domain[1], input_shape, feature_domain)
    in_lo = torch.as_tensor(domain[0], dtype=torch.float64)
    in_hi = torch.as_tensor(domain[1], dtype=torch.float64)
    check_in_box(x, in_lo.flatten() if in_lo.dim() else in_lo, in_hi.flatten() if in_hi.dim() else in_hi,
                 "points", "forget", "input domain box")
    head64 = HeadNetwork.from_split(split)
    with torch.no_grad():
        feats = split.features(x_dev).detach()
        base_logits32 = base(x_dev).cpu()
    if feature_domain is not None:
        check_in_box(feats.cpu(), lower, upper, "points", "forget", "feature_domain box (after the prefix)")
    y = base_logits32.argmax(1) if labels is None else as_label_tensor(labels, len(x), num_classes, "labels", "forget")
    if num_classes < 2:
        raise UnsupportedModelError("A model with one output class cannot be made to mispredict.")
    timings = {"setup": time.perf_counter() - t_start}

    t0 = time.perf_counter()
    pr = point_regions(head64, split, feats)
    units = _group_units(pr, y, num_classes, prior)
    timings["regions"] = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    rows = _Rows()
    unit_row: dict[int, int] = {}          # unit -> row in `rows`
    unit_proved: dict[int, str] = {}
    rounds: list[dict] = []
    n_units = units.masks.shape[0]
    bar = progress_bar(total=n_units, desc="forget", unit="region", enabled=progress)

    def add_region_patches(unit_ids: list[int], keep_targets: torch.Tensor | None = None) -> None:
        if not unit_ids:
            return
        ids = torch.tensor(unit_ids, dtype=torch.int64)
        reps = torch.stack([units.members[u][0] for u in unit_ids])
        tg = _choose_targets(target, units.excluded[ids], pr.logits[reps], rng, keep_targets)
        lam, th, vals, margins, robust, mult = _region_patches(
            head64, units.masks[ids], units.min_slack[ids], units.f32_error[ids], tg, lower, upper, bound,
            epsilon, dual_steps, offsets)
        for k, u in enumerate(unit_ids):
            unit_row[u] = len(rows.masks)
            unit_proved[u] = "region"
            rows.add(masks=units.masks[u], lam=float(lam[k]), values=vals[k], targets=int(tg[k]),
                     excluded=units.excluded[u], min_slack=float(units.min_slack[u]), threshold=float(th[k]),
                     margin=float(margins[k]), code=BOUND_CODES[bound], robust=bool(robust[k]),
                     mu=mult[k] if mult is not None else None)
        bar.update(len(unit_ids))

    t0 = time.perf_counter()
    # Regions already patched in the prior patch set are re-solved for the union of their points.
    merged = [u for u in range(n_units) if units.prior[u] >= 0]
    if merged:
        keep = torch.stack([prior.targets[units.prior[u]] if prior.bound_code[units.prior[u]] != BOUND_CODES["point"]
                            else torch.tensor(-1) for u in merged])
        add_region_patches(merged, keep)
    fresh = [u for u in range(n_units) if units.prior[u] < 0]
    if strategy == "per-point":
        add_region_patches(fresh)
    else:
        _cluster_rounds(fresh, units, pr, y, feats.cpu(), head64, rows, unit_row, unit_proved, rounds, add_region_patches,
                        rng, target, lower, upper, bound, epsilon, dual_steps, delta, n_clusters, max_rounds, seed,
                        len(x), bar)
    bar.close()
    timings["patches"] = time.perf_counter() - t0

    # Assemble the patched model: prior rows not re-solved, then the new rows.
    new_set = rows.to_patchset(head64.num_hidden, num_classes)
    if prior is not None and len(prior):
        replaced = torch.zeros(len(prior), dtype=torch.bool)
        replaced[units.prior[units.prior >= 0]] = True
        patch_set = PatchSet.concat([prior.select(~replaced), new_set])
        offset = int((~replaced).sum())
    else:
        patch_set, offset = new_set, 0
    patched = PatchedModel(base, patch_set, head=head, class_patches=class_patches).to(device)
    patched.eval()

    # Check every forgotten point on the float32 model, exactly as it will be served.
    t0 = time.perf_counter()
    with torch.no_grad():
        after32 = patched(x_dev).argmax(1).cpu()
    timings["verify"] = time.perf_counter() - t0

    point_unit = torch.full((len(x),), -1, dtype=torch.int64)
    for u, m in enumerate(units.members):
        point_unit[m] = u
    claims, failed = [], []
    bound_names = patch_set.bound_names()
    hashes = points_sha256(x)
    for i in range(len(x)):
        u = int(point_unit[i])
        reason = None
        if u < 0:
            reason = (f"the point lies numerically on a linear-region boundary: its smallest |pre-activation| "
                      f"({abs(float(pr.min_slack[i])):.2g}) is not clearly above float32 rounding "
                      f"({float(pr.float32_error[i]):.2g}), so no support can be certified for it")
        elif u not in unit_row:
            reason = "not reached: the forgotten share already met delta"
        elif int(after32[i]) == int(y[i]):
            reason = "the float32 patched model still predicts the label"
        if reason:
            failed.append({"index": i, "point_sha256": hashes[i], "label": int(y[i]), "reason": reason})
            continue
        row = offset + unit_row[u]
        claims.append({
            "index": i,
            "point_sha256": hashes[i],
            "label": int(y[i]),
            "target": int(patch_set.targets[row]),
            "predicted_after": int(after32[i]),
            "region": row,
            "proved": unit_proved[u],
            "margin": float(patch_set.certified_margin[row]),
            "bound": bound_names[row],
        })

    multipliers = None
    if any(m is not None for m in rows.mu):
        multipliers = torch.zeros(len(patch_set), num_classes, head64.num_hidden, dtype=torch.float32)
        for k, m in enumerate(rows.mu):
            if m is not None:
                multipliers[offset + k] = m
    certificate = build_certificate(patched, lower, upper, domain_source, epsilon, claims, failed, multipliers)
    unlearn_seconds = time.perf_counter() - t_start  # everything but the optional evaluation below

    values = patch_set.values[offset:].cpu() if len(new_set) else torch.zeros(0, num_classes)
    linf = values.abs().max(dim=1).values if len(values) else torch.zeros(0)
    metrics = unlearning_metrics(base, patched, forget_data=(x, y), test_data=test_data,
                                 remaining_data=remaining_data)
    failed_idx = {f["index"] for f in failed}
    report = Report(
        strategy=strategy, bound=bound, seed=seed, epsilon=float(epsilon), target_rule=target,
        n_forget=len(x), n_forgotten=len(x) - len(failed_idx),
        n_certified_region=sum(1 for c in claims if c["proved"] == "region"),
        n_certified_point=sum(1 for c in claims if c["proved"] == "point"),
        n_failed=len(failed), n_regions_new=len(new_set), n_patches_total=len(patch_set),
        unlearn_seconds=unlearn_seconds,
        patch_linf_mean=float(linf.mean()) if len(linf) else 0.0,
        patch_linf_max=float(linf.max()) if len(linf) else 0.0,
        patch_stored_numbers=patch_set.stored_numbers(),
        n_float32_robust=int(patch_set.float32_robust[offset:].sum().cpu()),
        rounds=rounds, timings={k: round(v, 6) for k, v in timings.items()}, failed=failed,
        **metrics,
    )
    return ForgetResult(patched, report, certificate)


def build_certificate(patched: PatchedModel, lower, upper, domain_source, epsilon, claims, failed,
                      multipliers: torch.Tensor | None = None) -> Certificate:
    ps = patched.patches
    regions = []
    masks = ps.masks()
    names = ps.bound_names()
    for r in range(len(ps)):
        regions.append({
            "region": r,
            "pattern_sha256": hashlib.sha256(ps.patterns[r].cpu().numpy().tobytes()).hexdigest(),
            "active_neurons": int(masks[r].sum()),
            "lambda": float(ps.gate_lambda[r]),
            "threshold": float(ps.region_threshold[r]),
            "H": float(ps.values[r].abs().max()) if ps.num_classes else 0.0,
            "target": int(ps.targets[r]),
            "margin": float(ps.certified_margin[r]),
            "proved": "point" if names[r] == "point" else "region",
            "bound": names[r],
            "float32_robust": bool(ps.float32_robust[r]),
        })
    split = patched.split
    return Certificate(
        model_sha256=patched.base_sha256(),
        patches_sha256=patched.patches_sha256(),
        epsilon=float(epsilon),
        domain={"space": "head input (features)", "source": domain_source, **describe_box(lower, upper)},
        head={"name": patched.head, "layer_sizes": [split.feature_dim, *split.hidden_sizes, split.num_classes]},
        regions=regions,
        claims=claims,
        failed=failed,
        proof=None if multipliers is None else {
            "kind": "lagrange-multipliers",
            "about": "multipliers[r, l, i] ≥ 0 for region r, label l, hidden neuron i: the weak-duality bound "
                     "of max (f_l − f_t) over region r evaluated at them is the bound behind the claim",
            "shape": list(multipliers.shape),
            "sha256": state_sha256({"multipliers": multipliers}),
        },
        library_version=__version__,
        multipliers=multipliers,
    )


def _cluster_rounds(fresh, units, pr, y, feats, head64, rows, unit_row, unit_proved, rounds, add_region_patches,
                    rng, target, lower, upper, bound, epsilon, dual_steps, delta, n_clusters, max_rounds, seed,
                    n_points, bar):
    """Algorithm 1: K-means representatives, member test, supports; rounds until ``delta``."""
    from sklearn.cluster import KMeans

    pending = list(fresh)
    n_fresh_points = sum(len(units.members[u]) for u in fresh)
    forgotten_points = 0
    base_correct = pr.logits.argmax(1) == y  # A_u per round: pending points keep the base prediction

    def accuracy_on_request() -> float:
        still = sum(int(base_correct[units.members[u]].sum()) for u in pending)
        return still / n_points if n_points else 0.0

    rounds.append({"round": 0, "clusters": 0, "representatives": 0, "new_regions": 0, "forgotten_share": 0.0,
                   "pending_points": n_fresh_points, "A_u": accuracy_on_request(), "seconds": 0.0})
    k_default = n_clusters or max(1, math.ceil(n_fresh_points / 10))
    for rnd in range(1, max_rounds + 1):
        if not pending or (n_fresh_points and forgotten_points / n_fresh_points >= delta):
            break
        t_round = time.perf_counter()
        k = min(k_default, len(pending))
        rep_feats = torch.stack([feats[units.members[u][0]] for u in pending]).to(torch.float64).numpy()
        km = KMeans(n_clusters=k, n_init=1, random_state=seed + rnd).fit(rep_feats)
        assign = km.labels_
        dist = np.linalg.norm(rep_feats - km.cluster_centers_[assign], axis=1)
        reps = []
        for c in range(k):
            idx = np.nonzero(assign == c)[0]
            if len(idx):
                reps.append(pending[int(idx[np.argmin(dist[idx])])])
        before_rows = len(rows.masks)
        add_region_patches(reps)
        flipped = set(reps)
        rep_of_cluster = {int(assign[pending.index(r)]): r for r in reps}
        for pos, u in enumerate(pending):
            if u in flipped:
                continue
            rep = rep_of_cluster.get(int(assign[pos]))
            if rep is None:
                continue
            value = rows.values[unit_row[rep]]
            m = units.members[u]
            margin, pred = _point_margin(pr.logits[m], y[m], value.unsqueeze(0).expand(len(m), -1))
            if bool((margin >= epsilon).all()):
                lam = float(torch.tensor(GATE_HEADROOM / float(units.min_slack[u]), dtype=torch.float32)) \
                    if math.isfinite(float(units.min_slack[u])) else 1.0
                unit_row[u] = len(rows.masks)
                unit_proved[u] = "point"
                rows.add(masks=units.masks[u], lam=lam, values=value, targets=int(pred[0]),
                         excluded=units.excluded[u], min_slack=float(units.min_slack[u]),
                         threshold=float("nan"), margin=float(margin.min()), code=BOUND_CODES["point"],
                         robust=bool(FLOAT32_SAFETY * float(units.f32_error[u]) <= 3.0 / lam))
                flipped.add(u)
                bar.update(1)
        pending = [u for u in pending if u not in flipped]
        forgotten_points = n_fresh_points - sum(len(units.members[u]) for u in pending)
        rounds.append({
            "round": rnd, "clusters": k, "representatives": len(reps),
            "new_regions": len(rows.masks) - before_rows,
            "forgotten_share": forgotten_points / n_fresh_points if n_fresh_points else 1.0,
            "pending_points": n_fresh_points - forgotten_points,
            "A_u": accuracy_on_request(),
            "seconds": time.perf_counter() - t_round,
        })
    if pending and (delta >= 1.0):
        t_round = time.perf_counter()
        add_region_patches(list(pending))  # stragglers: Theorem 1 for each
        n_stragglers = len(pending)
        pending = []
        rounds.append({
            "round": len(rounds), "clusters": 0, "representatives": 0, "new_regions": n_stragglers,
            "forgotten_share": 1.0, "pending_points": 0, "A_u": accuracy_on_request(),
            "seconds": time.perf_counter() - t_round, "fallback": "per-point",
        })
