"""Processing: forget every pending request once, in id order, one model commit per batch of requests.

A malformed request never blocks the others. Before a batch is forgotten, each request is screened
(:func:`.intake.screen`): one whose points cannot be read now (its data set or file is missing or changed) is
*skipped* and stays pending; one that can never be forgotten on this model (labels, input shape or domain box)
is *rejected* with the reason, in a hash-chained ``reject`` event. If ``forget`` still refuses a batch's input,
the batch is split in halves until the request it refuses is alone, and that request is rejected with
``forget``'s message; the other halves are committed as usual.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .._progress import progress_bar
from .._validation import check_choice, check_positive_float, check_seed
from .._version import __version__
from ..errors import InputValidationError, LedgerError, PruneError
from ..unlearn.neighbourhood import DEFAULT_RADIUS
from .chain import RequestRow
from .commit import commit_model, exclusive, load_model
from .intake import DataSets, screen
from .reject import reject_requests
from .results import ProcessResult
from .store import Store
from .verification import verify

__all__ = ["process_pending", "honour"]


def _check_options(bound: str, epsilon: float, seed: int) -> None:
    """``forget``'s own checks of the options, up front: a bad option must not read as a bad request."""
    from ..core.confusion import BOUND_METHODS

    check_choice("bound", "Ledger.process", bound, BOUND_METHODS)
    check_positive_float("epsilon", "Ledger.process", epsilon)
    check_seed("Ledger.process", seed)


def _check_neighbourhood(options: dict | None, width: float) -> None:
    """The neighbourhood radii checked against the requests' domain before ``forget`` runs, so that a bad option
    is an error of the call and never reads as a request whose points ``forget`` refused."""
    from ..unlearn.neighbourhood import check_radius

    if (options or {}).get("ball_space") == "features":
        return  # radii in feature units: forget checks them against the head's domain box
    for name in ("radius", "min_radius", "max_radius"):
        value = (options or {}).get(name)
        if value is not None:
            check_radius(value, "Ledger.process", width, name=name)


def process_pending(store: Store, model_path: Path, *, data, data_dir, batch_size: int, bound: str, epsilon: float,
                    seed: int, domain, base: nn.Module | None, progress: bool,
                    neighbourhood: dict | None = None) -> ProcessResult:
    """:meth:`Ledger.process <prune_unlearn.ops.ledger.Ledger.process>` (its docstring says what it does)."""
    t_start = time.perf_counter()
    _check_options(bound, epsilon, seed)
    with exclusive(store):
        pending = store.rows(status="pending")
        if not pending:
            return ProcessResult([], 0, 0, 0, [], None, None, store.head(), time.perf_counter() - t_start)
        verify(store, strict=True)
        header, model = load_model(store, model_path, base)
        # recorded in every event: the neighbourhood options always (the default "auto" too), so that a replay
        # (consolidate) uses what ran; events without them were processed region-only
        run = _Run(store, model_path, header, model, header["tensors_sha256"], DataSets(data, data_dir),
                   {"bound": bound, "epsilon": epsilon, "seed": seed, "batch_size": batch_size,
                    "neighbourhood": neighbourhood or {"radius": DEFAULT_RADIUS}}, domain)
        chunks = [pending[k:k + batch_size] for k in range(0, len(pending), batch_size)]
        batches = [run.batch(chunk) for chunk in progress_bar(chunks, enabled=progress, desc="process", unit="batch")]
    done = [rid for b in batches for rid in b["requests"]]
    n_points = sum(b["n_points"] for b in batches)
    n_failed = sum(b["n_failed"] for b in batches)
    return ProcessResult(
        requests=done, n_points=n_points, n_forgotten=n_points - n_failed, n_failed=n_failed, batches=batches,
        n_regions=len(run.model.patches) if hasattr(run.model, "patches") else 0, model_sha256=run.before,
        ledger_head=store.head(), seconds=time.perf_counter() - t_start,
        skipped=[s for b in batches for s in b["skipped"]], rejected=[r for b in batches for r in b["rejected"]])


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
        """Screen the requests of ``chunk``, reject those that can never be forgotten, and forget the others on
        the current model (one commit per group of requests sharing a domain box and input shape)."""
        t0 = time.perf_counter()
        screened = screen(chunk, self.datasets, self.model, self.domain)
        rejected = list(screened.rejected)
        groups: dict[str, list] = {}
        for item in screened.ready:
            key = json.dumps([list(item[1].shape[1:]), [_plain(b) for b in item[3]]])
            groups.setdefault(key, []).append(item)
        events = []
        for group in groups.values():
            events += self._forget(group, rejected)
        if rejected:
            reject_requests(self.store, rejected, by="process")
        done = [rid for e in events for rid in e["requests"]]
        return {"events": [e["event"] for e in events], "requests": done,
                "n_points": sum(e["n_points"] for e in events), "n_failed": sum(e["n_failed"] for e in events),
                "skipped": screened.skipped, "rejected": rejected, "seconds": time.perf_counter() - t0}

    def _forget(self, group: list, rejected: list) -> list[dict]:
        """Forget ``group`` and commit it; if ``forget`` refuses the input, halve the group until the refused
        request is alone, and add it to ``rejected``."""
        from ..unlearn.forget import forget

        X = torch.cat([x for _, x, _, _ in group])
        y = torch.cat([labels for _, _, labels, _ in group])
        lower, upper = (torch.as_tensor(b, dtype=torch.float64) for b in group[0][3])
        _check_neighbourhood(self.options.get("neighbourhood"), float((upper - lower).max()))
        try:
            result = forget(self.model, X, labels=y, bound=self.options["bound"], epsilon=self.options["epsilon"],
                            seed=self.options["seed"], domain=(lower, upper),
                            **self.options.get("neighbourhood", {}))
        except InputValidationError as exc:  # about the points: find the request it is about
            if len(group) == 1:
                rejected.append({"id": group[0][0].id, "reason": f"forget refused its points: {exc}"})
                return []
            half = len(group) // 2
            return self._forget(group[:half], rejected) + self._forget(group[half:], rejected)
        except PruneError as exc:  # about the model: no request is to blame
            raise LedgerError(f"Forgetting requests {group[0][0].id}–{group[-1][0].id} failed (earlier batches were "
                              f"committed): {exc}") from None
        spans, start = [], 0
        for row, x, _, _ in group:
            spans.append((row.id, start, start + len(x)))
            start += len(x)
        honoured = honour(result.certificate, spans)
        body = {"requests": honoured, "model_before": self.before, "n_regions": len(result.model.patches),
                "options": self.options, "library_version": __version__}
        event = commit_model(self.store, "process", body, result.model, self.model_path, self.header)
        self.model, self.before = result.model, event.body["model_after"]
        return [{"event": event.id, "requests": [row.id for row, _, _, _ in group], "n_points": len(X),
                 "n_failed": sum(len(h["failed"]) for h in honoured)}]


def _plain(bound) -> float | list:
    return bound if isinstance(bound, (int, float)) else torch.as_tensor(bound, dtype=torch.float64).tolist()


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
