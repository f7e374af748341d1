"""Every exception and warning that prune_unlearn raises, in one place.

The tree is small on purpose: catch :class:`PruneError` for anything the library refuses to do.
Subclasses also derive from the builtin a caller would naturally catch (``ValueError``), so generic
handlers keep working.
"""

from __future__ import annotations

__all__ = [
    "PruneError",
    "InputValidationError",
    "UnsupportedModelError",
    "DataError",
    "FormatError",
    "CertificateError",
    "LedgerError",
    "ExportError",
    "EngineError",
    "NotFittedError",
    "LooseBoundWarning",
    "UncertifiedWarning",
]


class PruneError(Exception):
    """Base class: prune_unlearn refused or failed to do what was asked."""


class InputValidationError(PruneError, ValueError):
    """A parameter or input tensor is malformed (shape, dtype, NaN/inf, range, domain box)."""


class UnsupportedModelError(PruneError, ValueError):
    """The model cannot be split into ``M_p ⊕ M_c`` with a Linear/ReLU head, or its forward is not ``head(prefix(x))``."""


class DataError(PruneError, ValueError):
    """A data set is unknown, or its files are missing or malformed."""


class FormatError(PruneError, ValueError):
    """A saved model, report or certificate file is malformed, of an unknown version, or fails its integrity check."""


class CertificateError(PruneError):
    """An audit rejected one or more claims of a certificate (raised by ``audit(..., strict=True)``)."""


class LedgerError(PruneError):
    """The request ledger is inconsistent, tampered with, or was asked for something impossible."""


class ExportError(PruneError, RuntimeError):
    """The exporter produced a graph outside the verifier normal form (or the ONNX tools are missing)."""


class EngineError(PruneError, RuntimeError):
    """A task engine (Ray, local processes) cannot be used: not installed, unreachable, or a task failed."""


class NotFittedError(PruneError, ValueError, AttributeError):
    """A baseline was used before ``fit``."""


class LooseBoundWarning(UserWarning):
    """Done, but a bound was looser than it could have been (e.g. an optimiser stopped early)."""


class UncertifiedWarning(UserWarning):
    """Done, but some requested points were not forgotten; ``report.failed`` (and the certificate's
    ``failed`` list) say which and why. Raised by ``forget`` and ``forget_class`` when ``n_failed > 0``."""
