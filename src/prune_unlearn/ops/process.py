"""Processing: forget every pending request once, in id order, one model commit per batch of requests."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from .._progress import progress_bar
from .._version import __version__
from ..errors import LedgerError, PruneError
from .chain import RequestRow
from .commit import commit_model, exclusive, load_model
from .intake import DataSets, gather
from .results import ProcessResult
from .store import Store
from .verification import verify

__all__ = ["process_pending", "honour"]


def process_pending(store: Store, model_path: Path, *, data, data_dir, batch_size: int, bound: str, epsilon: float,
                    seed: int, domain, base: nn.Module | None, progress: bool,
                    neighbourhood: dict | None = None) -> ProcessResult:
    """:meth:`Ledger.process <prune_unlearn.ops.ledger.Ledger.process>` (its docstring says what it does)."""
    t_start = time.perf_counter()
    with exclusive(store):
        pending = store.rows(status="pending")
        if not pending:
            return ProcessResult([], 0, 0, 0, [], None, None, store.head(), time.perf_counter() - t_start)
        verify(store, strict=True)
        header, model = load_model(store, model_path, base)
        run = _Run(store, model_path, header, model, header["tensors_sha256"], DataSets(data, data_dir),
                   {"bound": bound, "epsilon": epsilon, "seed": seed, "batch_size": batch_size,
                    **({"neighbourhood": neighbourhood} if neighbourhood else {})}, domain)
        chunks = [pending[k:k + batch_size] for k in range(0, len(pending), batch_size)]
        batches = [run.batch(chunk) for chunk in progress_bar(chunks, enabled=progress, desc="process", unit="batch")]
    n_points = sum(b["n_points"] for b in batches)
    n_failed = sum(b["n_failed"] for b in batches)
    return ProcessResult(
        requests=[r.id for r in pending], n_points=n_points, n_forgotten=n_points - n_failed, n_failed=n_failed,
        batches=batches, n_regions=len(run.model.patches), model_sha256=run.before, ledger_head=store.head(),
        seconds=time.perf_counter() - t_start)


@dataclass
class _Run:
    """One ``process`` call: the current model (and its hash) as batch after batch is committed."""

    store: Store
    model_path: Path
    header: dict
    model: nn.Module
    before: str
    datasets: DataSets
    options: dict  # bound, epsilon, seed, batch_size (and neighbourhood options): recorded in every event
    domain: object

    def batch(self, chunk: list[RequestRow]) -> dict:
        """Forget the requests of ``chunk`` on the current model and commit the result as one event."""
        from ..unlearn.forget import forget

        t0 = time.perf_counter()
        X, y, spans, ds_domain = gather(chunk, self.datasets, self.model)
        try:
            result = forget(self.model, X, labels=y, bound=self.options["bound"], epsilon=self.options["epsilon"],
                            seed=self.options["seed"], domain=self.domain if self.domain is not None else ds_domain,
                            **self.options.get("neighbourhood", {}))
        except PruneError as exc:
            raise LedgerError(f"Forgetting requests {chunk[0].id}–{chunk[-1].id} failed (earlier batches were "
                              f"committed): {exc}") from None
        honoured = honour(result.certificate, spans)
        body = {"requests": honoured, "model_before": self.before, "n_regions": len(result.model.patches),
                "options": self.options, "library_version": __version__}
        event = commit_model(self.store, "process", body, result.model, self.model_path, self.header)
        self.model, self.before = result.model, event.body["model_after"]
        return {"event": event.id, "requests": [r.id for r in chunk], "n_points": len(X),
                "n_failed": sum(len(h["failed"]) for h in honoured), "seconds": time.perf_counter() - t0}


def honour(certificate, spans: list[tuple[int, int, int]]) -> list[dict]:
    """Per request: the patterns of the regions covering its points, a claim per point, its failed points."""
    pattern = [r["pattern_sha256"] for r in certificate.regions]
    balls = ["ball:" + e["support_box_sha256"] for e in getattr(certificate, "neighbourhoods", None) or []]

    def key(c):  # neighbourhood rows are keyed by their support box, region rows by their pattern
        return balls[c["neighbourhood"]] if c.get("proved") == "neighbourhood" else pattern[c["region"]]

    claims = {c["index"]: c for c in certificate.claims}
    failed: dict[int, list] = {}
    for f in certificate.failed:
        failed.setdefault(f["index"], []).append(f)
    out = []
    for request_id, lo, hi in spans:
        mine = [claims[i] for i in range(lo, hi) if i in claims]
        out.append({
            "id": request_id,
            "patterns": sorted({key(c) for c in mine}),
            "claims": [{"point_sha256": c["point_sha256"], "label": c["label"], "target": c["target"],
                        "pattern_sha256": key(c), "proved": c["proved"], "margin": c["margin"],
                        **({"radius": c["radius"]} if c.get("proved") == "neighbourhood" else {})}
                       for c in mine],
            "failed": [{"point_sha256": f["point_sha256"], "label": f["label"], "reason": f["reason"]}
                       for i in range(lo, hi) for f in failed.get(i, [])],
        })
    return out
