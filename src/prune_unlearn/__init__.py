"""prune-unlearn: certified machine unlearning by patch networks (PRUNE).

A trained classifier ``M = M_p ⊕ M_c`` (any prefix, then a Linear/ReLU head) is patched so that
each forgotten point is mispredicted on its whole linear region, while every input outside those
regions keeps exactly the base model's output.

>>> from prune_unlearn import forget, load_dataset           # doctest: +SKIP
>>> patched, report, certificate = forget(model, X_u, labels=y_u)  # doctest: +SKIP
"""

__version__ = "0.1.0"

from .certificate import Certificate
from .data import Dataset, load_dataset
from .errors import (
    CertificateError,
    DataError,
    FormatError,
    InputValidationError,
    LedgerError,
    NotFittedError,
    PruneError,
    UnsupportedModelError,
)
from .forget import ForgetResult, Report, forget
from .whole_class import forget_class
from .audit import AuditResult, audit
from .ledger import Ledger
from .models import build_model
from .patches import PatchedModel, PatchSet
from .serialization import load, load_info, save
from .training import Recipe, train_model

__all__ = [
    "forget",
    "forget_class",
    "audit",
    "AuditResult",
    "ForgetResult",
    "Report",
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
    "train_model",
    "Recipe",
    "PruneError",
    "InputValidationError",
    "UnsupportedModelError",
    "DataError",
    "FormatError",
    "CertificateError",
    "LedgerError",
    "NotFittedError",
    "__version__",
]
