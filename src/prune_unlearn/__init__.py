"""prune-unlearn: certified machine unlearning by patch networks (PRUNE).

A trained classifier ``M = M_p ⊕ M_c`` (any prefix, then a Linear/ReLU head) is patched so that
each forgotten point is mispredicted on its whole linear region, while every input outside those
regions keeps exactly the base model's output.

>>> from prune_unlearn import forget, load_dataset           # doctest: +SKIP
>>> patched, report, certificate = forget(model, X_u, labels=y_u)  # doctest: +SKIP
"""

from ._version import __version__

from .verify.certificate import Certificate
from .experiments.datasets import Dataset, load_dataset
from .errors import (
    CertificateError,
    DataError,
    ExportError,
    FormatError,
    InputValidationError,
    LedgerError,
    NotFittedError,
    PruneError,
    UnsupportedModelError,
)
from .unlearn.forget import forget
from .unlearn.folds import fold_references
from .unlearn.reference import Reference
from .unlearn.report import ClassReport, ForgetResult, Report
from .unlearn.whole_class import forget_class
from .verify.audit import AuditResult, audit
from .ops.ledger import Ledger
from .core.models import build_model, default_architecture
from .core.patches import PatchedModel, PatchSet
from .core.serialization import load, load_info, save
from .experiments.training import Recipe, recipe_for, train_from_spec, train_model

__all__ = [
    "forget",
    "forget_class",
    "Reference",
    "fold_references",
    "audit",
    "AuditResult",
    "ForgetResult",
    "Report",
    "ClassReport",
    "Certificate",
    "PatchedModel",
    "PatchSet",
    "save",
    "load",
    "load_info",
    "Ledger",
    "load_dataset",
    "Dataset",
    "build_model",
    "default_architecture",
    "train_model",
    "train_from_spec",
    "recipe_for",
    "Recipe",
    "PruneError",
    "InputValidationError",
    "UnsupportedModelError",
    "DataError",
    "FormatError",
    "CertificateError",
    "LedgerError",
    "ExportError",
    "NotFittedError",
    "__version__",
]
