"""Worlds: one model trained, then one set of points withdrawn, for every method; cached on disk.

The target and every shadow model are *worlds*: a training set (rows of a pool = training set
followed by test set), the rows to withdraw, and a seed. :func:`run_world` trains (or reloads) each
method's model, withdraws the rows and records the log-probabilities and predictions of the models
before and after on named *probe* sets of pool rows. Only these outputs are kept (plus the plain
model's weights, so that a method added later does not retrain it).

Cache layout: ``<cache_dir>/<world>/plain.safetensors`` and ``<cache_dir>/<world>/<method>.safetensors``.
Each file stores its full key (data hash, architecture, recipe with seed, rows, probes, method
parameters, a hash of the code the result depends on, package version). A file whose key matches is
reused; one whose key differs is *stale*: the runner says so, names what changed, recomputes it and
overwrites it. Nothing is reused silently.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..._version import __version__
from ...core.models import build_model
from ..training import Recipe, train_from_spec
from .methods import TrainingSet, Unlearner, model_before
from .population import log_probabilities

__all__ = ["World", "Pool", "run_world", "run_worlds", "code_fingerprint", "array_sha256", "FORMAT"]

FORMAT = 1
_PLAIN_CODE = ("prune_unlearn.experiments.training", "prune_unlearn.core.models")


def array_sha256(a) -> str:
    a = np.ascontiguousarray(a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a))
    return hashlib.sha256(f"{a.dtype}|{a.shape}|".encode() + a.tobytes()).hexdigest()


@functools.lru_cache(maxsize=64)
def code_fingerprint(modules: tuple) -> str:
    """sha256 of the source files of ``modules`` (a package counts with every ``.py`` file below it)."""
    h = hashlib.sha256()
    for name in sorted(modules):
        mod = importlib.import_module(name)
        path = Path(mod.__file__)
        files = sorted(path.parent.rglob("*.py")) if path.name == "__init__.py" else [path]
        for f in files:
            h.update(f"{name}:{f.relative_to(path.parent).as_posix()}\n".encode())
            h.update(f.read_bytes())
    return h.hexdigest()


@dataclass
class Pool:
    """Every point a world can train on or be probed on: the training set, then the test set."""

    X: torch.Tensor
    y: torch.Tensor
    spec: dict
    domain: tuple
    sha256: str          # of the data set's tensors
    dataset: str


@dataclass
class World:
    """``rows``: pool indices, in training order; ``forget``: positions in ``rows``; ``probes``: name → pool rows;
    ``held_out``: pool rows no world trains on and no attack uses (a method may calibrate on them), or None."""

    name: str
    rows: np.ndarray
    forget: np.ndarray
    recipe: Recipe
    probes: dict
    held_out: np.ndarray | None = None


def _canonical(key: dict) -> dict:
    """The key as it reads back from JSON (tuples become lists), so that equal keys compare equal."""
    return json.loads(json.dumps(key, sort_keys=True))


class _Cache:
    def __init__(self, root: Path | None, log, refresh: bool):
        self.root, self.log, self.refresh = root, log, refresh

    def load(self, path: Path, key: dict):
        if self.root is None or self.refresh or not path.exists():
            return None
        key = _canonical(key)
        try:
            from safetensors import safe_open

            with safe_open(str(path), "pt") as fh:
                meta = fh.metadata() or {}
            stored = json.loads(meta.get("key", "{}"))
        except Exception as exc:  # noqa: BLE001 - an unreadable cache file is recomputed, and said so
            self.log(f"  cache: {path} is unreadable ({type(exc).__name__}: {exc}); recomputing it")
            return None
        if stored != key:
            changed = sorted(k for k in set(stored) | set(key) if stored.get(k) != key.get(k))
            self.log(f"  cache: {path} is stale (changed: {', '.join(changed)}); recomputing and overwriting it")
            return None
        return load_file(str(path)), json.loads(meta.get("info", "{}"))

    def save(self, path: Path, key: dict, tensors: dict, info: dict) -> None:
        if self.root is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        meta = {"key": json.dumps(_canonical(key), sort_keys=True), "info": json.dumps(info, sort_keys=True)}
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
        os.replace(tmp, path)


def _world_key(pool: Pool, world: World) -> dict:
    return {"format": FORMAT, "prune_unlearn": __version__, "dataset": pool.dataset, "data_sha256": pool.sha256,
            "spec": pool.spec, "recipe": world.recipe.to_dict(), "domain": list(pool.domain),
            "rows_sha256": array_sha256(world.rows), "forget_sha256": array_sha256(world.forget),
            "code_sha256": code_fingerprint(_PLAIN_CODE)}


class _Plain:
    """The world's plain model: loaded from the cache, taken from a method whose training is the plain
    training (``Unlearner.plain_from_train``), or trained, at most once per world."""

    def __init__(self, pool: Pool, world: World, data: TrainingSet, cache: _Cache, log):
        self.pool, self.world, self.data, self.cache, self.log = pool, world, data, cache, log
        self.key = {**_world_key(pool, world), "kind": "plain"}
        self.path = (cache.root / world.name / "plain.safetensors") if cache.root else None
        self.model = None

    def cached(self) -> bool:
        if self.model is None and self.path is not None:
            hit = self.cache.load(self.path, self.key)
            if hit is not None:
                self.model = build_model(self.pool.spec)
                self.model.load_state_dict(hit[0])
                self.model.eval()
        return self.model is not None

    def adopt(self, model, times: dict) -> None:
        self.model = copy.deepcopy(model).eval()
        if self.path is not None:
            self.cache.save(self.path, self.key, dict(self.model.state_dict()), times)

    def get(self) -> tuple:
        """A private copy of the plain model, and the times of training it now (empty if it was not trained now)."""
        times: dict = {}
        if self.cached():
            return copy.deepcopy(self.model), times
        with _timed(times, "plain_train"):
            model = train_from_spec(self.pool.spec, self.data.X, self.data.y, self.data.recipe).model
        self.adopt(model, times)
        self.log(f"  {self.world.name}: plain model trained in {times['plain_train_seconds']:.1f} s")
        return copy.deepcopy(self.model), times


@contextlib.contextmanager
def _timed(info: dict, what: str):
    """Record wall and CPU seconds (``<what>_seconds``, ``<what>_cpu_seconds``): on a loaded machine the wall
    time of one single-threaded worker says little, its CPU time about what an idle core would take."""
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    info[f"{what}_seconds"] = time.perf_counter() - wall
    info[f"{what}_cpu_seconds"] = time.process_time() - cpu


def _record(model, pool: Pool, probes: dict, prefix: str) -> dict:
    out = {}
    for name, rows in probes.items():
        X = pool.X[torch.as_tensor(rows)]
        logp = torch.from_numpy(log_probabilities(model, X))
        out[f"{prefix}logp/{name}"] = logp.float()
        with torch.no_grad():
            out[f"{prefix}pred/{name}"] = model(X).argmax(1).to(torch.int32)
    return out


def run_world(world: World, methods: list[Unlearner], pool: Pool, *, cache_dir: Path | None = None,
              refresh: bool = False, log=print) -> dict:
    """Outputs of every method in ``world``: ``{method: (tensors, info)}`` with tensors named
    ``before_logp/<probe>``, ``after_logp/<probe>``, ``before_pred/<probe>``, ``after_pred/<probe>``."""
    cache = _Cache(cache_dir, log, refresh)
    rows = torch.as_tensor(world.rows)
    forget = torch.as_tensor(world.forget, dtype=torch.int64)
    held = None if world.held_out is None else torch.as_tensor(world.held_out)
    data = TrainingSet(pool.X[rows], pool.y[rows], pool.spec, world.recipe, pool.domain, forget,
                       None if held is None else (pool.X[held], pool.y[held]))
    base_key = _world_key(pool, world)
    if world.held_out is not None:  # a method's outputs may depend on it; the plain model's do not
        base_key = {**base_key, "held_out_sha256": array_sha256(world.held_out)}
    probes_key = {name: array_sha256(r) for name, r in world.probes.items()}
    plain = _Plain(pool, world, data, cache, log)
    results = {}
    # a method whose training *is* the plain training runs first, so that its model serves the others
    for method in sorted(methods, key=lambda m: not m.plain_from_train):
        code = code_fingerprint(tuple(method.code)) if method.code else None
        key = {**base_key, "kind": "method", "method": method.name, "params": dict(method.params),
               "method_code_sha256": code, "probes": probes_key}
        path = (cache.root / world.name / f"{method.name}.safetensors") if cache.root else None
        hit = cache.load(path, key) if path else None
        if hit is not None:
            results[method.name] = hit
            continue
        info: dict = {}
        if method.train is None:
            trained, info = plain.get()
        elif method.extends_plain:  # e.g. K-fold references next to the (cached) plain model
            model, info = plain.get()
            with _timed(info, "train"):
                trained = method.train(data, model)
        else:
            with _timed(info, "train"):
                trained = method.train(data)
            if method.plain_from_train and not plain.cached():
                plain.adopt(model_before(trained), info)
        tensors = _record(model_before(trained), pool, world.probes, "before_")
        with _timed(info, "unlearn"):
            after = method.unlearn(trained, forget, data)
        tensors.update(_record(after, pool, world.probes, "after_"))
        if path:
            cache.save(path, key, tensors, info)
        log(f"  {world.name}: {method.name} " + ", ".join(f"{k} {v:.1f}" for k, v in info.items()))
        results[method.name] = (tensors, info)
    return {m.name: results[m.name] for m in methods}


# Worker processes are forked, so that they inherit the data and the registered methods (including ones
# registered at run time); each sets its torch threads before touching a tensor, as DataLoader workers do.
_SHARED: dict = {}


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


def _worker_task(i: int):
    s = _SHARED
    world = s["worlds"][i]
    return world.name, run_world(world, s["methods"], s["pool"], cache_dir=s["cache_dir"], refresh=s["refresh"],
                                 log=s["log"])


def run_worlds(worlds: list[World], methods: list[Unlearner], pool: Pool, *, cache_dir: Path | None = None,
               refresh: bool = False, workers: int = 1, threads: int | None = None, log=print) -> dict:
    """:func:`run_world` for every world, in ``workers`` forked processes of ``threads`` torch threads each
    (``workers=1``: in this process). Returns ``{world name: run_world's result}``."""
    start = time.perf_counter()
    done = {}
    # Hash the code once, here, before any world runs (and before workers fork): a source file edited during
    # a long run must not label results computed by the code already loaded.
    for modules in [_PLAIN_CODE] + [tuple(m.code) for m in methods if m.code]:
        code_fingerprint(modules)

    def progress(name):
        log(f"[{pool.dataset}] {name} done ({len(done)}/{len(worlds)} worlds, "
            f"{(time.perf_counter() - start) / 60:.1f} min)")

    import multiprocessing

    if workers > 1 and "fork" not in multiprocessing.get_all_start_methods():
        log("  workers > 1 needs the 'fork' start method, which this platform lacks; running the worlds in turn")
        workers = 1
    if workers <= 1 or len(worlds) == 1:
        before = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            for world in worlds:
                done[world.name] = run_world(world, methods, pool, cache_dir=cache_dir, refresh=refresh, log=log)
                progress(world.name)
        finally:
            torch.set_num_threads(before)
        return done
    from concurrent.futures import ProcessPoolExecutor, as_completed

    _SHARED.update(worlds=worlds, methods=methods, pool=pool, cache_dir=cache_dir, refresh=refresh, log=log)
    ex = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=_worker_init,
                             initargs=(threads or 1,))
    try:
        for fut in as_completed([ex.submit(_worker_task, i) for i in range(len(worlds))]):
            name, result = fut.result()
            done[name] = result
            progress(name)
    except BaseException:
        ex.shutdown(wait=False, cancel_futures=True)  # a failed world stops the run; do not train the rest
        raise
    finally:
        ex.shutdown()
        _SHARED.clear()
    return {w.name: done[w.name] for w in worlds}
