"""``forget(..., radius=r)``: the neighbourhood strategy of :func:`prune_unlearn.forget` (issue 11).

:class:`NeighbourhoodStrategy` turns a :class:`NeighbourhoodProblem` (the points, their features, the domain)
into :class:`NeighbourhoodRows`: one neighbourhood row per distinct forgotten point (see
:mod:`prune_unlearn.unlearn.neighbourhood`), plus prior rows whose target had to change, re-solved. The rows
add themselves to a model (``rows.add_to(model)``); every point is then checked on the float32 model as
served, and the certificate (:func:`~prune_unlearn.verify.certificate.certificate_for`) lists, per row, exactly
which set its claim covers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .._hashing import points_sha256
from .._validation import as_float_tensor, as_label_tensor, param_error
from ..core.domain import is_reshape_only
from ..core.neighbourhood import NeighbourhoodSet
from ..core.patches import PatchedModel
from ..core.regions import HeadNetwork, point_regions
from ..core.split import ModelSplit, split_model
from ..errors import InputValidationError, UnsupportedModelError
from ..verify.certificate import certificate_for, describe_box
from .metrics import predict, unlearning_metrics
from .neighbourhood import RADIUS_SEARCH, assign_targets, boxes_for, pack_or_none, row_tensors, search_radii, solve_rows
from .problem import DomainBox, check_fits, domain_box, model_device
from .report import ForgetResult, Report

__all__ = ["NeighbourhoodProblem", "NeighbourhoodRows", "NeighbourhoodStrategy", "run_neighbourhood_forget",
           "neighbourhood_entries"]

# The certificate's description of a feature-space ball (forget(..., ball_space="features")).
FEATURE_BALL_SPACE = ("features: B∞(φ(x), r) ∩ domain, φ(x) the point's head input (the output of the layers before "
                      "the head); every input whose features fall in it is covered")
# Region ∩ ball rows use the region gates of region mode: μ = GATE_HEADROOM / (smallest slack at the point),
# certified region slack ≥ 2/μ.
_GATE_HEADROOM = 4.0


@dataclass
class NeighbourhoodProblem:
    """What the neighbourhood strategy reads: the model to add rows to, the points (as given and as head
    inputs), their labels, the domain box in the head's input space and in the input space."""

    model: PatchedModel
    split: ModelSplit
    head: HeadNetwork
    x: torch.Tensor              # (n, *input_shape) on the CPU
    features: torch.Tensor       # (n, d) float64 head inputs, on the CPU
    labels: torch.Tensor         # (n,)
    box: DomainBox
    in_lower: torch.Tensor       # input domain, shaped like one input
    in_upper: torch.Tensor
    feature_space: bool          # the head sits behind a feature extractor (or a feature_domain was given)
    ball_space: str = "input"    # where the balls live: around the inputs, or around their features

    def units(self):
        """Distinct points (identical features share one row): representatives, unit of each point, excluded labels."""
        uniq, inverse = torch.unique(self.features, dim=0, return_inverse=True)
        n_units = uniq.shape[0]
        first = torch.full((n_units,), len(self.features), dtype=torch.int64).scatter_reduce(
            0, inverse, torch.arange(len(self.features)), reduce="amin")
        order = torch.argsort(first)  # units in order of first appearance: seeded choices do not depend on sorting
        rank = torch.empty_like(order)
        rank[order] = torch.arange(n_units)
        excluded = torch.zeros(n_units, self.head.num_classes, dtype=torch.bool)
        excluded[rank[inverse], self.labels] = True
        return first[order], rank[inverse], excluded


