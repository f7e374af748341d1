"""Baselines by name, so benchmarks and the conformance test can loop over all of them."""

from __future__ import annotations

from ..._validation import param_error
from ...errors import InputValidationError
from .amnesiac import Amnesiac
from .base import UnlearningMethod
from .influence import FU
from .retrain import Retrain
from .sisa import SISA

__all__ = ["create_baseline", "register_baseline", "baseline_names"]

_REGISTRY: dict[str, type[UnlearningMethod]] = {
    "retrain": Retrain,
    "sisa": SISA,
    "amnesiac": Amnesiac,
    "fu": FU,
}


def baseline_names() -> list[str]:
    """Registered names, sorted."""
    return sorted(_REGISTRY)


def create_baseline(name: str, **params) -> UnlearningMethod:
    """A new, unfitted baseline: ``create_baseline("sisa", shards=10)``."""
    if name not in _REGISTRY:
        raise InputValidationError(f"Unknown baseline {name!r}. Known baselines: {', '.join(baseline_names())}.")
    return _REGISTRY[name](**params)


def register_baseline(name: str, cls: type[UnlearningMethod], force: bool = False) -> None:
    """Make ``cls`` available as ``name``; an existing name is only replaced with ``force=True``."""
    if not isinstance(name, str) or not name:
        raise param_error("name", "register_baseline", "a non-empty str", name)
    if not (isinstance(cls, type) and issubclass(cls, UnlearningMethod)):
        raise param_error("cls", "register_baseline", "a subclass of UnlearningMethod", cls)
    if name in _REGISTRY and not force:
        raise InputValidationError(
            f"A baseline named {name!r} is already registered ({_REGISTRY[name].__name__}). "
            f"HINT: pass force=True to replace it."
        )
    _REGISTRY[name] = cls
