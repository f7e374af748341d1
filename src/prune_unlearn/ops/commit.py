"""Model commits: one model-changing writer at a time, and model file and ledger both old or both new.

Model and ledger are tied together: each model-changing event (``process``, ``undo``) records the model's
tensor hash before and after (``tensors_sha256`` of the file header), and the model file's header
``info["ledger"]`` holds that event's id and ``entry_hash``.

Crash safety: after a kill -9 at any instant, model file and ledger are both old or both new
---------------------------------------------------------------------------------------------
Model-changing work holds an exclusive lock on ``<ledger>.lock`` (:func:`writer_lock`; the file exists only while
the lock is held) and commits each change in three steps (:func:`commit_model`):

1. in one SQLite write transaction: build the event, write the new model to ``<model>.pending`` (temp file,
   fsync, rename, fsync folder) with the event's hash in its header, insert the event with
   ``state='committing'`` and update the requests; COMMIT (durable, see :mod:`.store`);
2. ``os.replace(<model>.pending, <model>)``, fsync the folder;
3. mark the event ``state='done'``.

Recovery (:func:`recover`) runs before every model change and when a ledger is opened while no writer holds
the lock. For a ``committing`` event: the model file already holds the new model → mark done (roll forward);
the ``.pending`` file holds it → rename it over the model, mark done (roll forward); the model file still
holds the old model and the event is the last one → delete the event and restore the requests (roll back).
A crash before the COMMIT leaves no event (SQLite rolls the transaction back) and at most a stray
``.pending`` file, which the next model change deletes (:func:`load_model`).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from torch import nn

from .._crash import CRASH_ENV, crash_point as _crash_point
from ..core.patches import model_state_sha256
from ..errors import FormatError, LedgerError
from .chain import MODEL_EVENTS, Event, now
from .store import Store

__all__ = [
    "CRASH_ENV", "CRASH_POINTS", "lock_path", "pending_path", "writer_lock", "exclusive", "recover",
    "recover_if_idle", "load_model", "commit_model", "model_problems",
]

# Test hook: PRUNE_LEDGER_CRASH_AT=<point> kills the process (SIGKILL) at that step of a model commit.
CRASH_POINTS = ("after_pending_write", "after_ledger_commit", "after_rename")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def lock_path(ledger_path: Path) -> Path:
    return ledger_path.with_name(ledger_path.name + ".lock")


def pending_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.name + ".pending")


def _file_model_sha256(path: Path) -> str | None:
    """The tensors hash of a saved model, or ``None`` if there is no readable, intact model there."""
    from ..core.serialization import load_info

    try:
        return load_info(path)["tensors_sha256"] if path.is_file() else None
    except FormatError:
        return None


# --- one writer at a time ---------------------------------------------------------------------------------


@contextlib.contextmanager
def writer_lock(path: Path, blocking: bool = True):
    """One model-changing writer at a time; the OS drops the lock when its holder dies (even on kill -9).

    Yields whether the lock is held (always, when ``blocking``). The lock file exists only while it is held: the
    holder deletes it before unlocking, and a process that locked a file someone deleted meanwhile locks the new
    one instead (so two writers never hold locks on different files). A kill -9 leaves the file, unlocked; the
    next writer takes it and deletes it."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): one writer at a time is up to the caller
        yield True
        return
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            yield False
            return
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder before us deleted this file: lock the one at the path now
    try:
        yield True
    finally:
        try:
            os.unlink(path)
        finally:
            os.close(fd)  # closing drops the lock


@contextlib.contextmanager
def exclusive(store: Store):
    """Hold the writer lock, with any interrupted commit finished or rolled back first (or refused)."""
    with writer_lock(lock_path(store.path)):
        recover(store, strict=True)
        yield


def recover_if_idle(store: Store) -> None:
    """On opening: recover an interrupted commit, unless a live writer holds the lock (it is finishing it)."""
    if store.has_committing():
        with writer_lock(lock_path(store.path), blocking=False) as locked:
            if locked:
                recover(store, strict=False)


