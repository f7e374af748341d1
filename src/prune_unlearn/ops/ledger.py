"""The request ledger: withdrawal requests arrive over time, are forgotten once, and can be listed or undone.

A ledger is one SQLite file (:mod:`.store`) with two tables: ``events``, append-only and hash-chained
(:mod:`.chain`: every change is an event, ``add``, ``process``, ``undo`` or ``reject``), and ``requests``, the current
state of every request, a cache of the events that :meth:`Ledger.verify` replays and compares.
A request names its points by training-set index of a data set or by a file (:mod:`.intake`); the ledger
keeps their hashes and labels, never the points. Model-changing work (:mod:`.process`, :mod:`.undo`,
:mod:`.consolidate`) runs under a writer lock and commits model file and event together, so that a crash leaves
both old or both new (:mod:`.commit`). :class:`Ledger` is the one public front of these modules.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from typing import Any, Iterable, Mapping

from torch import nn

from .._validation import check_positive_int
from ..errors import LedgerError
from .chain import STATUSES, now
from .commit import CRASH_ENV, CRASH_POINTS, recover_if_idle
from .consolidate import CONSOLIDATE_CRASH_POINTS, consolidate
from .intake import DataSets, describe, read_points_file
from .process import process_pending
from .reject import reject_request
from .replay import replay
from .results import ConsolidateResult, ProcessResult, ReplayResult, Request, UndoResult, VerifyResult
from .store import DEFAULT_LEDGER_PATH, Store
from .undo import undo_request
from .verification import verify

__all__ = [
    "Ledger", "Request", "ProcessResult", "UndoResult", "VerifyResult", "ConsolidateResult", "ReplayResult",
    "read_points_file", "STATUSES", "DEFAULT_LEDGER_PATH", "CRASH_ENV", "CRASH_POINTS", "CONSOLIDATE_CRASH_POINTS",
]


class Ledger:
    """Withdrawal requests and the patches that honoured each, in a hash-chained SQLite file.

    Requests are added at any time (``pending``), forgotten in batches by :meth:`process` (``processed``:
    the ledger records which patched regions honour each), and can be undone (``undone``: their regions
    leave the model unless another live request needs them). A pending request can be rejected with a reason
    (:meth:`reject`; ``process`` rejects those it can never forget), so it never blocks the others. For a model
    from recorded training, :meth:`consolidate` retrains without the processed requests' points and retires
    their patches (``consolidated``); :meth:`replay` checks that retraining bit for bit. The file is created by
    the first write: opening a ledger that does not exist reads it as empty.

    Examples
    --------
    >>> with Ledger("requests.sqlite") as ledger:                    # doctest: +SKIP
    ...     ledger.add("alice@example.org", indices=[3, 17], data="digits")
    ...     ledger.process("model.safetensors", data="digits")
    ...     ledger.undo(1, "model.safetensors")
    ...     assert ledger.verify("model.safetensors").ok

    Notes
    -----
    The model file is rewritten in place; keep only the copy the ledger last wrote (``verify`` with the
    model path, or any ``process``/``undo``, refuses another). The chain detects edits of any row but not
    the removal of trailing rows on its own: the model header (which names the last model event) and the
    requests table catch those that matter.
    """

    def __init__(self, path: str | os.PathLike = DEFAULT_LEDGER_PATH):
        self.path = Path(path)
        self._store = Store(self.path)
        recover_if_idle(self._store)

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        try:
            counts = self._store.status_counts()
        except sqlite3.ProgrammingError:  # closed
            return f"Ledger({str(self.path)!r}, closed)"
        return f"Ledger({str(self.path)!r}, " + ", ".join(f"{s}={counts.get(s, 0)}" for s in STATUSES) + ")"

    # --- reading -------------------------------------------------------------------------------------

    @property
    def head(self) -> str:
        """``entry_hash`` of the last event (64 zeros for an empty ledger)."""
        return self._store.head()

    def events(self) -> list[dict]:
        """Every event, oldest first, with its parsed body."""
        return [e._asdict() for e in self._store.events()]

    def requests(self, *, status: str | None = None, requester: str | None = None) -> list[Request]:
        """Requests in id order, optionally only those with a status and/or from a requester."""
        if status is not None and status not in STATUSES:
            raise LedgerError(f"The 'status' parameter of Ledger.requests must be one of {', '.join(STATUSES)}. "
                              f"Got {status!r} instead.")
        return [Request.from_row(r) for r in self._store.rows(status=status, requester=requester)]

    def get(self, request_id: int) -> Request:
        return Request.from_row(self._store.row(request_id))

    def verify(self, model_path: str | os.PathLike | None = None, *, strict: bool = False) -> VerifyResult:
        """Recompute the hash chain, replay it against the requests table, and check the model file.

        Reports the first event whose chain link or contents do not hold, any request whose row differs
        from what the events say, and (with ``model_path``) a model file that is not the one the last
        ``process``/``undo`` wrote. With ``strict=True`` a failed check raises :class:`LedgerError`.
        """
        return verify(self._store, model_path, strict=strict)

    # --- writing -------------------------------------------------------------------------------------

    def add(self, requester: str, *, indices=None, points_file=None, labels_file=None, sha256: str | None = None,
            data=None, data_dir=None, model=None, domain=None) -> Request:
        """Record a pending withdrawal request.

        Parameters
        ----------
        requester : str
            Who asked (name, e-mail, ticket id).
        indices : sequence of int, optional
            Training-set indices of the points, in ``data``.
        points_file : path, optional
            ``.npy`` (float array, one point per row) or ``.safetensors`` (``X``, optionally ``y``).
        labels_file : path, optional
            ``.npy`` of integer labels for ``points_file``. Default: ``y`` of the file, else the training
            labels found in ``data`` by point hash, else the base model's prediction when processed.
        sha256 : str, optional
            Refuse ``points_file`` unless it has this SHA-256.
        data : str or Dataset, optional
            The data set (name or object); needed with ``indices``.
        model : path or nn.Module, optional
            The model the request is for: its points must fit it and its labels be below its number of outputs.
        domain : (lower, upper), optional
            The domain box the points must lie in (default: the data set's, else [0, 1]); recorded with the
            request, which ``process`` forgets in that box.

        Everything ``process`` will check is checked here, before anything is written (points finite and
        inside the box; input shape and labels against the data set and/or the model: labels need one of
        them), and a refused request leaves no ledger file behind.
        """
        return self.add_many([{"requester": requester, "indices": indices, "points_file": points_file,
                               "labels_file": labels_file, "sha256": sha256}], data=data, data_dir=data_dir,
                             model=model, domain=domain)[0]

    def add_many(self, requests: Iterable[Mapping[str, Any]], *, data=None, data_dir=None, model=None,
                 domain=None) -> list[Request]:
        """Record many requests (dicts with :meth:`add`'s keywords) in one transaction: all or none."""
        datasets = DataSets(data, data_dir)
        if model is not None and not isinstance(model, nn.Module):
            from ..core.serialization import load_model

            model = load_model(model)
        specs = [{k: v for k, v in spec.items() if v is not None} for spec in requests]
        records = [describe(spec, datasets, model, domain) for spec in specs]
        if not records:
            return []
        created = now()
        with self._store.transaction():
            first = self._store.next_request_id()
            items = [("add", {"request": {"id": first + k, "created_at": created, **rec}})
                     for k, rec in enumerate(records)]
            self._store.insert(self._store.next_events(items, created))
        return [Request.from_row(r) for r in self._store.rows_from(first, len(records))]

    def process(self, model_path: str | os.PathLike, *, data=None, data_dir=None, batch_size: int = 1000,
                bound: str = "box", epsilon: float = 0.05, seed: int = 0, domain=None, base: nn.Module | None = None,
                progress: bool = False, neighbourhood: dict | None = None) -> ProcessResult:
        """Forget every pending request once, in id order, ``batch_size`` requests per batch.

        Each batch calls :func:`prune_unlearn.forget` on the current patched model (a region that already has
        a patch is re-solved, never patched twice), rewrites ``model_path`` and appends one ``process`` event
        recording, per request, the patched regions that cover its points and a claim per point. With nothing
        pending it changes nothing. ``data`` (name or Dataset) supplies index requests' points (default: each
        request's data set, loaded by name); ``domain`` defaults to that data set's box, else [0, 1].
        ``bound``, ``epsilon`` and ``seed`` are passed to ``forget``; ``base`` to :func:`prune_unlearn.load`.
        ``neighbourhood``: keyword arguments of ``forget``'s certified neighbourhoods (``radius``, ``min_radius``,
        ``max_radius``, ``outer``, ``within_region``, ``ball_space``); default: forget's (``radius="auto"``, a certified ball of
        12/255 of the domain's narrowest side), ``{"radius": None}`` for region-only. Neighbourhood rows are keyed
        by their support box's hash.
        """
        batch_size = check_positive_int("batch_size", "Ledger.process", batch_size)
        return process_pending(self._store, Path(model_path), data=data, data_dir=data_dir, batch_size=batch_size,
                               bound=bound, epsilon=epsilon, seed=seed, domain=domain, base=base, progress=progress,
                               neighbourhood=neighbourhood)

    def undo(self, request_id: int, model_path: str | os.PathLike, *, base: nn.Module | None = None) -> UndoResult:
        """Remove the patched regions that only this request needs, and mark it ``undone``.

        Regions that also cover points of another live (processed, not undone) request stay patched: their
        claims still need them. Elsewhere the model's outputs are the base model's again, bit for bit.
        """
        return undo_request(self._store, request_id, Path(model_path), base=base)

    def consolidate(self, model_path: str | os.PathLike, *, engine: str = "auto", workers: int | None = None,
                    ray_address: str | None = None, record=None, data=None, data_dir=None, batch_size: int = 1000,
                    bound: str = "box", epsilon: float = 0.05, seed: int = 0, domain=None,
                    base: nn.Module | None = None, progress: bool = False,
                    neighbourhood: dict | None = None) -> ConsolidateResult:
        """Retrain without every processed request's points, replace the model, and retire their patches.

        The model must come from recorded training (:func:`prune_unlearn.experiments.recorded.train_recorded`;
        its header names the training record, ``record`` overrides the record store's folder). Every request
        ``processed`` when the call starts is consolidated: its points (by hash) leave the data manifest; each
        SISA shard that held one retrains from its first affected slice (the whole model when unsharded), one
        task per shard on ``engine`` (``ray``: a local Ray instance with ``workers`` CPUs, or the cluster at
        ``ray_address``; ``local``: local processes; ``auto``: Ray if installed; or an engine object from
        :mod:`prune_unlearn.ops.engine`). The ledger stays usable while
        the model retrains; requests processed meanwhile are patched again on the new model (``batch_size``,
        ``bound``, ``epsilon``, ``seed``, ``domain`` and ``neighbourhood`` as in :meth:`process`). One ``consolidate`` event records
        the old and new model and training record, the new data manifest's hash, the requests, the engine and
        the time taken. A killed consolidation leaves model and ledger as they were; running it again resumes
        the retraining where it stopped. With nothing processed it changes nothing.
        """
        from .engine import make_engine

        batch_size = check_positive_int("batch_size", "Ledger.consolidate", batch_size)
        if isinstance(engine, str):
            make = lambda: make_engine(engine, workers=workers, address=ray_address)  # noqa: E731
        else:  # an engine object (anything with map(fn, calls, progress=, desc=) and describe()); caller closes it
            make = lambda: contextlib.nullcontext(engine)  # noqa: E731
        options = {"bound": bound, "epsilon": epsilon, "seed": seed, "batch_size": batch_size,
                   "neighbourhood": neighbourhood or {"radius": "auto"}}
        return consolidate(self._store, Path(model_path), engine_factory=make, record_root=record, data=data,
                           data_dir=data_dir, options=options, domain=domain, base=base, progress=progress)

    def replay(self, shards: Iterable[int], model_path: str | os.PathLike | None = None, *, record=None, data=None,
               data_dir=None, base: nn.Module | None = None) -> ReplayResult:
        """Retrain ``shards`` from the recorded manifest and recipe and check every checkpoint is byte-identical.

        The record is the one the model file names (with ``model_path``, which is verified against the ledger
        too), else the one the last consolidation recorded. Also checks that no consolidated request's point
        is left in the data manifest and that the recorded checkpoints aggregate to the model. Writes nothing.
        """
        return replay(self._store, model_path, [int(k) for k in shards], record_root=record, data=data,
                      data_dir=data_dir, base=base)

    def reject(self, request_id: int, reason: str) -> Request:
        """Reject a pending request for ``reason`` (a hash-chained ``reject`` event); it is never processed.

        For a request withdrawn by its requester, a duplicate, or one that cannot be honoured. Waits for a
        running ``process`` to finish. Only pending requests can be rejected (undo a processed one)."""
        return reject_request(self._store, request_id, reason)
