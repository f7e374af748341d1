"""Evidence: the certificate a run writes, the independent audit that re-checks it, and verifier export."""

from .audit import AuditResult, audit
from .certificate import Certificate

__all__ = ["Certificate", "audit", "AuditResult"]
