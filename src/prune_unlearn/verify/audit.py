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
    for every region claim, ``min_{l≠t} d_t − d_l − U_l ≥ margin`` with ``U_l`` re-derived here.
``lp``
    exact ``min`` of the target's lead over each label on the certified region ≥ margin; and the
    float32 model, as served, predicts the target at each LP minimiser (float32-robust regions).
``points``
    each given point's hash is claimed, its label is no longer predicted (a black-box query), and
    (white-box) it is supported by the claimed region with support exactly 1.
``locality``
    inputs outside every patched region (random inputs, given inputs, and points pushed just across
    a region boundary) get the base model's logits bit for bit, and the fast support lookup agrees
    with the dense support-network formula.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .._hashing import points_sha256, state_sha256
from .certificate import Certificate, box_from_description, certified_patches_sha256
from ..errors import CertificateError, InputValidationError
from ..core.patches import PatchedModel

__all__ = ["audit", "AuditResult", "Check"]

AUDIT_MODES = ("white-box", "black-box")
_REL_TOL = 1e-9  # re-derived float64 bounds may differ from forget's in the last bits


@dataclass
class Check:
    """One audited claim: ``name`` (check family), ``subject`` (what it is about), pass/fail and why."""

    name: str
    subject: str
    passed: bool
    detail: str = ""


@dataclass
class AuditResult:
    """All checks; ``passed`` only if every one passed. ``summary()`` gives the pass/fail table."""

    checks: list = field(default_factory=list)
    seconds: float = 0.0
    mode: str = "white-box"

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list:
        return [c for c in self.checks if not c.passed]

    def add(self, name: str, subject: str, passed: bool, detail: str = "") -> None:
        self.checks.append(Check(name, subject, bool(passed), detail))

    def counts(self) -> dict:
        out: dict = {}
        for c in self.checks:
            p, f = out.get(c.name, (0, 0))
            out[c.name] = (p + c.passed, f + (not c.passed))
        return out

    def to_dict(self) -> dict:
        return {"passed": self.passed, "mode": self.mode, "seconds": self.seconds,
                "counts": {k: {"passed": p, "failed": f} for k, (p, f) in self.counts().items()},
                "failures": [c.__dict__ for c in self.failures]}

    def summary(self) -> str:
        lines = [f"audit ({self.mode}) {'PASSED' if self.passed else 'FAILED'} in {self.seconds:.1f} s",
                 f"{'check':10s} {'passed':>7s} {'failed':>7s}"]
        for name, (p, f) in self.counts().items():
            lines.append(f"{name:10s} {p:7d} {f:7d}")
        for c in self.failures[:20]:
            lines.append(f"FAIL {c.name} [{c.subject}]: {c.detail}")
        if len(self.failures) > 20:
            lines.append(f"… and {len(self.failures) - 20} more failures")
        return "\n".join(lines)


# --- independent region algebra (NumPy, float64) ------------------------------------------------

def _unpack(packed: np.ndarray, n: int) -> np.ndarray:
    return np.unpackbits(packed, bitorder="little")[:n].astype(bool)


def _region_maps(weights, biases, active: np.ndarray):
    """``A, c`` (hidden pre-activations) and ``W, w`` (logits) on the region of pattern ``active``."""
    m, v = weights[0], biases[0]
    a_blocks, c_blocks = [m], [v]
    start = 0
    for j in range(1, len(weights)):
        size = weights[j - 1].shape[0]
        on = active[start: start + size].astype(np.float64)
        start += size
        m = weights[j] @ (on[:, None] * m)
        v = weights[j] @ (on * v) + biases[j]
        if j < len(weights) - 1:
            a_blocks.append(m)
            c_blocks.append(v)
    if len(weights) == 1:
        return np.zeros((0, m.shape[1])), np.zeros(0), m, v
    return np.concatenate(a_blocks), np.concatenate(c_blocks), m, v


