"""Undo: remove the patched regions only one request needs, as one model commit."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from .._hashing import pattern_sha256
from ..errors import LedgerError
from .commit import commit_model, exclusive, load_model
from .results import Request, UndoResult
from .store import Store
from .verification import verify

__all__ = ["undo_request", "ball_row_keys"]


def ball_row_keys(rows) -> list[str]:
    """Ledger keys of neighbourhood rows: ``ball:`` + the SHA-256 of the support box (as in the certificate)."""
    return ["ball:" + hashlib.sha256(torch.cat([rows.lower[k], rows.upper[k]]).detach().cpu().contiguous().numpy()
                                     .tobytes()).hexdigest() for k in range(len(rows))]


def undo_request(store: Store, request_id: int, model_path: Path, *, base: nn.Module | None) -> UndoResult:
    """:meth:`Ledger.undo <prune_unlearn.ops.ledger.Ledger.undo>` (its docstring says what it does)."""
    from ..core.patches import PatchedModel

    with exclusive(store):
        verify(store, strict=True)
        request = Request.from_row(store.row(request_id))
        if request.status != "processed":
            hint = {"pending": "it has no patches yet (it is forgotten by the next `prune ledger process`)",
                    "consolidated": f"the model was retrained without its points (event {request.consolidated_event}); "
                                    "add its points to the training data and retrain to take them back"
                    }.get(request.status, f"it was undone by event {request.undone_event}")
            raise LedgerError(f"Request {request.id} is {request.status}: only a processed request can be undone; "
                              f"{hint}.")
        header, model = load_model(store, model_path, base)
        if not isinstance(model, PatchedModel):
            raise LedgerError(f"The model {model_path} has no patches, yet request {request.id} is processed.")
        live = {p for row in store.rows(status="processed") if row.id != request.id
                for p in Request.from_row(row).patterns}
        mine = set(request.patterns)
        ps = model.patches
        row_patterns = [pattern_sha256(ps.patterns[r]) for r in range(len(ps))]
        keep = torch.tensor([p not in mine or p in live for p in row_patterns], dtype=torch.bool)
        patched = model.select_point_rows(keep).eval()
        removed = sorted(p for p, k in zip(row_patterns, keep.tolist()) if not k)
        if model.neighbourhoods is not None:  # neighbourhood rows, keyed by their support box
            ball_keys = ball_row_keys(model.neighbourhoods)
            keep_b = torch.tensor([p not in mine or p in live for p in ball_keys], dtype=torch.bool)
            patched = patched.select_neighbourhood_rows(keep_b).eval()
            removed = sorted(removed + [p for p, k in zip(ball_keys, keep_b.tolist()) if not k])
        body = {"request": request.id, "removed_patterns": removed, "kept_patterns": sorted(mine & live),
                "model_before": header["tensors_sha256"], "n_regions": len(patched.patches)}
        if patched.neighbourhoods is not None:
            body["n_neighbourhoods"] = len(patched.neighbourhoods)
        event = commit_model(store, "undo", body, patched, model_path, header)
    return UndoResult(request=request.id, event=event.id, removed_patterns=removed,
                      kept_patterns=sorted(mine & live), n_regions=len(patched.patches),
                      model_sha256=event.body["model_after"], ledger_head=store.head())
