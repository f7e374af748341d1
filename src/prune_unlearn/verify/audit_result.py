"""What an audit found: one :class:`Check` per audited claim, collected in an :class:`AuditResult`."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["AuditResult", "Check"]


@dataclass
class Check:
    """One audited claim: ``name`` (check family), ``subject`` (what it is about), pass/fail and why."""

    name: str
    subject: str
    passed: bool
    detail: str = ""


@dataclass
class AuditResult:
    """All checks; ``passed`` only if every one passed. ``summary()`` gives the pass/fail table."""

    checks: list = field(default_factory=list)
    seconds: float = 0.0
    mode: str = "white-box"
    timings: dict = field(default_factory=dict)  # seconds per stage, e.g. "exact bounds", "lp"
    exact_backend: str = ""  # what did the exact rational arithmetic (python-flint or Python integers)
    workers: int = 1  # processes the exact bounds and LPs ran on (1: the calling process)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list:
        return [c for c in self.checks if not c.passed]

    def add(self, name: str, subject: str, passed: bool, detail: str = "") -> None:
        self.checks.append(Check(name, subject, bool(passed), detail))

    def counts(self) -> dict:
        out: dict = {}
        for c in self.checks:
            p, f = out.get(c.name, (0, 0))
            out[c.name] = (p + c.passed, f + (not c.passed))
        return out

    def to_dict(self) -> dict:
        return {"passed": self.passed, "mode": self.mode, "seconds": self.seconds, "timings": self.timings,
                "exact_backend": self.exact_backend,
                "counts": {k: {"passed": p, "failed": f} for k, (p, f) in self.counts().items()},
                "failures": [c.__dict__ for c in self.failures]}

    def summary(self) -> str:
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items())
        lines = [f"audit ({self.mode}) {'PASSED' if self.passed else 'FAILED'} in {self.seconds:.1f} s"
                 + (f" ({stages})" if stages else ""),
                 f"{'check':10s} {'passed':>7s} {'failed':>7s}"]
        for name, (p, f) in self.counts().items():
            lines.append(f"{name:10s} {p:7d} {f:7d}")
        for c in self.failures[:20]:
            lines.append(f"FAIL {c.name} [{c.subject}]: {c.detail}")
        if len(self.failures) > 20:
            lines.append(f"… and {len(self.failures) - 20} more failures")
        return "\n".join(lines)
