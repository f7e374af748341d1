"""Certificates: what a forget run proved, in a self-describing JSON document.

A certificate names the base model and the patch set by content hash and lists, for each forgotten
point, the hash of the input, its label, the label it is now pushed to, the patched region that
covers it, and the proven margin. "region" claims hold on the whole tightened linear region
``{h ∈ B : s_i z_i(h) ≥ θ}`` (exact arithmetic, proven by a sound float64 bound); "point" claims
hold at the point (float64 computation, float32 model checked).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ._hashing import state_sha256
from .errors import FormatError

__all__ = ["Certificate", "CERTIFICATE_FORMAT_VERSION", "describe_box"]

CERTIFICATE_FORMAT_VERSION = 1
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
    library_version: str = ""
    format_version: int = CERTIFICATE_FORMAT_VERSION
    kind: str = CERTIFICATE_KIND

    # --- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return _jsonable(asdict(self))

    def to_json(self, path: str | Path | None = None, indent: int | None = 1) -> str:
        text = json.dumps(self.to_dict(), indent=indent, sort_keys=False)
        if path is not None:
            from .serialization import atomic_write_text

            atomic_write_text(Path(path), text + "\n")
        return text

    @classmethod
    def from_dict(cls, data: dict) -> "Certificate":
        if not isinstance(data, dict):
            raise FormatError("A certificate must be a JSON object.")
        if data.get("kind") != CERTIFICATE_KIND:
            raise FormatError(f"Not a prune-unlearn certificate (kind={data.get('kind')!r}).")
        if data.get("format_version") != CERTIFICATE_FORMAT_VERSION:
            raise FormatError(
                f"Certificate format_version {data.get('format_version')!r} is not supported "
                f"(this library reads version {CERTIFICATE_FORMAT_VERSION})."
            )
        required = [f for f in cls.__dataclass_fields__]
        missing = [k for k in required if k not in data]
        if missing:
            raise FormatError(f"The certificate does not have the key(s) {', '.join(map(repr, missing))}.")
        return cls(**{k: data[k] for k in required})

    @classmethod
    def from_json(cls, path: str | Path) -> "Certificate":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise FormatError(f"Cannot read certificate {path}: {exc}") from None
        return cls.from_dict(data)

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


def patches_sha256(tensors: dict[str, torch.Tensor]) -> str:
    return state_sha256(tensors)