def recover(store: Store, strict: bool) -> None:
    """Finish or roll back model commits interrupted by a crash (see the module docstring).

    One that can be neither raises :class:`LedgerError` with ``strict``, else stays ``committing``."""
    for event in store.events(state="committing"):
        model = Path(event.body["model_file"])
        pending = pending_path(model)
        after = event.body["model_after"]
        found = _file_model_sha256(model)
        if found != after and _file_model_sha256(pending) == after:
            os.replace(pending, model)
            _fsync_dir(model.parent)
            found = after
        if found == after:
            store.mark_done(event.id)
        elif found == event.body["model_before"] and event.id == store.last_event_id():
            store.remove_event(event.id)
        elif strict:
            raise LedgerError(
                f"Event {event.id} ({event.kind}) was interrupted and can be neither finished nor rolled back: "
                f"{model} holds neither the model before it nor the one after it, and {pending} does not hold "
                "the new model. HINT: put back the model file this ledger last wrote, then run again.")
        else:
            continue
        if pending.exists():
            pending.unlink()


# --- the model file ---------------------------------------------------------------------------------------


def load_model(store: Store, model_path: Path, base: nn.Module | None):
    """The model file the ledger last wrote, and its header (call under the writer lock, after verify)."""
    from ..core.serialization import load, load_info

    events = store.events(kinds=MODEL_EVENTS)
    pending = pending_path(model_path)
    if pending.exists():  # left by a crash before its event was committed
        pending.unlink()
    header = load_info(model_path)
    if events and header["tensors_sha256"] != events[-1].body["model_after"]:
        raise LedgerError(_mismatch_message(model_path, header["tensors_sha256"], events[-1]) + ".")
    return header, load(model_path, base=base)


def commit_model(store: Store, kind: str, body: dict, model: nn.Module, model_path: Path, header: dict) -> Event:
    """Write ``model`` over ``model_path`` and append a ``kind`` event with ``body``, both or neither.

    ``header`` is the current file's (its ``info`` and ``architecture`` carry over); the body gains
    ``model_file`` and ``model_after``. Call under the writer lock."""
    from ..core.serialization import save

    pending = pending_path(model_path)
    body = {**body, "model_file": str(model_path.resolve()), "model_after": model_state_sha256(model)}
    with store.transaction():
        (event,) = store.next_events([(kind, body)], now())
        info = {**(header.get("info") or {}), "ledger": {"event": event.id, "entry_hash": event.entry_hash}}
        save(model, pending, info=info, architecture=header.get("architecture"))
        if _file_model_sha256(pending) != body["model_after"]:
            raise LedgerError(f"Internal error: the model written to {pending} does not hash to what the ledger "
                              "would record; nothing was changed.")
        _crash_point("after_pending_write")
        store.insert([event], state="committing")
    _crash_point("after_ledger_commit")
    os.replace(pending, model_path)
    _fsync_dir(model_path.resolve().parent)
    _crash_point("after_rename")
    store.mark_done(event.id)
    return event


def model_problems(model_path: Path, events: list[Event]) -> list[str]:
    """Why ``model_path`` is not the file the last model event of ``events`` wrote (empty if it is)."""
    from ..core.serialization import load_info

    try:
        header = load_info(model_path)
    except FormatError as exc:
        return [f"model: {exc}"]
    tag = (header.get("info") or {}).get("ledger")
    last = next((e for e in reversed(events) if e.kind in MODEL_EVENTS), None)
    if last is None:
        return [f"the model {model_path} names ledger event {tag.get('event')}, but this ledger has never "
                "written a model"] if tag else []
    if header["tensors_sha256"] != last.body["model_after"]:
        return [_mismatch_message(model_path, header["tensors_sha256"], last)]
    if not isinstance(tag, dict) or tag.get("event") != last.id or tag.get("entry_hash") != last.entry_hash:
        return [f"the model {model_path} has the tensors of event {last.id}, but its header names ledger entry "
                f"{tag!r}, not event {last.id} ({last.entry_hash})"]
    return []


def _mismatch_message(model_path: Path, found: str | None, last: Event) -> str:
    return (f"the model file {model_path} does not match the ledger: its tensors hash to "
            f"{(found or 'nothing')[:12]}…, but the ledger's last model event ({last.id}, {last.kind}) wrote "
            f"{last.body['model_after'][:12]}… to {last.body['model_file']}. HINT: pass the model file written "
            "by the last `prune ledger process` / `prune ledger undo` of this ledger")
