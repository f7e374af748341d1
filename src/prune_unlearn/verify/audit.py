"""Independent audit of a patched model against its certificate.

The audit re-checks every claim from scratch and shares no numerical code with ``forget``: region
maps are recomputed here by explicit float64 matrix products (NumPy), bounds by the closed-form box
formula or by weak duality at the certificate's stored multipliers, and a random sample of regions
(or all, ``exhaustive=True``) by exact LPs with HiGHS. Checks:

``hashes``
    the base weights, the patch set and the multipliers match the certificate's SHA-256s.
``regions``
    every certificate region matches the patch set (pattern, λ, θ = 2/λ, target, H, proof kind).
``bounds``
    for every region claim, ``min_{l≠t} d_t − d_l − U_l ≥ margin`` with ``U_l`` re-derived here in
    exact rational arithmetic (:mod:`prune_unlearn.verify.exact`): no rounding can pass a false claim.
``lp``
    exact ``min`` of the target's lead over each label on the certified region ≥ margin (HiGHS, by
    row generation, :mod:`prune_unlearn.verify.lp`); and the float32 model, as served, predicts the
    target at each LP minimiser (float32-robust regions).
``points``
    each given point's hash is claimed, its label is no longer predicted (a black-box query), and
    (white-box) it is supported by the claimed region with support exactly 1.
``band``, ``points`` of ``target="unseen"`` claims
    see :mod:`prune_unlearn.verify.band` (two-sided margin bands on the support; logits at the point).
``locality``
    inputs outside every patched region (random inputs, given inputs, and points pushed just across
    a region boundary, :mod:`prune_unlearn.verify.probes`) get the base model's logits bit for bit,
    and the fast support lookup agrees with the dense support-network formula; every probe is
    finite and lies outside the region it was pushed out of.
"""

from __future__ import annotations

import hashlib
import math
import time
from fractions import Fraction

import numpy as np
import torch
from torch import nn

from .._hashing import points_sha256, state_sha256
from .._threads import kernel_threads
from .audit_neighbourhood import audit_neighbourhoods
from .audit_result import AuditResult, Check
from .band import check_bands, unseen_point_problems
from .certificate import Certificate, box_from_description, certified_patches_sha256
from .audit_locality import check_locality, head_weights
from .audit_stages import StageInputs, run_stages
from .exact import BACKEND as EXACT_BACKEND
from .properties import class_offsets
from ..errors import CertificateError, InputValidationError
from ..core.patches import PatchedModel

__all__ = ["audit", "AuditResult", "Check"]

AUDIT_MODES = ("white-box", "black-box")
_REL_TOL = 1e-9  # a claim's margin may differ from its region's in the last bits


def _unpack(packed: np.ndarray, n: int) -> np.ndarray:
    return np.unpackbits(packed, bitorder="little")[:n].astype(bool)


# --- the audit ------------------------------------------------------------------------------------

def audit(
    model: nn.Module,
    certificate: Certificate,
    *,
    points: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    mode: str = "white-box",
    lp_samples: int = 20,
    exhaustive: bool = False,
    locality_inputs: torch.Tensor | None = None,
    locality_samples: int = 2000,
    seed: int = 0,
    strict: bool = False,
    milp_samples: int = 3,
    workers: int | None = None,
) -> AuditResult:
    """Re-check a certificate against a patched model; collect every failed claim.

    Parameters
    ----------
    model : PatchedModel
        The patched model as delivered (black-box mode only queries it).
    certificate : Certificate
    points, labels : optional
        The forgotten points (as the model takes them) and their labels, e.g. from the data holder.
    mode : {"white-box", "black-box"}
    lp_samples : int, default 20
        Regions re-solved by exact LP (all with ``exhaustive=True``).
    locality_inputs : tensor, optional
        Extra real inputs for the locality check (e.g. a test set).
    strict : bool
        Raise :class:`CertificateError` listing every failure instead of returning.
    milp_samples : int, default 3
        Neighbourhood rows re-proven exactly by a MILP over their ball (all with ``exhaustive=True``); see
        :mod:`prune_unlearn.verify.audit_neighbourhood`.
    workers : int, optional
        Processes for the exact bounds and the LPs (:mod:`prune_unlearn.verify.audit_stages`; the same checks
        either way). Default: the library's setting (``PRUNE_THREADS``), used when those stages are long.
    """
    if mode not in AUDIT_MODES:
        raise InputValidationError(f"The 'mode' parameter of audit must be 'white-box' or 'black-box'. Got {mode!r}.")
    for name, x in (("points", points), ("locality_inputs", locality_inputs)):
        _check_input_shape(model, x, name)
    start = time.perf_counter()
    result = AuditResult(mode=mode)
    rng = np.random.default_rng(seed)
    claims = certificate.claims
    with kernel_threads(), _one_blas_thread():  # see prune_unlearn._threads
        _run_checks(model, certificate, result, rng, points, labels, mode, lp_samples, exhaustive, locality_inputs,
                    locality_samples, milp_samples, workers)
    if not claims and not certificate.failed:
        result.add("regions", "certificate", False, "the certificate makes no claim")
    result.seconds = time.perf_counter() - start
    if strict and not result.passed:
        raise CertificateError("The audit rejected the certificate:\n" + "\n".join(
            f"- {c.name} [{c.subject}]: {c.detail}" for c in result.failures))
    return result


