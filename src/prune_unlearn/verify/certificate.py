"""Certificates: what a forget run proved, in a self-describing JSON document.

A certificate names the base model and the patch set by content hash and lists, for each forgotten
point, the hash of the input, its label, the label it is now pushed to, the patched region that
covers it, and the proven margin. "region" claims hold on the whole tightened linear region
``{h ∈ B : s_i z_i(h) ≥ θ}`` (exact arithmetic, proven by a sound float64 bound); "point" claims
hold at the point (float64 computation, float32 model checked).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._hashing import state_sha256
from .._version import __version__
from ..errors import FormatError

__all__ = ["Certificate", "CERTIFICATE_FORMAT_VERSION", "describe_box", "certified_patches_sha256",
           "certificate_for", "describe_point_rows", "proof_entry"]

# 2: ``patches_sha256`` hashes the patched model's state-dict names (``patches.<field>``,
#    ``class_patches.<field>``); version 1 (still read) hashed them unprefixed / under ``class.``.
CERTIFICATE_FORMAT_VERSION = 2
READABLE_CERTIFICATE_VERSIONS = (1, 2)
CERTIFICATE_KIND = "prune-unlearning-certificate"


def describe_box(lower: torch.Tensor, upper: torch.Tensor) -> dict:
    """JSON form of a domain box: scalars when uniform, lists otherwise."""
    def compact(t: torch.Tensor):
        t = t.to(torch.float64).flatten()
        return float(t[0]) if bool((t == t[0]).all()) else t.tolist()

    return {"dim": int(lower.numel()), "lower": compact(lower), "upper": compact(upper)}


def box_from_description(desc: dict) -> tuple[torch.Tensor, torch.Tensor]:
    d = int(desc["dim"])

    def expand(v):
        t = torch.tensor(v, dtype=torch.float64)
        return t.expand(d).clone() if t.dim() == 0 else t

    return expand(desc["lower"]), expand(desc["upper"])


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


@dataclass(frozen=True)
class Certificate:
    """What a forget run proved. See ``docs/certificate.md`` for every field."""

    model_sha256: str
    patches_sha256: str
    epsilon: float
    domain: dict
    head: dict
    regions: list = field(default_factory=list)
    claims: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    proof: dict | None = None
    library_version: str = ""
    # Certified neighbourhoods (issue 11): one entry per neighbourhood row, naming the set its claims cover.
    neighbourhoods: list = field(default_factory=list)
    format_version: int = CERTIFICATE_FORMAT_VERSION
    kind: str = CERTIFICATE_KIND
    # Lagrange multipliers (R, C, N) float32 behind the dual/LP region claims; saved beside the JSON.
    multipliers: Any = field(default=None, repr=False, compare=False)

    # --- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "multipliers"}
        if not data["neighbourhoods"]:
            del data["neighbourhoods"]  # certificates without neighbourhood claims keep their old shape
        return _jsonable(copy.deepcopy(data))

    def proof_path(self, path: str | Path) -> Path:
        path = Path(path)
        return path.with_name(path.stem + ".proof.safetensors")

    def to_json(self, path: str | Path | None = None, indent: int | None = 1) -> str:
        """The JSON text; with ``path``, also writes it (and the multipliers beside it) atomically."""
        data = self.to_dict()
        if path is not None and self.multipliers is not None and data.get("proof"):
            data["proof"]["file"] = self.proof_path(path).name
        text = json.dumps(data, indent=indent, sort_keys=False)
        if path is not None:
            from ..core.serialization import atomic_replace, atomic_write_text

            if self.multipliers is not None:
                from safetensors.torch import save_file

                tensors = {"multipliers": self.multipliers.contiguous()}
                atomic_replace(self.proof_path(path), lambda tmp: save_file(tensors, tmp))
            atomic_write_text(Path(path), text + "\n")
        return text

    @classmethod
    def from_dict(cls, data: dict) -> "Certificate":
        if not isinstance(data, dict):
            raise FormatError("A certificate must be a JSON object.")
        if data.get("kind") != CERTIFICATE_KIND:
            raise FormatError(f"Not a prune-unlearn certificate (kind={data.get('kind')!r}).")
        if data.get("format_version") not in READABLE_CERTIFICATE_VERSIONS:
            raise FormatError(
                f"Certificate format_version {data.get('format_version')!r} is not supported (this library reads "
                f"versions {', '.join(map(str, READABLE_CERTIFICATE_VERSIONS))}). HINT: upgrade prune-unlearn to "
                "read certificates written by a newer version."
            )
        optional = ("neighbourhoods",)  # absent from certificates without neighbourhood claims
        required = [f for f in cls.__dataclass_fields__ if f != "multipliers" and f not in optional]
        missing = [k for k in required if k not in data]
        if missing:
            raise FormatError(f"The certificate does not have the key(s) {', '.join(map(repr, missing))}.")
        return cls(**{k: data[k] for k in required}, **{k: data[k] for k in optional if k in data})

    @classmethod
    def from_json(cls, path: str | Path) -> "Certificate":
        """Read a certificate, and its multipliers file when the certificate names one and it is present."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise FormatError(f"Cannot read certificate {path}: {exc}") from None
        cert = cls.from_dict(data)
        proof = cert.proof or {}
        proof_file = Path(path).parent / proof["file"] if proof.get("file") else None
        if proof_file is not None and proof_file.is_file():
            from safetensors import SafetensorError
            from safetensors.torch import load_file

            try:
                mult = load_file(str(proof_file))["multipliers"]
            except (SafetensorError, OSError, KeyError) as exc:
                raise FormatError(f"Cannot read the proof file {proof_file}: {exc}") from None
            object.__setattr__(cert, "multipliers", mult)
        return cert

    # --- summaries ----------------------------------------------------------------------------
    @property
    def n_region_claims(self) -> int:
        return sum(1 for c in self.claims if c["proved"] == "region")

    def summary(self) -> str:
        n = len(self.claims)
        return (f"certificate for model {self.model_sha256[:12]}…: {n} forgotten point(s), "
                f"{self.n_region_claims} certified on their linear region, {n - self.n_region_claims} at the "
                f"point, {len(self.failed)} failed; {len(self.regions)} patched region(s), ε = {self.epsilon:g}")

    def __repr__(self) -> str:
        return f"Certificate({self.summary()})"