@dataclass
class NeighbourhoodRows:
    """New neighbourhood rows, the prior rows (some re-solved for a new target) and what each unit got.

    ``unit_of_point`` (n,) the unit of each requested point; ``row_of_unit`` (U,) its row in ``rows`` or -1;
    ``reasons`` why a unit got no row; ``float32_proved`` (U,) whether the float32 model is proven on its
    ball; ``radius`` (U,) the radius of each unit's ball; ``crown_radius`` (U,) the radius search's CROWN radii
    (None without the search)."""

    rows: NeighbourhoodSet
    prior: NeighbourhoodSet | None
    unit_of_point: torch.Tensor
    row_of_unit: torch.Tensor
    reasons: dict
    float32_proved: torch.Tensor
    radius: torch.Tensor
    crown_radius: torch.Tensor | None = None
    n_resolved_prior: int = 0
    timings: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)

    def add_to(self, model: PatchedModel) -> PatchedModel:
        """A new model whose neighbourhood rows are the (re-solved) prior rows then these; other rows kept. No
        rows at all (every point failed or got a region row) on a model without neighbourhoods adds none: an
        empty set would stay in the model's state after its other rows are undone."""
        if len(self.rows) == 0 and model.neighbourhoods is None:
            return model.with_patches()
        rows = self.rows if self.prior is None or len(self.prior) == 0 else NeighbourhoodSet.concat([self.prior,
                                                                                                    self.rows])
        return model.with_patches(neighbourhoods=rows)

    @property
    def offset(self) -> int:
        """Index of the first new row in the model's neighbourhood rows."""
        return 0 if self.prior is None else len(self.prior)