def _check_input_shape(model: nn.Module, x, name: str) -> None:
    """Refuse inputs the model cannot take (e.g. a data set of another width) with one clear error, before any check
    runs: one forward pass of a single input."""
    if x is None:
        return
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or not x.is_floating_point():
        raise InputValidationError(f"The {name!r} parameter of audit must be a float tensor of inputs, shape (n, …). "
                                   f"Got {type(x).__name__} {tuple(getattr(x, 'shape', ()))}.")
    if len(x) == 0:
        return
    first = next((m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))), None)
    try:
        with torch.no_grad():
            model(x[:1])
    except (RuntimeError, ValueError) as exc:
        wants = f" (its first layer takes {first.in_features} features)" if isinstance(first, nn.Linear) else ""
        raise InputValidationError(
            f"The {name!r} parameter of audit has inputs of shape {tuple(x.shape[1:])}, which the model cannot take"
            f"{wants}: {str(exc).splitlines()[0]}. HINT: audit with the data set the model was trained on "
            "(--data).") from None


def _run_checks(model, certificate, result, rng, points, labels, mode, lp_samples, exhaustive, locality_inputs,
                locality_samples, milp_samples, workers) -> None:
    if points is not None:
        _check_points(model, certificate, points, labels, result, white_box=mode == "white-box")
    if mode == "white-box":
        if not isinstance(model, PatchedModel):
            result.add("hashes", "model", False, f"a white-box audit needs a PatchedModel, got {type(model).__name__}")
        else:
            ok = _check_hashes(model, certificate, result)
            if ok:
                _check_regions(model, certificate, result, rng, lp_samples, exhaustive, workers)
                check_locality(model, certificate, result, rng, locality_inputs, locality_samples, points)
                audit_neighbourhoods(model, certificate, result, rng, points=points, samples=milp_samples,
                                     exhaustive=exhaustive)
    elif points is None:
        result.add("points", "request", False, "a black-box audit needs the forgotten points (and labels)")


def _one_blas_thread():
    """NumPy's BLAS with one thread for the audit's float64 algebra (it spins on busy cores like torch)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _check_hashes(model: PatchedModel, cert: Certificate, result: AuditResult) -> bool:
    got = model.base_sha256()
    result.add("hashes", "base model", got == cert.model_sha256,
               "" if got == cert.model_sha256 else f"weights hash {got[:16]}… ≠ certificate's {cert.model_sha256[:16]}…")
    got = certified_patches_sha256(model, cert)
    result.add("hashes", "patch set", got == cert.patches_sha256,
               "" if got == cert.patches_sha256 else f"patch-set hash {got[:16]}… ≠ certificate's {cert.patches_sha256[:16]}…")
    needs_proof = any(r["proved"] == "region" and r["bound"] in ("dual", "lp") for r in cert.regions)
    if needs_proof:
        mult = cert.multipliers
        if mult is None or not cert.proof:
            result.add("hashes", "multipliers", False, "dual/LP claims but the proof file (multipliers) is missing")
        else:
            got = state_sha256({"multipliers": mult.detach().cpu().to(torch.float32)})
            ok = got == cert.proof.get("sha256") and bool(torch.isfinite(mult).all()) and bool((mult >= 0).all())
            result.add("hashes", "multipliers", ok, "" if ok else "multipliers do not match the certificate's hash, "
                       "or contain negative/non-finite values")
    return all(c.passed for c in result.checks if c.name == "hashes")


class _Rows:
    """The patch set's rows as NumPy arrays, read once per audit."""

    def __init__(self, model: PatchedModel, cert: Certificate):
        ps = model.patches
        self.n_hidden, self.n_classes, self.count = ps.num_hidden, ps.num_classes, len(ps)
        self.packed = ps.patterns.detach().cpu().numpy()
        self.lam = ps.gate_lambda.detach().cpu().double().numpy()
        self.theta = ps.region_threshold.detach().cpu().numpy()
        self.values32 = ps.values.detach().cpu().numpy()
        self.values = self.values32.astype(np.float64)
        self.targets = ps.targets.detach().cpu().numpy()
        self.codes = ps.bound_names()
        self.lo, self.hi = (t.numpy() for t in box_from_description(cert.domain))

    def active(self, r: int) -> np.ndarray:
        return _unpack(self.packed[r], self.n_hidden)


