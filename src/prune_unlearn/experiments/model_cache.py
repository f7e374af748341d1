"""Train once, reuse: a trained model kept in a folder with a JSON that says exactly what it is.

``<folder>/<name>.safetensors`` holds the model (see :mod:`prune_unlearn.core.serialization`, whose own
tensor hash catches a modified file), ``<name>.json`` its architecture spec, recipe, seed, the SHA-256 of
the training data, the model's weight hash, its accuracies and how long training took (threads and
machine load included), and ``<name>.ckpt.pt`` the epoch checkpoint while training runs, so that an
interrupted run resumes where it stopped.

A cached model is reused only when spec, recipe, seed and data hash all match the request; a cache for
anything else is *stale* and is trained again (never reused, and the log says why). A cache whose model
no longer matches its JSON's weight hash was changed after it was written: that is an error, not a
silent retraining, so the change gets looked at (``retrain=True`` replaces it).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .._hashing import model_sha256
from ..core.serialization import atomic_write_text, load, save
from ..errors import FormatError
from ..unlearn.metrics import accuracy, predict
from .training import Recipe, data_fingerprint, train_from_spec

__all__ = ["CachedModel", "cached_training", "CACHE_FORMAT_VERSION", "CACHED_DATASETS", "train_base", "train_without"]

CACHE_FORMAT_VERSION = 1
_MATCH_KEYS = ("architecture", "recipe", "seed", "data_sha256")


@dataclass
class CachedModel:
    """The trained model (eval mode), its JSON record, and whether it came from the cache."""

    model: nn.Module
    info: dict
    reused: bool


def _paths(folder: Path, name: str) -> tuple[Path, Path, Path]:
    return folder / f"{name}.safetensors", folder / f"{name}.json", folder / f"{name}.ckpt.pt"


def _read_record(path: Path) -> dict:
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"The model cache record {path} is unreadable ({exc}). HINT: pass --retrain (retrain=True) "
                          f"to train the model again and replace it.") from None
    if not isinstance(info, dict):
        raise FormatError(f"The model cache record {path} is not a JSON object. HINT: pass --retrain.")
    return info


def _reuse(model_path: Path, json_path: Path, info: dict) -> nn.Module:
    """The cached model, after checking that its weights are the ones its record describes."""
    try:
        model = load(model_path)
    except FormatError as exc:
        raise FormatError(f"The cached model cannot be reused: {exc} HINT: pass --retrain (retrain=True) to train "
                          f"it again.") from None
    digest = model_sha256(model)
    if digest != info.get("model_sha256"):
        raise FormatError(f"The cached model {model_path} has weight hash {digest[:16]}…, but its record {json_path} "
                          f"says {str(info.get('model_sha256'))[:16]}…: one of them was changed after training. "
                          f"HINT: pass --retrain (retrain=True) to train the model again.")
    return model


def cached_training(name: str, spec: dict, recipe: Recipe, X: torch.Tensor, y: torch.Tensor, *,
                    folder: str | os.PathLike, X_test: torch.Tensor | None = None, y_test: torch.Tensor | None = None,
                    retrain: bool = False, progress: bool = False, device: str = "cpu",
                    log: Callable[[str], None] = print, extra: dict | None = None) -> CachedModel:
    """The model ``spec`` trained with ``recipe`` on ``(X, y)``: from ``folder`` when cached there, else trained.

    Training writes an epoch checkpoint beside the model and resumes from it when interrupted and called
    again. ``extra`` (plain JSON values) is stored in the record, e.g. the data set's source.
    """
    folder = Path(folder)
    model_path, json_path, ckpt = _paths(folder, name)
    want = {"architecture": spec, "recipe": recipe.to_dict(), "seed": recipe.seed, "data_sha256": data_fingerprint(X, y)}
    if retrain:
        for p in (ckpt, json_path):
            p.unlink(missing_ok=True)
    elif json_path.is_file() and not model_path.is_file():
        log(f"the model cache record {json_path} has no model beside it: training again")
        json_path.unlink()
    elif json_path.is_file():
        info = _read_record(json_path)
        stale = [k for k in _MATCH_KEYS if info.get(k) != want[k]]
        if not stale:
            model = _reuse(model_path, json_path, info)
            acc = info.get("test_accuracy")  # None for retrainings cached without a test set
            acc_note = f", test accuracy {100 * acc:.2f}%" if isinstance(acc, (int, float)) and acc == acc else ""
            log(f"reusing the cached model {model_path} (trained in {info.get('train_seconds', 0) / 60:.1f} min"
                f"{acc_note})")
            return CachedModel(model, info, True)
        log(f"the cached model {model_path} is stale ({', '.join(stale)} differ from this run): training again")
        json_path.unlink()
    elif model_path.is_file():
        log(f"{model_path} has no record {json_path} beside it, so nothing says what it was trained on: training again")
    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    result = train_from_spec(spec, X, y, recipe, X_val=X_test, y_val=y_test, progress=progress, device=device,
                             checkpoint=ckpt, log=log)
    model = result.model.to("cpu").eval()
    info = {"format_version": CACHE_FORMAT_VERSION, **want, "model_sha256": model_sha256(model),
            "train_seconds": result.total_seconds, "train_seconds_this_call": result.seconds,
            "resumed_from_epoch": result.resumed_from_epoch, "torch_threads": torch.get_num_threads(),
            "device": device, "started": started, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "load_average_before": list(load_before), "load_average_after": list(os.getloadavg()),
            "history": result.history, **(extra or {})}
    if X_test is not None:
        info["test_accuracy"] = accuracy(predict(model, X_test, batch_size=1000), y_test)
    save(model, model_path, info={k: info[k] for k in ("recipe", "seed", "data_sha256") if k in info})
    atomic_write_text(json_path, json.dumps(info, indent=1) + "\n")
    ckpt.unlink(missing_ok=True)
    log(f"trained in {result.total_seconds / 60:.1f} min → {model_path}"
        + (f", test accuracy {100 * info['test_accuracy']:.2f}%" if "test_accuracy" in info else ""))
    return CachedModel(model, info, False)


# Data sets whose base model takes too long to train for every run: trained once, cached, reused.
CACHED_DATASETS = ("cifar10",)


def _cache_folder(cfg, ds, out: Path) -> str | None:
    return cfg.cache_dir or (str(out / "cache") if ds.name in CACHED_DATASETS else None)


def _model_name(spec: dict, recipe) -> str:
    width = f"-w{spec['width']:g}" if "width" in spec else ""
    return f"{spec['kind']}{width}-e{recipe.epochs}-seed{recipe.seed}"


def train_base(cfg, ds, spec: dict, recipe, out: Path, progress: bool, log):
    """The base model of an experiment on ``ds`` (a :class:`~prune_unlearn.experiments.datasets.Dataset`) and its
    training seconds: from the model cache for costly data sets, else trained now.

    ``cfg`` needs ``cache_dir`` and ``retrain_base`` (an :class:`ExperimentConfig`, or any object with them);
    its ``device`` (default "cpu") is where a model that is not cached yet gets trained.
    A cached model's seconds are those measured when it was trained (its JSON record has the machine load)."""
    cache = _cache_folder(cfg, ds, out)
    if cache is None:
        t = time.perf_counter()
        model = train_from_spec(spec, ds.X_train, ds.y_train, recipe, progress=progress).model
        return model, time.perf_counter() - t
    cached = cached_training(_model_name(spec, recipe), spec, recipe, ds.X_train, ds.y_train, folder=cache,
                             X_test=ds.X_test, y_test=ds.y_test, retrain=cfg.retrain_base, progress=progress,
                             device=getattr(cfg, "device", "cpu"), log=log,
                             extra={"dataset": ds.name, "source": ds.source})
    return cached.model, float(cached.info["train_seconds"])


def train_without(cfg, ds, spec: dict, recipe, keep: torch.Tensor, tag: str, out: Path, log):
    """Retraining on the training rows ``keep`` (a mask) and its seconds; cached like the base model for costly
    data sets, under the name ``<model>-without-<tag>``."""
    X_rem, y_rem = ds.X_train[keep], ds.y_train[keep]
    cache = _cache_folder(cfg, ds, out)
    if cache is None:
        t = time.perf_counter()
        model = train_from_spec(spec, X_rem, y_rem, recipe).model
        return model, time.perf_counter() - t
    cached = cached_training(f"{_model_name(spec, recipe)}-without-{tag}", spec, recipe, X_rem, y_rem,
                             folder=cache, retrain=cfg.retrain_base, device=getattr(cfg, "device", "cpu"), log=log,
                             extra={"dataset": ds.name})
    return cached.model, float(cached.info["train_seconds"])
