"""Small ``check_*`` helpers shared by the public functions.

Messages follow one template: what was expected of which parameter of which function, what was
given, and a hint where one helps.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np
import torch

from .errors import InputValidationError


def param_error(name: str, caller: str, constraint: str, value: Any, hint: str | None = None) -> InputValidationError:
    msg = f"The {name!r} parameter of {caller} must be {constraint}. Got {value!r} instead."
    if hint:
        msg += f" HINT: {hint}"
    return InputValidationError(msg)


def check_choice(name: str, caller: str, value: Any, options: Iterable[str]) -> str:
    options = tuple(options)
    if value not in options:
        raise param_error(name, caller, "one of " + ", ".join(repr(o) for o in options), value)
    return value


def check_positive_float(name: str, caller: str, value: Any, *, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise param_error(name, caller, f"a float in {'[0' if allow_zero else '(0'}, inf)", value)
    return float(value)


def check_fraction(name: str, caller: str, value: Any) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1
    if not ok:
        raise param_error(name, caller, "a float in (0, 1]", value)
    return float(value)


def check_positive_int(name: str, caller: str, value: Any, *, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise param_error(name, caller, "a positive integer" + (" or None" if allow_none else ""), value)
    return int(value)


def check_seed(caller: str, seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise param_error("seed", caller, "a non-negative integer", seed)
    return int(seed)


def as_float_tensor(x: Any, name: str, caller: str) -> torch.Tensor:
    """Return ``x`` as a float32 tensor, refusing NaN/inf and empty input."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise param_error(name, caller, "a torch.Tensor or numpy array", type(x).__name__)
    if not (x.is_floating_point() or x.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)):
        raise param_error(name, caller, "a real-valued tensor", str(x.dtype))
    if x.numel() == 0 or x.dim() == 0:
        raise param_error(name, caller, "a non-empty batch of inputs (first dimension = points)", tuple(x.shape))
    x = x.detach().to(torch.float32)
    # float32 values summed in float64 cannot overflow: the sum is finite exactly when every value is
    if torch.isfinite(x.sum(dtype=torch.float64)):
        return x
    bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
    if bad.any():
        rows = bad.nonzero().flatten()[:5].tolist()
        raise InputValidationError(
            f"The {name!r} parameter of {caller} contains NaN or inf values (rows {rows}"
            f"{' …' if int(bad.sum()) > 5 else ''}). HINT: clean or drop those inputs first."
        )
    return x


def check_input_shape(x: torch.Tensor, expected: tuple[int, ...] | None, name: str, caller: str) -> None:
    if expected is not None and tuple(x.shape[1:]) != tuple(expected):
        raise InputValidationError(
            f"The {name!r} parameter of {caller} must have shape (n, {', '.join(map(str, expected))}); "
            f"got {tuple(x.shape)}. HINT: inputs must be shaped exactly as the model was trained on."
        )


def as_label_tensor(y: Any, n: int, num_classes: int, name: str, caller: str) -> torch.Tensor:
    if isinstance(y, np.ndarray):
        y = torch.from_numpy(np.ascontiguousarray(y))
    elif isinstance(y, (list, tuple)):
        y = torch.tensor(y)
    if not isinstance(y, torch.Tensor):
        raise param_error(name, caller, "a 1-D tensor or array of integer labels", type(y).__name__)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        # refused even when the values are whole: float labels are usually a mix-up (inputs or probabilities
        # passed as labels), and a silent cast would hide it
        raise param_error(name, caller, "integer class labels (an integer dtype)", f"a {y.dtype} tensor",
                          hint=f"pass {name}.long() if these really are class numbers.")
    y = y.reshape(-1).to(torch.int64)
    if y.numel() != n:
        raise InputValidationError(
            f"Found inputs with inconsistent numbers of samples: {n} points but {y.numel()} {name}."
        )
    if n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        bad = y[(y < 0) | (y >= num_classes)][:5].tolist()
        raise InputValidationError(
            f"The {name!r} parameter of {caller} must hold labels in [0, {num_classes - 1}] "
            f"(the model has {num_classes} outputs). Got {bad}."
        )
    return y


def check_in_box(x: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, name: str, caller: str, what: str) -> None:
    """Refuse points outside the domain box (the certificate only speaks about the box)."""
    tol = 1e-6 * (1 + torch.maximum(lower.abs(), upper.abs()))
    flat = x.reshape(x.shape[0], -1)
    if x.shape[0] and flat.shape[1]:
        # per coordinate, the smallest and largest value decide (converted after the reduction: a float32 → float64
        # conversion is exact and keeps the order), without a float64 copy of the whole batch
        col_min, col_max = flat.amin(dim=0).to(lower.dtype), flat.amax(dim=0).to(lower.dtype)
        if not bool(((col_min < lower - tol) | (col_max > upper + tol)).any()) and not bool(torch.isnan(col_min).any()):
            return
    flat = flat.to(lower.dtype)
    outside = ((flat < lower - tol) | (flat > upper + tol)).any(dim=1)
    if outside.any():
        rows = outside.nonzero().flatten()[:5].tolist()
        lo, hi = float(flat.min()), float(flat.max())
        raise InputValidationError(
            f"The {name!r} parameter of {caller} has points outside the {what} (rows {rows}; values span "
            f"[{lo:.4g}, {hi:.4g}]). HINT: scale inputs the way the model was trained (e.g. pixels to [0, 1]) "
            f"or pass a domain box that contains them."
        )