def legacy_patches_sha256(patched) -> str:
    """``patches_sha256`` as format-version-1 certificates wrote it: point-patch fields unprefixed, class-patch
    fields under ``class.``. Version 2 uses :meth:`PatchedModel.patches_sha256` (the state-dict names)."""
    tensors = dict(patched.patches.tensors())
    if patched.has_class_patches:
        tensors.update({f"class.{k}": v for k, v in patched.class_patches.tensors().items()})
    return state_sha256(tensors)


def certified_patches_sha256(patched, certificate: "Certificate") -> str:
    """The patch-set hash of ``patched`` in the naming of ``certificate``'s format version."""
    if certificate.format_version == 1:
        return legacy_patches_sha256(patched)
    return patched.patches_sha256()


# --- building a certificate from a patched model's rows ------------------------------------------------

def describe_point_rows(patches) -> list[dict]:
    """The certificate's ``regions``: one entry per point row of a :class:`~prune_unlearn.core.patches.PatchSet`."""
    # whole columns as Python lists first (element-wise tensor indexing costs ~µs per field and row)
    r_all = len(patches)
    packed = patches.patterns.cpu().numpy()
    active = patches.masks().sum(dim=1).tolist()
    names = patches.bound_names()
    h = patches.values.abs().max(dim=1).values.tolist() if patches.num_classes and r_all else [0.0] * r_all
    columns = zip(range(r_all), active, patches.gate_lambda.tolist(), patches.region_threshold.tolist(), h,
                  patches.targets.tolist(), patches.certified_margin.tolist(), names, patches.float32_robust.tolist())
    return [{
        "region": r,
        "pattern_sha256": hashlib.sha256(packed[r].tobytes()).hexdigest(),
        "active_neurons": n_active,
        "lambda": lam,
        "threshold": theta,
        "H": big_h,
        "target": target,
        "margin": margin,
        "proved": "point" if name == "point" else "region",
        "bound": name,
        "float32_robust": robust,
    } for r, n_active, lam, theta, big_h, target, margin, name, robust in columns]


def proof_entry(multipliers: torch.Tensor | None) -> dict | None:
    """The certificate's ``proof``: what the multipliers file holds, and its hash (None without one)."""
    if multipliers is None:
        return None
    return {
        "kind": "lagrange-multipliers",
        "about": "multipliers[r, l, i] ≥ 0 for region r, label l, hidden neuron i: the weak-duality bound "
                 "of max (f_l − f_t) over region r evaluated at them is the bound behind the claim",
        "shape": list(multipliers.shape),
        "sha256": state_sha256({"multipliers": multipliers}),
    }


def certificate_for(patched, *, lower: torch.Tensor, upper: torch.Tensor, domain_source: str, epsilon: float,
                    claims: list, failed: list, multipliers: torch.Tensor | None = None,
                    scope: str | None = None, neighbourhoods: list | None = None) -> Certificate:
    """The certificate of ``patched`` (a :class:`~prune_unlearn.PatchedModel`): its hashes, every point row
    (:func:`describe_point_rows`), the per-point ``claims`` and ``failed`` entries a run made, and the
    ``multipliers`` (R, C, N) behind its dual/LP region claims, aligned with the point rows.

    The one place a certificate is built, for ``forget`` and ``forget_class`` alike; ``scope`` (e.g.
    ``"whole class 3"``) says what the claims are about when it is not the listed points alone.
    ``neighbourhoods``: one entry per neighbourhood row naming the set its claim covers
    (:meth:`~prune_unlearn.core.neighbourhood.NeighbourhoodSet.describe`), if the model has any.
    """
    split = patched.split
    head = {"name": patched.head, "layer_sizes": [split.feature_dim, *split.hidden_sizes, split.num_classes]}
    if scope is not None:
        head["scope"] = scope
    return Certificate(
        model_sha256=patched.base_sha256(),
        patches_sha256=patched.patches_sha256(),
        epsilon=float(epsilon),
        domain={"space": "head input (features)", "source": domain_source, **describe_box(lower, upper)},
        head=head,
        regions=describe_point_rows(patched.patches),
        claims=claims,
        failed=failed,
        proof=proof_entry(multipliers),
        library_version=__version__,
        multipliers=multipliers,
        neighbourhoods=list(neighbourhoods or []),
    )
