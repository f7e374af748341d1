"""Task engines: where the shard-training tasks of recorded training and consolidation run.

Every engine has ``map(fn, calls, *, progress=False, desc="")``: ``fn(*call)`` for each call, results in call
order, a progress bar (on stderr) as tasks finish. A task's arguments are plain values and NumPy arrays (the
shard's points); its checkpoints go to the record store, a folder every worker can reach.

* :class:`RayEngine` (``pip install prune-unlearn[ray]``): one Ray task per shard, arrays passed by object
  reference. Without an address it starts a local Ray instance on this machine only (loopback, no dashboard, no
  usage reporting, workers at niceness 0 rather than Ray's default 15) with ``workers`` CPUs, and stops it
  afterwards; with ``address`` it joins that cluster, whose workers need this package and the record store's
  folder.
* :class:`ProcessEngine`: the same tasks in local processes (``concurrent.futures``, spawned, not forked).
* :class:`SerialEngine`: here, one after another (``workers = 1``: "the same work in one process").

Each task sets one torch thread itself (:func:`prune_unlearn.experiments.recorded.deterministic_cpu`).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Callable, Sequence

from .._progress import progress_bar
from ..errors import EngineError

__all__ = ["ENGINES", "SerialEngine", "ProcessEngine", "RayEngine", "make_engine", "ray_available"]

ENGINES = ("auto", "ray", "local")


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


class SerialEngine:
    """Run every task in this process, one after another."""

    name = "serial"
    workers = 1

    def describe(self) -> dict:
        return {"name": self.name, "workers": 1}

    def map(self, fn: Callable, calls: Sequence[tuple], *, progress: bool = False, desc: str = "") -> list:
        return [fn(*call) for call in progress_bar(calls, enabled=progress, desc=desc, unit="task")]

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


class ProcessEngine(SerialEngine):
    """Run tasks in ``workers`` local processes (spawned: a forked torch can deadlock in its thread pools)."""

    name = "local"

    def __init__(self, workers: int):
        self.workers = workers

    def describe(self) -> dict:
        return {"name": self.name, "workers": self.workers}

    def map(self, fn: Callable, calls: Sequence[tuple], *, progress: bool = False, desc: str = "") -> list:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        results: list = [None] * len(calls)
        pool = ProcessPoolExecutor(max_workers=min(self.workers, max(1, len(calls))),
                                   mp_context=multiprocessing.get_context("spawn"), initializer=_one_thread)
        try:
            futures = {pool.submit(fn, *call): k for k, call in enumerate(calls)}
            with progress_bar(total=len(calls), enabled=progress, desc=desc, unit="task") as bar:
                for future in as_completed(futures):
                    try:
                        results[futures[future]] = future.result()
                    except Exception as exc:  # a worker's error, or a worker that died
                        raise EngineError(f"A task failed in a local worker process: {type(exc).__name__}: {exc}. "
                                          "Nothing was committed; run again to resume.") from exc
                    bar.update(1)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)  # do not wait for the other shards to finish
            raise
        pool.shutdown()
        return results


def _import_task_code(n_workers: int) -> int:
    """A warm-up task: import what shard tasks import, and hold the worker long enough for the others to start."""
    import time

    import prune_unlearn.experiments.recorded  # noqa: F401

    time.sleep(0.5 if n_workers > 1 else 0.0)
    return os.getpid()


def _host_port(address: str) -> tuple[str, int]:
    rest = address.split("://", 1)[-1]
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise EngineError(f"The Ray address {address!r} is not host:port (or ray://host:port). HINT: e.g. "
                          "--ray-address 127.0.0.1:6379, or leave it out for a local Ray instance.")
    return host.strip("[]"), int(port)


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise EngineError(f"Cannot reach the Ray cluster at {address} ({exc.strerror or exc}). HINT: start it "
                          "(`ray start --head` on its head node) and check the address, or leave out --ray-address "
                          "to run on a local Ray instance.") from None


class RayEngine(SerialEngine):
    """Run tasks as Ray tasks: on a local instance with ``workers`` CPUs, or on the cluster at ``address``."""

    name = "ray"

    def __init__(self, workers: int | None = None, address: str | None = None):
        try:
            import ray
        except ImportError:
            raise EngineError("Ray is not installed. HINT: pip install 'prune-unlearn[ray]', or use --engine local "
                              "(the same tasks in local processes).") from None
        self.address, self.workers, self._ray, self._started = address, workers, ray, False
        if address is not None:
            _check_reachable(address)
        if ray.is_initialized():  # the caller's instance (e.g. a test's): use it, leave it running
            return
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # never report usage anywhere
        # Ray runs workers at niceness 15 by default: on a busy machine they would get a small share of the CPU
        # next to the caller's own (niceness 0) process. A local instance's workers run at the caller's priority.
        os.environ.setdefault("RAY_worker_niceness", "0")
        src = str(Path(__file__).resolve().parents[2])  # workers import this copy of prune_unlearn
        runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}}
        try:
            if address is None:
                ray.init(num_cpus=workers or os.cpu_count(), include_dashboard=False, _node_ip_address="127.0.0.1",
                         log_to_driver=False, runtime_env=runtime_env)
            else:
                ray.init(address=address, log_to_driver=False)
        except Exception as exc:  # ConnectionError, RuntimeError, TimeoutError… from ray.init
            raise EngineError(f"Ray did not start{' at ' + address if address else ''}: {type(exc).__name__}: "
                              f"{exc}. HINT: use --engine local.") from None
        self._started = True

    def warm_up(self) -> float:
        """Start every worker and import the shard-task code in it now (Ray starts workers lazily, and a torch
        import takes seconds), so that a later timing measures the work; returns the seconds it took."""
        import time

        t0 = time.perf_counter()
        n = max(1, int(self._ray.cluster_resources().get("CPU", 1)))
        remote = self._ray.remote(num_cpus=1, max_retries=0)(_import_task_code)
        self._ray.get([remote.remote(n) for _ in range(n)])
        return time.perf_counter() - t0

    def describe(self) -> dict:
        cpus = int(self._ray.cluster_resources().get("CPU", 0))
        return {"name": self.name, "workers": cpus, "address": self.address or "local"}

    def map(self, fn: Callable, calls: Sequence[tuple], *, progress: bool = False, desc: str = "") -> list:
        import numpy as np

        ray = self._ray
        remote = ray.remote(num_cpus=1, max_retries=0)(fn)
        refs = [remote.remote(*[ray.put(a) if isinstance(a, np.ndarray) else a for a in call]) for call in calls]
        index = {ref: k for k, ref in enumerate(refs)}
        results: list = [None] * len(refs)
        waiting = list(refs)
        with progress_bar(total=len(refs), enabled=progress, desc=desc, unit="task") as bar:
            while waiting:
                ready, waiting = ray.wait(waiting, num_returns=1)
                try:
                    results[index[ready[0]]] = ray.get(ready[0])
                except Exception as exc:  # RayTaskError wraps the task's own exception
                    for ref in waiting:
                        ray.cancel(ref, force=True)
                    raise EngineError(f"A Ray task failed: {exc}. Nothing was committed; run again to resume.") \
                        from None
                bar.update(1)
        return results

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False


def make_engine(name: str = "auto", *, workers: int | None = None, address: str | None = None):
    """The engine called ``name`` (``auto``: Ray if installed, else local processes); ``workers`` tasks at once
    (default: every CPU); ``address``: a Ray cluster to join. One worker without Ray runs here."""
    if name not in ENGINES:
        raise EngineError(f"Unknown engine {name!r}; choose one of {', '.join(ENGINES)}.")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise EngineError(f"The 'workers' parameter must be a positive integer. Got {workers!r} instead.")
    if address is not None and name == "local":
        raise EngineError("--ray-address goes with --engine ray (or auto), not local.")
    if name == "ray" or (name == "auto" and (address is not None or ray_available())):
        return RayEngine(workers, address)
    workers = workers or os.cpu_count() or 1
    return SerialEngine() if workers == 1 else ProcessEngine(workers)
