"""Forgetting: points (Theorem 1 per point, or the paper's Algorithm 1) and whole classes (Algorithm 2).

``forget`` and ``forget_class`` are thin callers: a strategy (:mod:`.point_strategies`,
:mod:`.class_strategy`) turns a problem (:mod:`.problem`) into patch rows (:mod:`.rows`), the
:class:`~prune_unlearn.PatchedModel` adds them, and the certificate is built from them
(:func:`~prune_unlearn.verify.certificate.certificate_for`); :mod:`.report` holds what was measured.
"""

from .forget import forget
from .folds import fold_references
from .reference import Reference
from .report import ClassReport, ForgetResult, Report
from .whole_class import forget_class

__all__ = ["forget", "forget_class", "Reference", "fold_references", "ForgetResult", "Report", "ClassReport"]
