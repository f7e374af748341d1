"""Whole-class unlearning (the paper's Algorithm 2, Eq. 11) with CROWN-relaxed supports.

Round k: the pending member nearest to the pending members' centroid (in the head's input space) is
the representative; its linear region gets a confusion patch ``d_k`` (target: random other label,
seeded). Every pending member that ``d_k`` flips at the point is to be covered by a support of
group k. Supports are built greedily, in order of distance to the centroid: for a batch of still
uncovered members, CROWN finds (by bisection) the largest L∞ radius on which the base model still
provably predicts the class; the ball is widened by ``radius_scale``; neurons CROWN proves
sign-stable on it keep their constraint, the others are dropped. The relaxed support covers the
member itself and, because it constrains fewer neurons, also nearby members and unseen points of
the class — that is the point of the relaxation. Members a relaxed support already covers need no
support of their own, which keeps the number of CROWN calls well below the class size;
``max_relaxed`` caps them, and members left uncovered get the exact support of their own linear
region. Rounds repeat on the members still predicted as the class, until ``delta``; with
``delta = 1`` the last stragglers get per-point (Theorem 1) patches, so every training member is
forgotten.

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
from .._validation import as_float_tensor, check_choice, check_fraction, check_in_box, check_positive_float
from .._validation import check_positive_int, check_seed
from ..core.bounds import certified_radius, stable_neurons
from ..verify.certificate import Certificate, describe_box
from ..core.confusion import BOUND_METHODS
from ..core.domain import feature_box
from ..errors import InputValidationError, UnsupportedModelError
from .metrics import accuracy, predict
from .forget import GATE_HEADROOM, ForgetResult, Report, _region_patches, build_certificate, forget
from ..core.patches import ClassPatchSet, PatchedModel, PatchSet, stack_preacts, label_lead
from ..core.regions import HeadNetwork, pack_patterns, point_regions
from ..core.split import split_model, verify_split

DECISION_MARGIN = 1e-3
RADIUS_RULES = ("per-member", "calibrated")
INTERMEDIATE_BOUNDS = ("crown", "ibp")  # hidden-layer bounds of the CROWN radius search: CROWN, CROWN-IBP

__all__ = ["forget_class", "class_metrics"]


def class_metrics(base: nn.Module, patched: nn.Module, label: int, *, train=None, test=None) -> dict:
    """The paper's Table V metrics: ``A_u`` (class, train), ``A_tes_u`` (class, test), ``A_res``
    (other classes, train), ``A_tes_r`` (other classes, test), before/after, and changed predictions
    on other classes."""
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
    train_data, test_data : (X, y), optional — for the report's Table V metrics.
    """
    t_start = time.perf_counter()
    caller = "forget_class"
    check_seed(caller, seed)
    check_fraction("delta", caller, delta)
    check_positive_float("epsilon", caller, epsilon)
    check_positive_float("radius_scale", caller, radius_scale)
    check_positive_float("radius_rtol", caller, radius_rtol, allow_zero=True)
    check_positive_int("crown_iterations", caller, crown_iterations)
    check_positive_int("max_rounds", caller, max_rounds)
    check_positive_int("batch_size", caller, batch_size)
    check_choice("bound", caller, bound, BOUND_METHODS)
    check_choice("radius", caller, radius, RADIUS_RULES)
    check_choice("intermediate", caller, intermediate, INTERMEDIATE_BOUNDS)
    if not isinstance(decision_gate, bool):
        raise InputValidationError(f"The 'decision_gate' parameter of {caller} must be True or False. "
                                   f"Got {decision_gate!r} instead.")
    check_positive_int("calibration_points", caller, calibration_points)
    if isinstance(max_relaxed, bool) or not isinstance(max_relaxed, int) or max_relaxed < 0:
        raise InputValidationError(f"The 'max_relaxed' parameter of {caller} must be a non-negative integer. "
                                   f"Got {max_relaxed!r} instead.")
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
    if target != "random" and (isinstance(target, bool) or not isinstance(target, (int, np.integer))
                               or not 0 <= int(target) < num_classes or int(target) == label):
        raise InputValidationError(f"The 'target' parameter of {caller} must be 'random' or a label in "
                                   f"[0, {num_classes - 1}] other than {label}. Got {target!r} instead.")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    verify_split(model, split, x[:64].to(device))
    lower, upper, domain_source = feature_box(split, domain[0], domain[1], tuple(x.shape[1:]), feature_domain)
    in_lo, in_hi = (torch.as_tensor(v, dtype=torch.float64) for v in domain)
    check_in_box(x, in_lo.flatten() if in_lo.dim() else in_lo, in_hi.flatten() if in_hi.dim() else in_hi,
                 "X_class", caller, "input domain box")
    head64 = HeadNetwork.from_split(split)
    with torch.no_grad():
        feats = split.features(x.to(device)).detach()
    pr = point_regions(head64, split, feats)
    h64 = feats.to("cpu", torch.float64)
    n = len(x)
    y = torch.full((n,), label, dtype=torch.int64)
    rng = np.random.default_rng(seed)
    others = [c for c in range(num_classes) if c != label]

    # Relaxed supports (class patch set) and exact supports of leftover members (point patch set rows).
    sup_patterns, sup_stable, sup_lambda, sup_group = [], [], [], []
    group_values, group_targets = [], []
    exact_rows: dict[bytes, dict] = {}
    rounds = []
    pending = pr.consistent.clone()  # members on a numerical region boundary cannot get supports
    degenerate = set((~pr.consistent).nonzero().flatten().tolist())
    n_crown = 0
    with torch.no_grad():
        preacts, base_logits = split.head_forward(feats)
        z_all = stack_preacts(preacts, base_logits)
    base64 = pr.logits.clone()
    already = label_lead(base64, label) < 0  # mispredicted by the base model: forgotten without a patch
    pending &= ~already
    gsupp = torch.zeros(n, 0)                       # (n, G) largest relaxed support per group
    exact_extra = torch.zeros(n, num_classes, dtype=torch.float64)
    bar = progress_bar(total=n, desc="forget-class", unit="point", enabled=progress)

    def current() -> torch.Tensor:
        """float64 logits of the model built so far, at every member."""
        vals = torch.stack(group_values).double() if group_values else torch.zeros(0, num_classes, dtype=torch.float64)
        return base64 + gsupp.double() @ vals + exact_extra

    def lead_over_label(logits: torch.Tensor) -> torch.Tensor:
        return -label_lead(logits, label)

    def gate_lambdas(members: torch.Tensor, stable: torch.Tensor) -> torch.Tensor:
        """λ per support: GATE_HEADROOM over the member's smallest slack on the stable neurons."""
        m = torch.where(stable, pr.slack[members], torch.full_like(pr.slack[members], float("inf"))).amin(dim=1) \
            if stable.shape[1] else torch.full((len(members),), float("inf"), dtype=torch.float64)
        lam = (GATE_HEADROOM / m).to(torch.float32)
        return torch.where(torch.isfinite(m), lam, torch.ones_like(lam))

    # λ_d: the gate is fully open once the class leads by DECISION_MARGIN (float32, as evaluated)
    decision_lambda = torch.tensor([1.0 / DECISION_MARGIN if decision_gate else 0.0], dtype=torch.float32)

    def relaxed_set(masks: list, stable: list, lambdas, groups: list, values, targets: list) -> ClassPatchSet:
        """The class patch set of these relaxed supports (one (N,) mask and stable set each) and group values."""
        return ClassPatchSet(
            head64.num_hidden, num_classes,
            patterns=pack_patterns(torch.stack(masks)) if masks else None,
            stable=pack_patterns(torch.stack(stable)) if stable else None,
            gate_lambda=torch.as_tensor(lambdas, dtype=torch.float32), group=torch.as_tensor(groups, dtype=torch.int64),
            values=values, targets=torch.as_tensor(targets, dtype=torch.int64), label=torch.tensor([label]),
            decision_lambda=decision_lambda)

    t_rounds = time.perf_counter()
    common_radius = None
    if radius == "calibrated" and n:
        ok = pr.consistent.nonzero().flatten()
        centre = h64[ok].mean(dim=0)
        sample = ok[torch.argsort((h64[ok] - centre).norm(dim=1))[:calibration_points]]
        radii = certified_radius(head64, h64[sample], y[sample], lower, upper, iterations=crown_iterations)
        n_crown += len(sample)
        common_radius = float(radii.median())
    proven_radii = []  # positive radii found so far: their median warm-starts the next batch's search
    for rnd in range(1, max_rounds + 1):
        if n == 0 or not pending.any() or 1 - pending.float().mean().item() >= delta:
            break
        t0 = time.perf_counter()
        idx = pending.nonzero().flatten()
        centre = h64[idx].mean(dim=0)
        order = idx[torch.argsort((h64[idx] - centre).norm(dim=1))]
        rep = int(order[0])
        tgt = int(rng.choice(others)) if target == "random" else int(target)
        # the representative's region patch, certified on its (tightened) exact linear region
        d_k = _region_patches(head64, pr.masks[rep: rep + 1], pr.min_slack[rep: rep + 1],
                              pr.float32_error[rep: rep + 1], torch.tensor([tgt]), lower, upper, bound, epsilon,
                              60)[2][0]
        group = len(group_values)
        group_values.append(d_k)
        group_targets.append(tgt)
        gsupp = torch.cat([gsupp, torch.zeros(n, 1)], dim=1)
        # members the patch flips at the point, on top of what earlier rounds added
        flipped = pending & (lead_over_label(current() + d_k.double()) >= epsilon)
        flipped[rep] = True
        to_cover = order[flipped[order]]  # nearest to the centroid first
        relaxed_here = 0
        first = len(sup_patterns)
        uncovered = []  # members whose own relaxed support does not reach 1 at them (e.g. a half-open gate)
        while len(to_cover) and relaxed_here < max_relaxed:
            b = to_cover[: min(batch_size, max_relaxed - relaxed_here)]
            if common_radius is None:
                found = torch.cat(proven_radii) if proven_radii else torch.zeros(0)
                rad = certified_radius(head64, h64[b], y[b], lower, upper, iterations=crown_iterations,
                                       rtol=radius_rtol, intermediate=intermediate, search_dtype=torch.float32,
                                       start=float(found.median()) if len(found) else None)
                proven_radii.append(rad[rad > 0])
                sa, si = stable_neurons(head64, h64[b], rad * radius_scale, lower, upper, intermediate=intermediate)
                n_crown += len(b)
            else:
                sa, si = stable_neurons(head64, h64[b], common_radius * radius_scale, lower, upper,
                                        intermediate="ibp")
            relaxed_here += len(b)
            new = relaxed_set(list(pr.masks[b]), list(sa | si), gate_lambdas(b, sa | si), [0] * len(b),
                              torch.zeros(1, num_classes), [tgt]).to(z_all.device)
            with torch.no_grad():  # coverage is only needed where a support is still wanted
                got = new.group_support(z_all[to_cover], base_logits[to_cover])[:, 0].cpu()
            gsupp[to_cover, group] = torch.maximum(gsupp[to_cover, group], got)
            sup_patterns += list(pr.masks[b])
            sup_stable += list(sa | si)
            sup_lambda += new.gate_lambda.tolist()
            sup_group += [group] * len(b)
            uncovered += b[gsupp[b, group] != 1].tolist()
            to_cover = to_cover[len(b):]
            to_cover = to_cover[gsupp[to_cover, group] != 1]
        rest = (gsupp[:, group] < 1).nonzero().flatten()
        if len(sup_patterns) > first and len(rest):
            # the group's support at every member, for the bookkeeping below; where a batch's supports
            # already reached 1 (the most a support can be) the group's support is 1, nothing to recompute
            whole = relaxed_set(sup_patterns[first:], sup_stable[first:], sup_lambda[first:],
                                [0] * (len(sup_patterns) - first), torch.zeros(1, num_classes), [tgt]).to(z_all.device)
            with torch.no_grad():
                gsupp[rest, group] = whole.group_support(z_all[rest], base_logits[rest])[:, 0].cpu()
        for i in uncovered + to_cover.tolist():  # budget spent: the member's own exact region, in the point patch set
            key = pr.masks[i].numpy().tobytes()
            row = exact_rows.setdefault(key, {"members": [], "group": group})
            row["members"].append(i)
            exact_extra[i] += d_k.double()
        lead = lead_over_label(current())
        newly = pending & (lead > 0)
        pending &= lead <= 0
        bar.update(int(newly.sum()))
        rounds.append({"round": rnd, "representative": rep, "target": tgt, "flipped_by_patch": int(flipped.sum()),
                       "relaxed_supports": relaxed_here, "exact_supports": len(uncovered) + len(to_cover),
                       "pending_points": int(pending.sum()), "A_u": float((lead <= 0).float().mean()),
                       "seconds": time.perf_counter() - t0})
    bar.close()
    class_set = relaxed_set(sup_patterns, sup_stable, sup_lambda, sup_group,
                            torch.stack(group_values) if group_values else torch.zeros(0, num_classes), group_targets)
    point_set = _exact_rows(exact_rows, pr, group_values, group_targets, label, num_classes, head64.num_hidden)
    patched = PatchedModel(model, point_set, head=head, class_patches=class_set).to(device).eval()
    stragglers = pending.nonzero().flatten()
    point_result = None
    if delta >= 1.0 and len(stragglers):
        point_result = forget(patched, x[stragglers], labels=y[stragglers], bound=bound, epsilon=epsilon, seed=seed,
                              domain=domain, feature_domain=feature_domain)
        patched = point_result.model
    timings = {"rounds": time.perf_counter() - t_rounds}
    with torch.no_grad():
        after = torch.cat([patched(x[i: i + 4096].to(device)).argmax(1).cpu() for i in range(0, n, 4096)]) \
            if n else torch.zeros(0, dtype=torch.int64)
    claims, failed = [], []
    straggler_set = set(stragglers.tolist()) if point_result is not None else set()
    hashes = points_sha256(x)
    after_list, already_list = after.tolist(), already.tolist()
    for i in range(n):
        if after_list[i] == label:
            reason = ("the point lies numerically on a linear-region boundary" if i in degenerate
                      else "not reached: the forgotten share already met delta")
            failed.append({"index": i, "point_sha256": hashes[i], "label": label, "reason": reason})
            continue
        claims.append({"index": i, "point_sha256": hashes[i], "label": label,
                       "target": after_list[i], "predicted_after": after_list[i],
                       "region": -1, "proved": "point", "margin": 0.0,
                       "bound": "per-point patch" if i in straggler_set else
                       "base model" if already_list[i] else "class patch"})
    unlearn_seconds = time.perf_counter() - t_start
    cert = Certificate(
        model_sha256=patched.base_sha256(),
        patches_sha256=patched.patches_sha256(),
        epsilon=float(epsilon),
        domain={"space": "head input (features)", "source": domain_source, **describe_box(lower, upper)},
        head={"name": head, "layer_sizes": [split.feature_dim, *split.hidden_sizes, num_classes],
              "scope": f"whole class {label}"},
        # point-patch rows: leftover members' exact regions (and the stragglers' Theorem-1 patches)
        regions=(point_result.certificate if point_result else
                 build_certificate(patched, lower, upper, domain_source, epsilon, [], [])).regions,
        claims=claims, failed=failed,
        proof=point_result.certificate.proof if point_result else None,
        multipliers=point_result.certificate.multipliers if point_result else None,
    )
    metrics = class_metrics(model, patched, label, train=train_data, test=test_data)
    values = class_set.values
    report = Report(
        strategy="class", bound=bound, seed=seed, epsilon=float(epsilon), target_rule=str(target),
        n_forget=n, n_forgotten=len(claims), n_certified_region=0, n_certified_point=len(claims),
        n_failed=len(failed), n_regions_new=len(class_set) + (len(point_result.model.patches) if point_result else 0),
        n_patches_total=len(class_set) + len(patched.patches),
        A_u_before=float(accuracy(predict(model, x), y)) if n else float("nan"),
        A_u_after=float((after == label).float().mean()) if n else float("nan"),
        unlearn_seconds=unlearn_seconds,
        patch_linf_mean=float(values.abs().max(dim=1).values.mean()) if len(values) else 0.0,
        patch_linf_max=float(values.abs().max()) if len(values) else 0.0,
        patch_stored_numbers=float(len(class_set) * (2 * head64.num_hidden / 32 + 2) + values.numel()),
        n_float32_robust=0, rounds=rounds,
        timings={**{k: round(v, 6) for k, v in timings.items()}, "crown_points": n_crown,
                 "common_radius": common_radius,
                 "stragglers_per_point": int(len(stragglers)) if point_result else 0},
        failed=failed, extra=metrics,
    )
    return ForgetResult(patched, report, cert)


