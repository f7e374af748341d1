"""Forgetting: points (Theorem 1 per point, or the paper's Algorithm 1) and whole classes (Algorithm 2)."""

from .forget import ForgetResult, Report, forget
from .whole_class import forget_class

__all__ = ["forget", "forget_class", "ForgetResult", "Report"]