def _check_regions(model: PatchedModel, cert: Certificate, result: AuditResult, rng, lp_samples: int,
                   exhaustive: bool, workers: int | None) -> None:
    rows = _Rows(model, cert)
    if len(cert.regions) != rows.count:
        result.add("regions", "patch set", False, f"certificate lists {len(cert.regions)} regions, the model has "
                   f"{rows.count}")
    claimed_regions = sorted({c["region"] for c in cert.claims if c["proved"] == "region"})
    lp_set = set(claimed_regions if exhaustive else
                 rng.choice(claimed_regions, size=min(lp_samples, len(claimed_regions)), replace=False).tolist()
                 if claimed_regions else [])
    margin_of = {}
    for c in cert.claims:
        margin_of.setdefault(c["region"], []).append(c["margin"])
    proven = []  # (region, entry) whose bound is re-derived exactly below
    for entry in cert.regions:
        r = entry["region"]
        subject = f"region {r}"
        if not 0 <= r < rows.count:
            result.add("regions", subject, False, "no such row in the patch set")
            continue
        problems = _region_entry_problems(entry, rows.packed[r], rows.lam[r], rows.theta[r], rows.targets[r],
                                          rows.values[r], rows.codes[r], margin_of.get(r, []))
        result.add("regions", subject, not problems, "; ".join(problems))
        if problems or entry["proved"] != "region":
            continue
        if entry["bound"] != "box" and cert.multipliers is None:
            result.add("bounds", subject, False, "no multipliers for a dual/LP claim")
            continue
        proven.append((r, entry))
    if any(c.get("kind") == "unseen" for c in cert.claims):
        check_bands(cert.claims, *head_weights(model), rows.packed, rows.values32, rows.n_hidden, rows.lo, rows.hi,
                    result)
    if proven:
        _run_stages(model, cert, rows, proven, [(r, e) for r, e in proven if r in lp_set], result, workers)


def _run_stages(model: PatchedModel, cert: Certificate, rows: _Rows, proven: list, lp_todo: list, result,
                workers) -> None:
    """``bounds`` (every region claim's margin re-derived from its proof in exact rational arithmetic) and
    ``lp`` (exact LPs of the sampled regions): computed by :mod:`.audit_stages`, recorded here in order."""
    ws, bs = head_weights(model, np.float32)
    ws64, bs64 = head_weights(model, np.float64)
    idx = np.array([r for r, _ in proven])
    masks = np.stack([rows.active(r) for r in idx]) if rows.n_hidden else np.zeros((len(idx), 0), bool)
    mu = np.zeros((len(idx), rows.n_classes, rows.n_hidden), np.float32)
    for k, (r, entry) in enumerate(proven):
        if entry["bound"] != "box":
            mu[k] = cert.multipliers[r].detach().cpu().numpy()
    # each class-patch group adds at most max(0, d_g[l] − d_g[t]) to f_l − f_t (exact fractions)
    inputs = StageInputs(ws, bs, ws64, bs64, rows.lo, rows.hi, masks, mu, rows.theta[idx], rows.targets[idx],
                         rows.values32[idx], class_offsets(model),
                         [(rows.active(r), rows.values[r], rows.theta[r], int(rows.targets[r])) for r, _ in lp_todo])
    out = run_stages(inputs, workers)
    result.timings.update(out.timings)
    result.workers = out.workers
    if out.leads is None:  # negative or non-finite multipliers: no proof at all
        for r, _ in proven:
            result.add("bounds", f"region {r}", False, f"cannot evaluate the proof exactly: {out.leads_error}")
    else:
        for (r, entry), row in zip(proven, out.leads):
            worst = min(v for v in row if v is not None) if rows.n_classes > 1 else None
            ok = worst is None or worst >= Fraction(entry["margin"])
            result.add("bounds", f"region {r}", ok, "" if ok else
                       f"exact re-derived margin {float(worst):.6g} < claimed {entry['margin']:.6g}")
        result.exact_backend = EXACT_BACKEND
    for (r, entry), solved in zip(lp_todo, out.lp):
        _record_lp(model, entry, solved, int(rows.targets[r]), result)