def _exact_rows(rows: dict, pr, group_values, group_targets, label: int, num_classes: int, num_hidden: int) -> PatchSet:
    """Point-patch-set rows for members left without a relaxed support: their exact region, group value."""
    from ..core.patches import BOUND_CODES

    if not rows:
        return PatchSet(num_hidden, num_classes)
    masks, lam, vals, tgts, excl, slack = [], [], [], [], [], []
    for row in rows.values():
        m = float(pr.min_slack[row["members"]].min())
        masks.append(pr.masks[row["members"][0]])
        lam.append(float(torch.tensor(GATE_HEADROOM / m, dtype=torch.float32)))
        vals.append(group_values[row["group"]])
        tgts.append(group_targets[row["group"]])
        e = torch.zeros(num_classes, dtype=torch.bool)
        e[label] = True
        excl.append(e)
        slack.append(m)
    r = len(masks)
    return PatchSet(
        num_hidden, num_classes, patterns=pack_patterns(torch.stack(masks)),
        gate_lambda=torch.tensor(lam, dtype=torch.float32), values=torch.stack(vals).to(torch.float32),
        targets=torch.tensor(tgts, dtype=torch.int64), excluded=torch.stack(excl),
        point_min_slack=torch.tensor(slack, dtype=torch.float64),
        region_threshold=torch.full((r,), float("nan"), dtype=torch.float64),
        certified_margin=torch.zeros(r, dtype=torch.float64),
        bound_code=torch.full((r,), BOUND_CODES["point"], dtype=torch.uint8),
        float32_robust=torch.zeros(r, dtype=torch.bool))
