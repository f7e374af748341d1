"""The audit's ``locality`` check: inputs outside every patched region get the base model's logits bit for bit.

The inputs are random points of the domain box, the caller's real inputs (e.g. a test set), and forgotten points
pushed just across the nearest face of their region (:func:`prune_unlearn.verify.probes.boundary_probes`); the
fast support lookup must agree with the dense support-network formula on all of them.
"""

from __future__ import annotations

import numpy as np
import torch

from .audit_result import AuditResult
from .certificate import Certificate, box_from_description
from .probes import boundary_probes, support_formula
from ..core.patches import PatchedModel

__all__ = ["check_locality", "head_weights"]

_PROBE_POINTS = 200  # forgotten points pushed across a face of their region (locality probes)


def head_weights(model: PatchedModel, dtype=np.float64):
    """The head's weights and biases as NumPy arrays of ``dtype`` (zeros for a missing bias)."""
    ws = [lin.weight.detach().cpu().numpy().astype(dtype) for lin in model.split.linears]
    bs = [(lin.bias.detach().cpu().numpy().astype(dtype) if lin.bias is not None else np.zeros(lin.out_features, dtype))
          for lin in model.split.linears]
    return ws, bs


def check_locality(model: PatchedModel, cert: Certificate, result: AuditResult, rng, inputs, n_samples, points):
    """Bit-identical base logits wherever every support is zero, on features (the head's input space)."""
    ps = model.patches
    lo, hi = (t.numpy() for t in box_from_description(cert.domain))
    device = next(model.parameters()).device
    feats = [torch.tensor(rng.uniform(lo, hi, size=(n_samples, len(lo))), dtype=torch.float32)]
    if inputs is not None:
        with torch.no_grad():
            feats.append(model.split.features(torch.as_tensor(inputs, dtype=torch.float32).to(device)).cpu())
    if points is not None:  # points pushed just across the nearest face of their region
        with torch.no_grad():
            h = model.split.features(torch.as_tensor(points, dtype=torch.float32).to(device)).cpu().double()
        ws, bs = head_weights(model)

        def head32(x):
            with torch.no_grad():
                pre, logits = model.split.head_forward(torch.as_tensor(x).to(device))
            return (torch.cat(pre, dim=1) if pre else logits.new_zeros(len(logits), 0)).cpu().numpy()

        probes = boundary_probes(ws, bs, h[:_PROBE_POINTS].numpy(), head32)
        lost = probes.non_finite + probes.not_crossing
        result.add("locality", f"{len(probes.inputs)} boundary probes", probes.non_finite == 0,
                   f"finite and outside their region; skipped {probes.constant_skipped} constant neuron(s), "
                   f"{probes.no_face} point(s) without a face among the candidates, dropped {lost} probe(s) "
                   f"({probes.non_finite} non-finite, {probes.not_crossing} still inside after retries)")
        if len(probes.inputs):
            feats.append(torch.from_numpy(probes.inputs))
    h = torch.cat(feats).to(device)
    if len(h) == 0:  # nothing to probe (e.g. locality_samples=0 and no points): no locality claim checked
        return
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
        dense = support_formula(ps, z) if len(ps) else None
    same = torch.equal(patched[outside], logits[outside])
    result.add("locality", f"{int(outside.sum())} unsupported inputs", same,
               "" if same else "some unsupported input's logits differ from the base model's")
    if dense is not None:
        expected = dense.gather(1, region.clamp(min=0).unsqueeze(1)).squeeze(1) * (region >= 0)
        agree = torch.equal(expected, value) and bool((dense[region < 0] == 0).all())
        result.add("locality", f"support formula on {len(h)} inputs", agree,
                   "" if agree else "the support lookup disagrees with the dense support-network formula")
