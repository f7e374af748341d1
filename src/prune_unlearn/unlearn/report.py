"""What a forget run measured, in a self-describing JSON document (like the certificate: versioned, typed).

:class:`Report` holds the numbers of one ``forget`` or ``forget_class`` run; a whole-class run adds a
typed :class:`ClassReport` (the paper's Table V metrics). ``to_dict``/``to_json`` write plain JSON:
non-finite numbers (NaN, ±inf — e.g. an accuracy over no points) are written as ``null`` (None),
since JSON has no NaN. ``from_dict``/``from_json`` read it back, checking ``format_version`` and
naming any missing or unknown key.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, NamedTuple

from ..core.patches import PatchedModel
from ..errors import FormatError
from ..verify.certificate import Certificate

__all__ = ["Report", "ClassReport", "ForgetResult", "REPORT_FORMAT_VERSION"]

# 1: first versioned report (typed class-run fields in ``whole_class``; no ``extra``).
# 2: certified-neighbourhood fields (``n_certified_neighbourhood``, ``radius``, ``radius_min/median/max``, ...),
#    ``n_already_forgotten`` and ``n_regions_resolved`` (prior rows solved again, for more points or a new
#    target); ``n_regions_new`` counts new rows only and the "before" numbers are the given model's. A
#    version-1 report reads back with the new fields at their defaults (a run without neighbourhoods).
# 3: ``ball_space`` (where the balls' radius lives: "input" or "features"; None without balls).
REPORT_FORMAT_VERSION = 3
READABLE_REPORT_VERSIONS = (1, 2, 3)


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON has no NaN or infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _check_keys(cls, data: Any, what: str) -> None:
    if not isinstance(data, dict):
        raise FormatError(f"{what} must be a JSON object; got {type(data).__name__}.")
    names = [f.name for f in fields(cls)]
    missing = [k for k in names if k not in data]
    if missing:
        raise FormatError(f"{what} does not have the key(s) {', '.join(map(repr, missing))}.")
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise FormatError(f"{what} has unknown key(s) {', '.join(map(repr, unknown))}.")


@dataclass(frozen=True)
class ClassReport:
    """Whole-class run (``forget_class``): the paper's Table V metrics and how the run went.

    ``A_u`` (the class, training points), ``A_tes_u`` (the class, test points), ``A_res``/``A_tes_r``
    (other classes, training/test), before and after, as fractions; ``changed_other_*`` predictions
    changed on other classes, ``flipped_class_*`` class points no longer predicted as the class;
    ``reach_other_test`` the share of other classes' test inputs inside some relaxed support, the
    decision gate ignored. None where the data was not given. ``crown_points``: points the radius
    search ran on; ``common_radius``: the calibrated radius (``radius="calibrated"``); ``stragglers_per_point``:
    members patched by Theorem 1 after the last round.
    """

    label: int
    crown_points: int
    common_radius: float | None
    stragglers_per_point: int
    A_u_before: float | None = None
    A_u_after: float | None = None
    A_res_before: float | None = None
    A_res_after: float | None = None
    changed_other_train: int | None = None
    flipped_class_train: int | None = None
    A_tes_u_before: float | None = None
    A_tes_u_after: float | None = None
    A_tes_r_before: float | None = None
    A_tes_r_after: float | None = None
    changed_other_test: int | None = None
    flipped_class_test: int | None = None
    reach_other_test: float | None = None

    _RUN_FIELDS = ("label", "crown_points", "common_radius", "stragglers_per_point")

    def metrics(self) -> dict:
        """The measured Table V numbers (fields not measured are left out), keyed by field name."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in self._RUN_FIELDS and getattr(self, f.name) is not None}

    def to_dict(self) -> dict:
        return json_safe(asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> "ClassReport":
        _check_keys(cls, data, "The report's whole_class entry")
        return cls(**data)


@dataclass(frozen=True)
class Report:
    """Numbers of one forget run. Accuracies are fractions; ``None`` where the data was not given (or, in
    :meth:`to_dict`, where a number is not finite). ``whole_class`` is set by ``forget_class`` only.

    "Before" numbers are those of the model as given to the run (already patched, on a second run), "after"
    those of the returned model. ``n_already_forgotten``: requested points the given model already did not
    predict as their label (forgotten earlier, or never learnt); ``n_regions_new``: patch rows for regions not
    patched before; ``n_regions_resolved``: already-patched regions solved again for the union of their old
    and new points (their rows replace the old ones, so ``n_patches_total`` does not grow by them).
    """

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
    A_u_before: float | None
    A_u_after: float | None
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
    whole_class: ClassReport | None = None
    # Certified neighbourhoods (``forget(radius=...)``; defaults elsewhere): points certified on a ball, the
    # requested radius (a float or "search"), the balls' radii (input units), the radius search's median CROWN
    # radius, the outer band (× radius), region ∩ ball rows.
    n_certified_neighbourhood: int = 0
    radius: float | str | None = None
    radius_min: float | None = None
    radius_median: float | None = None
    radius_max: float | None = None
    crown_radius_median: float | None = None
    outer: float | None = None
    within_region: bool | None = None
    ball_space: str | None = None
    n_already_forgotten: int = 0
    n_regions_resolved: int = 0
    format_version: int = REPORT_FORMAT_VERSION

    _ADDED_IN_2 = ("n_certified_neighbourhood", "radius", "radius_min", "radius_median", "radius_max",
                   "crown_radius_median", "outer", "within_region", "n_already_forgotten",
                   "n_regions_resolved")
    _ADDED_IN_3 = ("ball_space",)

    # --- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain JSON-able values; non-finite numbers become None."""
        return json_safe(asdict(self))

    def to_json(self, path: str | Path | None = None, indent: int | None = 1) -> str:
        """The JSON text; with ``path``, also writes it atomically."""
        text = json.dumps(self.to_dict(), indent=indent, allow_nan=False)
        if path is not None:
            from ..core.serialization import atomic_write_text

            atomic_write_text(path, text + "\n")
        return text

    @classmethod
    def from_dict(cls, data: dict) -> "Report":
        """Rebuild a report from :meth:`to_dict`'s output; raises FormatError on an unknown version or key."""
        if isinstance(data, dict) and data.get("format_version", REPORT_FORMAT_VERSION) not in READABLE_REPORT_VERSIONS:
            raise FormatError(
                f"Report format_version {data.get('format_version')!r} is not supported (this library reads "
                f"versions {', '.join(map(str, READABLE_REPORT_VERSIONS))}). HINT: upgrade prune-unlearn to read "
                "reports written by a newer version.")
        if isinstance(data, dict) and data.get("format_version") in (1, 2):
            added = cls._ADDED_IN_3 + (cls._ADDED_IN_2 if data.get("format_version") == 1 else ())
            defaults = {f.name: f.default for f in fields(cls) if f.name in added}
            data = {**defaults, **data, "format_version": REPORT_FORMAT_VERSION}
        _check_keys(cls, data, "The report")
        values = dict(data)
        if values["whole_class"] is not None:
            values["whole_class"] = ClassReport.from_dict(values["whole_class"])
        return cls(**values)

    @classmethod
    def from_json(cls, path: str | Path) -> "Report":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise FormatError(f"Cannot read report {path}: {exc}") from None
        return cls.from_dict(data)

    # --- derived ------------------------------------------------------------------------------
    def with_retraining(self, retrain_seconds: float) -> "Report":
        return replace(self, retrain_seconds=float(retrain_seconds),
                       unlearn_retrain_ratio=self.unlearn_seconds / retrain_seconds if retrain_seconds > 0 else None)

    @property
    def mode(self) -> str:
        """``"neighbourhood"`` (certified balls around the points, ``radius``) or ``"region"`` (the paper's linear
        regions: ``radius`` None, as ``forget(radius=None)`` asks and ``"auto"`` falls back to)."""
        return "region" if self.radius is None else "neighbourhood"

    def _radii(self) -> str:
        if self.radius_min is None:
            return "n/a"
        if self.radius_min == self.radius_max:
            return f"{self.radius_min:.6g}"
        return f"min {self.radius_min:.4g}, median {self.radius_median:.4g}, max {self.radius_max:.4g}"

    def summary(self) -> str:
        def pct(v):
            return "   n/a" if v is None else f"{100 * v:6.2f}"

        mode = ("region-only (linear regions)" if self.radius is None else
                f"certified neighbourhoods (radius {self.radius if isinstance(self.radius, str) else f'{self.radius:.6g}'})")
        lines = [
            f"forgot {self.n_forgotten}/{self.n_forget} points ({self.strategy}, bound={self.bound}, {mode}): "
            + (f"{self.n_certified_neighbourhood} certified on a neighbourhood (radius {self._radii()}), "
               if self.n_certified_neighbourhood else "")
            + f"{self.n_certified_region} certified on their linear region, {self.n_certified_point} at the point, "
            f"{self.n_failed} failed",
        ]
        if self.n_already_forgotten:
            lines.append(f"already forgotten: {self.n_already_forgotten} of the points were not predicted as their "
                         "label by the given model before this run")
        lines += [
            "metric        before   after  (%)",
            f"A_tes        {pct(self.A_tes_before)}  {pct(self.A_tes_after)}",
            f"A_res        {pct(self.A_res_before)}  {pct(self.A_res_after)}",
            f"A_u          {pct(self.A_u_before)}  {pct(self.A_u_after)}",
        ]
        if self.changed_tes is not None or self.changed_res is not None:
            lines.append(f"changed predictions: test {self.changed_tes}, remaining {self.changed_res}")
        resolved = f", {self.n_regions_resolved} re-solved" if self.n_regions_resolved else ""
        lines.append(f"patches: {self.n_regions_new} new{resolved}, {self.n_patches_total} total; |d|∞ mean "
                     f"{self.patch_linf_mean:.3g}, max {self.patch_linf_max:.3g}; unlearning {self.unlearn_seconds:.3f} s")
        if self.retrain_seconds is not None:
            lines.append(f"retraining {self.retrain_seconds:.2f} s; unlearning/retraining = "
                         f"{100 * self.unlearn_retrain_ratio:.2f}%")
        return "\n".join(lines)

    def __repr__(self) -> str:
        def num(v):
            return "n/a" if v is None else f"{v:.3f}"

        return (f"Report(n_forget={self.n_forget}, A_u {num(self.A_u_before)}->{num(self.A_u_after)}, "
                f"certified_region={self.n_certified_region}, unlearn_seconds={self.unlearn_seconds:.3f})")


class ForgetResult(NamedTuple):
    """``(model, report, certificate)``: unpack it or use the attributes."""

    model: PatchedModel
    report: Report
    certificate: Certificate