@dataclass(frozen=True)
class NeighbourhoodStrategy:
    """One certified ball per distinct point: radius (fixed or searched), support box, gate, target, patch."""

    radius: float | str
    min_radius: float
    max_radius: float
    outer: float
    within_region: bool
    intermediate: str
    epsilon: float
    target: str
    seed: int
    region_bound: str
    dual_steps: int
    ball_space: str = "input"

    @classmethod
    def from_options(cls, o) -> "NeighbourhoodStrategy":
        return cls(radius=o.radius, min_radius=o.min_radius, max_radius=o.max_radius, outer=o.outer,
                   within_region=o.within_region, intermediate=o.intermediate, epsilon=o.epsilon, target=o.target,
                   seed=o.seed, region_bound=o.bound, dual_steps=o.dual_steps, ball_space=o.ball_space)

    @property
    def code(self) -> str:
        if self.within_region:
            return self.region_bound
        return "crown" if self.intermediate == "crown" else "crown-ibp"

    def rows(self, p: NeighbourhoodProblem) -> NeighbourhoodRows:
        timings = {}
        t0 = time.perf_counter()
        model, head = p.model, p.head
        reps, inverse, excluded = p.units()
        banned = torch.zeros(head.num_classes, dtype=torch.bool)
        if model.has_class_patches:
            banned[int(model.class_patches.label[0])] = True
        radius, crown = self._radii(p, reps)
        timings["radius_search"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        lo32, hi32 = boxes_for(p.split, p.features[reps], p.x[reps], radius, p.box.lower, p.box.upper, p.in_lower,
                               p.in_upper, p.feature_space, self.ball_space)
        half = ((hi32.to(torch.float64) - lo32.to(torch.float64)) / 2).amax(dim=1).clamp(min=1e-12)
        lam = (1.0 / (self.outer * half)).to(torch.float32)
        logits64 = head.forward(p.features[reps])[1]
        targets, reasons, resolve = assign_targets(
            head, lo32, hi32, lam, excluded, logits64, self.target, np.random.default_rng(self.seed),
            prior=model.neighbourhoods, point_rows=model.patches, banned=banned)
        ok = (targets >= 0).nonzero().flatten()
        timings["targets"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        region = patterns = region_lambda = None
        if self.within_region:
            pr = point_regions(head, p.split, p.features[reps[ok]].to(torch.float32))
            bad = ~pr.consistent
            for k in bad.nonzero().flatten().tolist():
                reasons[int(ok[k])] = "the point lies numerically on a linear-region boundary (no region gate fits)"
            ok = ok[~bad]
            region_lambda = (_GATE_HEADROOM / pr.min_slack[~bad]).to(torch.float32)
            region = (pr.masks[~bad], 2.0 / region_lambda.to(torch.float64))
            patterns = pack_or_none(pr.masks[~bad])
        solved = self._solve(p, lo32[ok], hi32[ok], targets[ok], region)
        robust = solved["float32_margin"] >= self.epsilon
        if region is not None:  # float32 region gates are exactly 1 on the certified region when the error < 1/μ
            robust &= solved["hidden_error"].max(dim=1).values < 1.0 / region_lambda.to(torch.float64)
        new_rows = NeighbourhoodSet(head.input_dim, head.num_hidden, head.num_classes, **row_tensors(
            lo32[ok], hi32[ok], lam[ok], solved["values"], targets[ok], excluded[ok], radius[ok], solved["margin"],
            self.code, patterns, region_lambda, self.ball_space))
        prior = self._resolve_prior(p, resolve)
        timings["patches"] = time.perf_counter() - t0
        row_of_unit = torch.full((len(reps),), -1, dtype=torch.int64)
        row_of_unit[ok] = torch.arange(len(ok))
        proved = torch.zeros(len(reps), dtype=torch.bool)
        proved[ok] = robust
        return NeighbourhoodRows(new_rows, prior, inverse, row_of_unit, reasons, proved, radius, crown,
                                 n_resolved_prior=len(resolve), timings=timings)

    def _radii(self, p: NeighbourhoodProblem, reps: torch.Tensor):
        if self.radius == RADIUS_SEARCH:
            return search_radii(p.head, p.features[reps], p.labels[reps], p.box.lower, p.box.upper,
                                min_radius=self.min_radius, max_radius=self.max_radius)
        return torch.full((len(reps),), float(self.radius), dtype=torch.float64), None

    def _solve(self, p: NeighbourhoodProblem, lo32, hi32, targets, region):
        return solve_rows(p.head, lo32, hi32, p.box.lower, p.box.upper, targets, self.epsilon,
                          intermediate=self.intermediate, class_patches=p.model.class_patches, region=region,
                          region_bound=self.region_bound, dual_steps=self.dual_steps)

    def _resolve_prior(self, p: NeighbourhoodProblem, resolve: dict) -> NeighbourhoodSet | None:
        """The model's rows, those whose overlap component changed target re-solved on their own boxes."""
        prior = p.model.neighbourhoods
        if prior is None or len(prior) == 0:
            return None
        fields = {k: v.detach().cpu().clone() for k, v in prior.tensors().items()}
        all_idx = torch.tensor(sorted(resolve), dtype=torch.int64)
        has_region = fields["region_lambda"][all_idx] > 0 if len(all_idx) else torch.zeros(0, dtype=torch.bool)
        for idx in (all_idx[~has_region], all_idx[has_region]):
            if len(idx) == 0:
                continue
            tg = torch.tensor([resolve[int(j)] for j in idx], dtype=torch.int64)
            region = None
            if bool(fields["region_lambda"][idx[0]] > 0):  # region ∩ ball rows: bound over region ∩ box again
                region = (prior.select(idx).masks(), 2.0 / fields["region_lambda"][idx].to(torch.float64))
            solved = self._solve(p, fields["lower"][idx], fields["upper"][idx], tg, region)
            fields["values"][idx] = solved["values"]
            fields["targets"][idx] = tg
            fields["certified_margin"][idx] = solved["margin"]
        return NeighbourhoodSet(prior.input_dim, prior.num_hidden, prior.num_classes, **fields)


def neighbourhood_problem(model, points, labels, head, options, caller: str = "forget") -> NeighbourhoodProblem:
    """Validate and set up: the model split, the points' features and labels, the domain boxes."""
    from .forget import validate_model  # forget imports this module late: no cycle at import time

    model, head = validate_model(model, head, "per-point")
    x = as_float_tensor(points, "points", caller)
    patched = PatchedModel.wrap(model, head=head)
    split = split_model(patched.base, head)
    x_dev = x.to(model_device(patched.base))
    check_fits(patched.base, split, x_dev, "points", caller)
    box = domain_box(split, options.domain, options.feature_domain, x, "points", caller)
    with torch.no_grad():
        feats = split.features(x_dev).detach().cpu().to(torch.float64)
        base_pred = predict(patched.base, x_dev, batch_size=max(1, len(x_dev))).cpu()
    if split.num_classes < 2:
        raise UnsupportedModelError("A model with one output class cannot be made to mispredict.")
    y = base_pred if labels is None else as_label_tensor(labels, len(x), split.num_classes, "labels", caller)
    if options.ball_space == "features":
        _check_feature_radius(options.radius, box, caller)
    shape = tuple(x.shape[1:])
    in_lo = torch.as_tensor(options.domain[0], dtype=torch.float64)
    in_hi = torch.as_tensor(options.domain[1], dtype=torch.float64)
    return NeighbourhoodProblem(
        model=patched, split=split, head=HeadNetwork.from_split(split), x=x.cpu(), features=feats, labels=y, box=box,
        in_lower=in_lo.expand(shape) if in_lo.dim() == 0 else in_lo.reshape(shape),
        in_upper=in_hi.expand(shape) if in_hi.dim() == 0 else in_hi.reshape(shape),
        feature_space=not is_reshape_only(split.prefix) or options.feature_domain is not None,
        ball_space=options.ball_space)


def _check_feature_radius(radius, box: DomainBox, caller: str) -> None:
    """A feature-space radius must fit the head's (bounded) domain box, as an input radius fits the input domain."""
    width = (box.upper.to(torch.float64) - box.lower.to(torch.float64)).flatten()
    if not bool(torch.isfinite(width).all()):
        raise InputValidationError(
            f"ball_space='features' needs a bounded box of the head's inputs, but {box.source} is unbounded. "
            "HINT: pass feature_domain=(lower, upper), e.g. the training features' range.")
    if float(radius) > float(width.max()):
        raise param_error("radius", caller, f"at most the feature box's widest side ({float(width.max()):.6g})",
                          radius, "with ball_space='features' the radius is in feature units.")


def run_neighbourhood_forget(model, points, *, labels=None, head=None, options, test_data=None, remaining_data=None,
                             t_start: float | None = None) -> ForgetResult:
    """:func:`~prune_unlearn.forget` with ``options.radius`` set: the model, a report and a certificate."""
    t_start = time.perf_counter() if t_start is None else t_start
    p = neighbourhood_problem(model, points, labels, head, options)
    timings = {"setup": time.perf_counter() - t_start}
    rows = NeighbourhoodStrategy.from_options(options).rows(p)
    timings.update(rows.timings)
    patched = rows.add_to(p.model).to(model_device(p.model.base)).eval()
    t0 = time.perf_counter()
    after32 = predict(patched, p.x.to(model_device(p.model.base)), batch_size=4096).cpu()
    timings["verify"] = time.perf_counter() - t0
    claims, failed = _claims(p, rows, patched, after32)
    entries = neighbourhood_entries(patched, options.domain, p.feature_space, rows=rows, claims=claims,
                                    feature_box=(p.box.lower, p.box.upper))
    certificate = certificate_for(patched, lower=p.box.lower, upper=p.box.upper, domain_source=p.box.source,
                                  epsilon=options.epsilon, claims=claims, failed=failed, neighbourhoods=entries)
    unlearn_seconds = time.perf_counter() - t_start
    metrics = unlearning_metrics(patched.base, patched, forget_data=(p.x, p.labels), test_data=test_data,
                                 remaining_data=remaining_data)
    report = _report(options, p, rows, patched, claims, failed, unlearn_seconds, timings, metrics)
    return ForgetResult(patched, report, certificate)


def _claims(p: NeighbourhoodProblem, rows: NeighbourhoodRows, patched: PatchedModel, after32) -> tuple[list, list]:
    """One claim per forgotten point (its row, the ball it covers), one ``failed`` entry for every other point."""
    nb = patched.neighbourhoods
    names = nb.bound_names()
    claims, failed = [], []
    for i, digest in enumerate(points_sha256(p.x)):
        u = int(rows.unit_of_point[i])
        label = int(p.labels[i])
        reason = rows.reasons.get(u)
        if reason is None and int(after32[i]) == label:
            reason = "the float32 patched model still predicts the label"
        if reason is not None:
            failed.append({"index": i, "point_sha256": digest, "label": label, "reason": reason})
            continue
        row = rows.offset + int(rows.row_of_unit[u])
        claims.append({"index": i, "point_sha256": digest, "label": label, "target": int(nb.targets[row]),
                       "predicted_after": int(after32[i]), "region": -1, "neighbourhood": row,
                       "proved": "neighbourhood", "radius": float(nb.radius[row]),
                       "margin": float(nb.certified_margin[row]), "bound": names[row],
                       "float32_proved": bool(rows.float32_proved[u])})
    return claims, failed


def neighbourhood_entries(patched: PatchedModel, domain, feature_space: bool, *, rows: NeighbourhoodRows | None = None,
                          claims: list = (), feature_box=None) -> list[dict]:
    """The certificate's ``neighbourhoods`` entries: per row the exact set its claim covers. ``rows``/``claims``
    of the run that added rows say which are proven for the float32 model and which point each is centred on
    (None for rows of earlier runs). ``feature_box``: the head's domain box, the domain of feature-space balls."""
    if not patched.has_neighbourhoods:
        return []
    space = ("input: B∞(x, r) ∩ domain, x the point as the model takes it (flattened)" if not feature_space
             else "input: B∞(x, r) ∩ input domain; support box = interval image of that ball in the head's input "
                  "space (every input whose features fall in the box is covered too)")
    lo = torch.as_tensor(domain[0], dtype=torch.float64).flatten()
    hi = torch.as_tensor(domain[1], dtype=torch.float64).flatten()
    entries = patched.neighbourhoods.describe(
        domain=describe_box(lo, hi), space=space, feature_space=FEATURE_BALL_SPACE,
        feature_domain=describe_box(*feature_box) if feature_box is not None else None)
    proved, centre = {}, {c["neighbourhood"]: c["point_sha256"] for c in claims}
    if rows is not None:
        for u in range(len(rows.row_of_unit)):
            if rows.row_of_unit[u] >= 0:
                proved[rows.offset + int(rows.row_of_unit[u])] = bool(rows.float32_proved[u])
    for e in entries:
        e["float32_proved"] = proved.get(e["row"])
        e["centre_sha256"] = centre.get(e["row"])
    return entries


def _report(options, p: NeighbourhoodProblem, rows: NeighbourhoodRows, patched: PatchedModel, claims, failed,
            unlearn_seconds: float, timings: dict, metrics: dict) -> Report:
    linf = rows.rows.values.abs().max(dim=1).values if len(rows) else torch.zeros(0)
    r_ok = rows.rows.radius if len(rows) else torch.zeros(0, dtype=torch.float64)
    have = rows.row_of_unit >= 0
    crown = rows.crown_radius[have] if rows.crown_radius is not None and bool(have.any()) else None
    n = len(p.x)
    return Report(
        strategy="neighbourhood", bound=NeighbourhoodStrategy.from_options(options).code, seed=options.seed,
        epsilon=float(options.epsilon), target_rule=options.target, n_forget=n,
        n_forgotten=n - len({f["index"] for f in failed}), n_certified_region=0, n_certified_point=0,
        n_failed=len(failed), n_regions_new=len(rows), n_patches_total=len(patched.patches) + len(patched.neighbourhoods),
        unlearn_seconds=unlearn_seconds, patch_linf_mean=float(linf.mean()) if len(linf) else 0.0,
        patch_linf_max=float(linf.max()) if len(linf) else 0.0, patch_stored_numbers=rows.rows.stored_numbers(),
        n_float32_robust=int(rows.float32_proved.sum()), timings={k: round(v, 6) for k, v in timings.items()},
        failed=failed, n_certified_neighbourhood=len(claims),
        radius=options.radius if isinstance(options.radius, str) else float(options.radius),
        radius_min=float(r_ok.min()) if len(r_ok) else None,
        radius_median=float(r_ok.median()) if len(r_ok) else None,
        radius_max=float(r_ok.max()) if len(r_ok) else None,
        crown_radius_median=float(crown.median()) if crown is not None else None,
        outer=float(options.outer), within_region=bool(options.within_region), ball_space=options.ball_space,
        n_regions_resolved=rows.n_resolved_prior, **metrics)