def _max_over_box(r: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    terms = np.maximum(r * lo, r * hi)
    return terms.sum(axis=-1), np.abs(terms).sum(axis=-1)


def _upper_bounds(A, c, W, w, signs, theta, target, mu, lo, hi):
    """Sound ``U_l ≥ max_{h∈S_θ∩B} f_l − f_t`` by weak duality at ``mu`` (C, N) ≥ 0 (zeros: box bound)."""
    rows = W - W[target]                       # (C, d)
    r = rows + (mu * signs) @ A                # r_l = w_l + Σ_i μ_li s_i a_i
    q = signs * c - theta                      # s_i(a_i·h + c_i) ≥ θ  ⇔  −s_i a_i·h ≤ q_i
    box, box_abs = _max_over_box(r, lo, hi)
    const = w - w[target]
    value = const + mu @ q + box
    size = np.abs(const) + np.abs(mu) @ np.abs(q) + box_abs
    return value, size


def _lp_min_leads(A, c, W, w, values, signs, theta, target, lo, hi):
    """Exact ``min_{h ∈ S_θ ∩ B} (f_t + d_t) − (f_l + d_l)`` for each ``l``, with minimisers (HiGHS)."""
    from ..core.confusion import _new_highs  # a silent HiGHS instance; the LP itself is set up here
    import highspy

    d = A.shape[1]
    lp = _new_highs()
    lp.addVars(d, lo, hi)
    if len(c):
        rows = signs[:, None] * A
        nz = rows != 0
        starts = np.concatenate([[0], np.cumsum(nz.sum(axis=1))[:-1]]).astype(np.int32)
        lp.addRows(len(c), theta - signs * c, np.full(len(c), highspy.kHighsInf), int(nz.sum()), starts,
                   np.nonzero(nz)[1].astype(np.int32), rows[nz])
    out = {}
    for lab in range(W.shape[0]):
        if lab == target:
            continue
        obj = W[target] - W[lab]
        lp.changeColsCost(d, np.arange(d, dtype=np.int32), obj)
        lp.run()
        status = lp.getModelStatus()
        if status != highspy.HighsModelStatus.kOptimal:
            out[lab] = (None, None, str(status))
            continue
        x = np.asarray(lp.getSolution().col_value)
        lead = float(obj @ x + w[target] - w[lab] + values[target] - values[lab])
        out[lab] = (lead, x, "optimal")
    return out


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
    """
    if mode not in AUDIT_MODES:
        raise InputValidationError(f"The 'mode' parameter of audit must be 'white-box' or 'black-box'. Got {mode!r}.")
    start = time.perf_counter()
    result = AuditResult(mode=mode)
    rng = np.random.default_rng(seed)
    claims = certificate.claims
    if points is not None:
        _check_points(model, certificate, points, labels, result, white_box=mode == "white-box")
    if mode == "white-box":
        if not isinstance(model, PatchedModel):
            result.add("hashes", "model", False, f"a white-box audit needs a PatchedModel, got {type(model).__name__}")
        else:
            ok = _check_hashes(model, certificate, result)
            if ok:
                _check_regions(model, certificate, result, rng, lp_samples, exhaustive)
                _check_locality(model, certificate, result, rng, locality_inputs, locality_samples, points)
    elif points is None:
        result.add("points", "request", False, "a black-box audit needs the forgotten points (and labels)")
    if not claims and not certificate.failed:
        result.add("regions", "certificate", False, "the certificate makes no claim")
    result.seconds = time.perf_counter() - start
    if strict and not result.passed:
        raise CertificateError("The audit rejected the certificate:\n" + "\n".join(
            f"- {c.name} [{c.subject}]: {c.detail}" for c in result.failures))
    return result


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


def _weights(model: PatchedModel):
    ws = [lin.weight.detach().cpu().double().numpy() for lin in model.split.linears]
    bs = [(lin.bias.detach().cpu().double().numpy() if lin.bias is not None else np.zeros(lin.out_features))
          for lin in model.split.linears]
    return ws, bs


def _check_regions(model: PatchedModel, cert: Certificate, result: AuditResult, rng, lp_samples: int,
                   exhaustive: bool) -> None:
    ps = model.patches
    n_hidden, n_classes = ps.num_hidden, ps.num_classes
    packed = ps.patterns.detach().cpu().numpy()
    lam = ps.gate_lambda.detach().cpu().double().numpy()
    theta = ps.region_threshold.detach().cpu().numpy()
    values32 = ps.values.detach().cpu()
    values = values32.double().numpy()
    targets = ps.targets.detach().cpu().numpy()
    codes = ps.bound_names()
    lo, hi = (t.numpy() for t in box_from_description(cert.domain))
    ws, bs = _weights(model)
    cps = model.class_patches
    class_values = cps.values.detach().cpu().double().numpy() if cps is not None and len(cps) else None
    if len(cert.regions) != len(ps):
        result.add("regions", "patch set", False, f"certificate lists {len(cert.regions)} regions, the model has {len(ps)}")
    claimed_regions = sorted({c["region"] for c in cert.claims if c["proved"] == "region"})
    lp_set = set(claimed_regions if exhaustive else
                 rng.choice(claimed_regions, size=min(lp_samples, len(claimed_regions)), replace=False).tolist()
                 if claimed_regions else [])
    margin_of = {}
    for c in cert.claims:
        margin_of.setdefault(c["region"], []).append(c["margin"])
    for entry in cert.regions:
        r = entry["region"]
        subject = f"region {r}"
        if not 0 <= r < len(ps):
            result.add("regions", subject, False, "no such row in the patch set")
            continue
        problems = []
        if hashlib.sha256(packed[r].tobytes()).hexdigest() != entry["pattern_sha256"]:
            problems.append("pattern hash differs")
        if not math.isclose(entry["lambda"], lam[r], rel_tol=0, abs_tol=0):
            problems.append("λ differs")
        if entry["target"] != int(targets[r]):
            problems.append("target differs")
        if not math.isclose(entry["H"], float(np.abs(values[r]).max()), rel_tol=1e-7):
            problems.append("H differs from ‖d‖∞")
        if entry["proved"] == "region":
            if codes[r] != entry["bound"]:
                problems.append(f"bound {entry['bound']!r} but the patch set says {codes[r]!r}")
            if not (lam[r] > 0 and math.isclose(theta[r], 2.0 / lam[r], rel_tol=1e-12)):
                problems.append("certified threshold θ is not 2/λ")
        for m in margin_of.get(r, []):
            if m > entry["margin"] * (1 + _REL_TOL) + 1e-12:
                problems.append(f"a claim's margin {m} exceeds the region's {entry['margin']}")
        result.add("regions", subject, not problems, "; ".join(problems))
        if problems or entry["proved"] != "region":
            continue
        active = _unpack(packed[r], n_hidden)
        signs = np.where(active, 1.0, -1.0)
        A, c, W, w = _region_maps(ws, bs, active)
        t = int(targets[r])
        if entry["bound"] == "box":
            mu = np.zeros((n_classes, n_hidden))
        elif cert.multipliers is not None:
            mu = np.maximum(cert.multipliers[r].double().numpy(), 0.0)
        else:
            result.add("bounds", subject, False, "no multipliers for a dual/LP claim")
            continue
        upper, size = _upper_bounds(A, c, W, w, signs, theta[r], t, mu, lo, hi)
        if class_values is not None:  # each class-patch group adds at most max(0, d_g[l] − d_g[t]) to f_l − f_t
            upper = upper + np.maximum(class_values - class_values[:, t:t + 1], 0).sum(axis=0)
        lead = values[r, t] - values[r] - upper
        lead[t] = np.inf
        tol = _REL_TOL * (1 + size + np.abs(values[r]).max())
        tol[t] = 0
        ok = bool(np.all(lead >= entry["margin"] - tol))
        result.add("bounds", subject, ok, "" if ok else
                   f"re-derived margin {float(lead.min()):.6g} < claimed {entry['margin']:.6g}")
        if r in lp_set:
            _check_lp(model, entry, A, c, W, w, values[r], signs, theta[r], t, lo, hi, result)


def _check_lp(model, entry, A, c, W, w, values, signs, theta, t, lo, hi, result) -> None:
    r = entry["region"]
    solved = _lp_min_leads(A, c, W, w, values, signs, theta, t, lo, hi)
    worst = min((v[0] for v in solved.values() if v[0] is not None), default=None)
    bad = [lab for lab, v in solved.items() if v[0] is None]
    ok = not bad and worst is not None and worst >= entry["margin"] - 1e-7 * (1 + abs(worst))
    result.add("lp", f"region {r}", ok, "" if ok else
               (f"LP failed for labels {bad}" if bad else f"exact minimum lead {worst:.6g} < claimed {entry['margin']:.6g}"))
    if not entry.get("float32_robust", False) or bad:
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
        pred = torch.cat([model(x[i: i + 4096].to(device)).argmax(1).cpu() for i in range(0, len(x), 4096)])
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
        if int(pred[i]) == label:
            problems.append(f"the model still predicts its label {label}")
        if base_pred is not None and claim.get("bound") == "base model":  # forgotten without a patch
            if int(base_pred[i]) == label:
                problems.append("claimed as already mispredicted by the base model, but the base model predicts it")
        elif region is not None and claim["region"] < 0:  # whole-class claim: a class support must cover it
            if not (bool(class_cover[i]) or int(region[i]) >= 0):
                problems.append("no patch covers the point")
        elif region is not None:
            if int(region[i]) != claim["region"]:
                problems.append(f"covered by region {int(region[i])}, the certificate says {claim['region']}")
            elif float(support[i]) != 1.0:
                problems.append(f"support {float(support[i])} is not exactly 1 at the point")
        result.add("points", subject, not problems, "; ".join(problems))


def _check_locality(model: PatchedModel, cert: Certificate, result: AuditResult, rng, inputs, n_samples, points):
    """Bit-identical base logits wherever every support is zero, on features (the head's input space)."""
    ps = model.patches
    lo, hi = (t.numpy() for t in box_from_description(cert.domain))
    device = next(model.parameters()).device
    feats = [torch.tensor(rng.uniform(lo, hi, size=(n_samples, len(lo))), dtype=torch.float32)]
    if inputs is not None:
        with torch.no_grad():
            feats.append(model.split.features(torch.as_tensor(inputs, dtype=torch.float32).to(device)).cpu())
    if points is not None:
        # points pushed just across the nearest boundary of their region
        with torch.no_grad():
            h = model.split.features(torch.as_tensor(points, dtype=torch.float32).to(device)).cpu().double()
        ws, bs = _weights(model)
        pushed = []
        for row in h[: 200].numpy():
            z, a = [], row
            for j, (wm, bv) in enumerate(zip(ws[:-1], bs[:-1])):
                zz = wm @ a + bv
                z.append(zz)
                a = np.maximum(zz, 0)
            if not z:
                continue
            active = np.concatenate(z) > 0
            A, c, _, _ = _region_maps(ws, bs, active)
            s = np.where(active, 1.0, -1.0)
            slack = s * (A @ row + c)
            k = int(np.argmin(slack))
            step = (slack[k] * (1 + 1e-4) + 1e-6) / float(A[k] @ A[k])
            pushed.append(row - step * s[k] * A[k])
        if pushed:
            feats.append(torch.tensor(np.stack(pushed), dtype=torch.float32))
    h = torch.cat(feats).to(device)
    with torch.no_grad():
        preacts, logits = model.split.head_forward(h)
        z = torch.cat(preacts, dim=1) if preacts else logits.new_zeros(len(h), 0)
        region, value = ps.support(z)
        patched = ps.apply(preacts, logits)
        outside = value == 0
        cps = model.class_patches
        if cps is not None and len(cps):  # whole-class supports change outputs by design; skip what they cover
            patched = cps.apply(z, patched, base_logits=logits)
            outside &= (cps.group_support(z, logits) == 0).all(dim=1)
        dense = torch.cat([ps.support_dense(z[i: i + 256]) for i in range(0, len(z), 256)]) if len(ps) else None
    same = torch.equal(patched[outside], logits[outside])
    result.add("locality", f"{int(outside.sum())} unsupported inputs", same,
               "" if same else "some unsupported input's logits differ from the base model's")
    if dense is not None:
        expected = dense.gather(1, region.clamp(min=0).unsqueeze(1)).squeeze(1) * (region >= 0)
        agree = torch.equal(expected, value) and bool((dense[region < 0] == 0).all())
        result.add("locality", f"support formula on {len(h)} inputs", agree,
                   "" if agree else "the support lookup disagrees with the dense support-network formula")