def _region_entry_problems(entry, packed_r, lam_r, theta_r, target_r, values_r, code_r, margins) -> list:
    problems = []
    if hashlib.sha256(packed_r.tobytes()).hexdigest() != entry["pattern_sha256"]:
        problems.append("pattern hash differs")
    if not math.isclose(entry["lambda"], lam_r, rel_tol=0, abs_tol=0):
        problems.append("λ differs")
    if entry["target"] != int(target_r):
        problems.append("target differs")
    if not math.isclose(entry["H"], float(np.abs(values_r).max()), rel_tol=1e-7):
        problems.append("H differs from ‖d‖∞")
    if entry["proved"] == "region":
        if code_r != entry["bound"]:
            problems.append(f"bound {entry['bound']!r} but the patch set says {code_r!r}")
        if not (lam_r > 0 and math.isclose(theta_r, 2.0 / lam_r, rel_tol=1e-12)):
            problems.append("certified threshold θ is not 2/λ")
    for m in margins:
        if m > entry["margin"] * (1 + _REL_TOL) + 1e-12:
            problems.append(f"a claim's margin {m} exceeds the region's {entry['margin']}")
    return problems


def _record_lp(model, entry, solved, t, result) -> None:
    r = entry["region"]
    worst = min((v[0] for v in solved.values() if v[0] is not None), default=None)
    bad = [lab for lab, v in solved.items() if v[0] is None]
    ok = not bad and worst is not None and worst >= entry["margin"] - 1e-7 * (1 + abs(worst))
    result.add("lp", f"region {r}", ok, "" if ok else
               (f"LP failed for labels {bad}" if bad else f"exact minimum lead {worst:.6g} < claimed {entry['margin']:.6g}"))
    if not entry.get("float32_robust", False) or bad or not solved:
        return
    # the float32 model, as served, at the LP minimisers (extreme points of the certified region)
    vertices = torch.tensor(np.stack([v[1] for v in solved.values()]), dtype=torch.float32)
    with torch.no_grad():
        preacts, logits = model.split.head_forward(vertices.to(next(model.parameters()).device))
        out = model.patches.apply(preacts, logits).cpu()
    wins = out.argmax(1) == t
    result.add("lp", f"region {r} (float32 at LP minimisers)", bool(wins.all()),
               "" if bool(wins.all()) else f"target loses at {int((~wins).sum())} of {len(wins)} minimisers")


def _check_points(model, cert: Certificate, points, labels, result: AuditResult, white_box: bool) -> None:
    by_hash = {}
    for c in cert.claims:
        by_hash.setdefault(c["point_sha256"], []).append(c)
    x = torch.as_tensor(points, dtype=torch.float32)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with torch.no_grad():
        logits = torch.cat([model(x[i: i + 4096].to(device)).cpu() for i in range(0, len(x), 4096)])
        pred = logits.argmax(1)
        region = support = class_cover = base_pred = None
        if white_box and isinstance(model, PatchedModel):
            base_pred = torch.cat([model.base(x[i: i + 4096].to(device)).argmax(1).cpu() for i in range(0, len(x), 4096)])
            region, support = model.covering_region(x.to(device))
            region, support = region.cpu(), support.cpu()
            class_cover = (model.class_support(x.to(device)) > 0).any(dim=1).cpu()
    y = torch.as_tensor(labels) if labels is not None else None
    hashes = points_sha256(x)
    for i in range(len(x)):
        h = hashes[i]
        subject = f"point {i} ({h[:12]}…)"
        found = by_hash.get(h)
        if not found:
            result.add("points", subject, False, "its hash is not among the certificate's claims")
            continue
        claim = found[0]
        label = int(y[i]) if y is not None else claim["label"]
        problems = []
        if y is not None and label != claim["label"]:
            problems.append(f"the certificate claims label {claim['label']}, the data holder says {label}")
        if claim.get("kind") == "unseen":  # answers as the reference does, whatever it predicts
            problems += unseen_point_problems(logits[i], claim)
        elif int(pred[i]) == label:
            problems.append(f"the model still predicts its label {label}")
        if base_pred is not None and claim.get("bound") == "base model":  # forgotten without a patch
            if int(base_pred[i]) == label:
                problems.append("claimed as already mispredicted by the base model, but the base model predicts it")
        elif claim.get("proved") == "neighbourhood":
            pass  # covering row and support checked by audit_neighbourhoods
        elif region is not None and claim["region"] < 0:  # whole-class claim: a class support must cover it
            if not (bool(class_cover[i]) or int(region[i]) >= 0):
                problems.append("no patch covers the point")
        elif region is not None:
            if int(region[i]) != claim["region"]:
                problems.append(f"covered by region {int(region[i])}, the certificate says {claim['region']}")
            elif float(support[i]) != 1.0:
                problems.append(f"support {float(support[i])} is not exactly 1 at the point")
        result.add("points", subject, not problems, "; ".join(problems))
