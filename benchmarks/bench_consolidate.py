"""Consolidation benchmark (issue 13): MNIST, FC(256×256), S = 8 shards × 4 slices, 500 processed requests.

Stages (each writes its numbers into ``<out>/consolidate-<data>.json`` as it finishes):

1. recorded training, unsharded (S = R = 1, the recipe's batch 64) and sharded (S × R, batch
   ``--shard-batch-size`` 16: a shard's model then takes as many SGD steps as the unsharded one; the last
   ``--shard-anneal-epochs`` 2 epochs of each slice at lr/10; on local Ray with ``--workers`` workers);
2. 500 random single-point requests added and processed (patched, certified) on the sharded model;
3. the same consolidation twice, from copies of the same ledger, model and record store: on local Ray with
   ``--workers`` workers (while it retrains, 50 more requests are added and processed, so that they must be
   patched again on the new model), and in this one process (serial engine); wall-time ratio from this run;
4. checks: both runs give the same training record; every consolidated point's patch is gone; the re-patched
   requests' points are mispredicted with region claims; ``Ledger.replay`` of one shard is byte-identical;
   test accuracy of the consolidated model vs the unsharded model (trained on all the data, and retrained
   without the 500 points);
5. ``--requests N`` (10,000): N more single-point requests through add → process (batches of 1000) →
   consolidate (Ray) → verify.

    PRUNE_DATA_DIR=/work/shared/data python benchmarks/bench_consolidate.py --out results/consolidate

Torch runs one intra-op thread everywhere (recorded training forces it; the driver sets it too).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import time
from pathlib import Path

import torch

from prune_unlearn import Ledger, load, load_dataset, save
from prune_unlearn.core.models import default_architecture
from prune_unlearn.core.patches import PatchedModel
from prune_unlearn.experiments.recorded import train_recorded
from prune_unlearn.experiments.training import recipe_for
from prune_unlearn.ops.engine import SerialEngine, make_engine


def load_average() -> list[float]:
    return [round(v, 1) for v in os.getloadavg()]


def accuracy(model, ds) -> float:
    with torch.no_grad():
        return float((model(ds.X_test).argmax(1) == ds.y_test).float().mean())


class Recorder:
    def __init__(self, path: Path, meta: dict):
        self.path, self.data = path, {"meta": meta}

    def __call__(self, key: str, value) -> None:
        self.data[key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=1))
        print(f"[{time.strftime('%H:%M:%S')}] {key}: {json.dumps(value)[:400]}", flush=True)


class ProcessingMeanwhile:
    """Wraps an engine: before the shard tasks run, add and process ``late`` requests (a second ledger handle)."""

    def __init__(self, engine, ledger_path: Path, model_path: Path, late: list[int], data):
        self.engine, self.ledger_path, self.model_path = engine, ledger_path, model_path
        self.late, self.data = late, data
        self.seconds = 0.0  # spent processing the late requests (taken out of the retraining time)

    def describe(self):
        return self.engine.describe()

    def map(self, fn, calls, **kwargs):
        t = time.perf_counter()
        with Ledger(self.ledger_path) as other:
            other.add_many([{"requester": f"late{i}", "indices": [i]} for i in self.late], data=self.data)
            other.process(self.model_path, data=self.data)
        self.seconds = time.perf_counter() - t
        return self.engine.map(fn, calls, **kwargs)


def train_stage(ds, args, work: Path, rec: Recorder):
    spec = default_architecture(ds.name, ds.input_dim, ds.num_classes)
    recipe = recipe_for(ds.name, seed=args.seed, epochs=args.epochs)
    t = time.perf_counter()
    unsharded = train_recorded(ds, spec, recipe, work / "record-unsharded")
    save(unsharded.model, work / "unsharded.safetensors", info={"training_record": unsharded.info()})
    rec("train_unsharded", {"seconds": time.perf_counter() - t, "test_accuracy": accuracy(unsharded.model, ds),
                            "recipe": recipe.to_dict(),
                            "engine": "serial", "load_after": load_average()})
    # a shard holds 1/S of the data: smaller batches give its model as many SGD steps as the unsharded one's
    # and the last --shard-anneal-epochs of every slice at lr/10 (the final iterate of constant-lr SGD is noisy)
    shard_recipe = dataclasses.replace(recipe, batch_size=args.shard_batch_size or recipe.batch_size,
                                       anneal_epochs=args.shard_anneal_epochs)
    with make_engine("ray", workers=args.workers) as engine:
        t = time.perf_counter()
        sharded = train_recorded(ds, spec, shard_recipe, work / "record", shards=args.shards, slices=args.slices,
                                 engine=engine)
        described = engine.describe()
    save(sharded.model, work / "base.safetensors", info={"training_record": sharded.info()})
    rec("train_sharded", {"seconds": time.perf_counter() - t, "test_accuracy": accuracy(sharded.model, ds),
                          "recipe": shard_recipe.to_dict(),
                          "engine": described, "epochs_per_slice": sharded.record.epochs_per_slice,
                          "hidden": sharded.model.prune_architecture["hidden"], "load_after": load_average()})


def copy_world(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for name in ("ledger.sqlite", "model.safetensors"):
        shutil.copy2(src / name, dst / name)
    shutil.copytree(src / "record", dst / "record")
    # the model header names its record store: point it at the copy (a header edit, same tensors)
    from prune_unlearn import load_info

    header = load_info(dst / "model.safetensors")
    info = header["info"]
    info["training_record"]["root"] = str((dst / "record").resolve())
    model = load(dst / "model.safetensors")
    save(model, dst / "model.safetensors", info=info, architecture=header["architecture"])


def request_order(ds, args) -> list[int]:
    """Training points in the order requests name them: independent of the shard partition (seed + 1000)."""
    return torch.randperm(len(ds.y_train), generator=torch.Generator().manual_seed(args.seed + 1000)).tolist()


def consolidation_stage(ds, args, work: Path, rec: Recorder):
    perm = request_order(ds, args)
    requests, late = perm[:args.consolidate], perm[args.consolidate:args.consolidate + 50]
    prep = work / "prepared"
    if prep.exists():
        shutil.rmtree(prep)
    prep.mkdir()
    shutil.copytree(work / "record", prep / "record")
    base = load(work / "base.safetensors")
    from prune_unlearn import load_info

    info = load_info(work / "base.safetensors")["info"]
    info["training_record"]["root"] = str((prep / "record").resolve())
    save(base, prep / "model.safetensors", info=info)
    with Ledger(prep / "ledger.sqlite") as ledger:
        ledger.add_many([{"requester": f"user{i}", "indices": [i]} for i in requests], data=ds)
        t = time.perf_counter()
        processed = ledger.process(prep / "model.safetensors", data=ds)
    rec("process", {"requests": len(requests), "seconds": time.perf_counter() - t, "n_failed": processed.n_failed,
                    "n_regions": processed.n_regions, "load_after": load_average()})

    runs, late_s, startups = {}, {"ray": 0.0, "serial": 0.0}, {}
    for name in ("ray", "serial"):
        world = work / f"run-{name}"
        copy_world(prep, world)
        with contextlib.ExitStack() as stack:
            t_start = time.perf_counter()
            if name == "ray":
                engine = stack.enter_context(make_engine("ray", workers=args.workers))
                engine.warm_up()  # Ray starts workers lazily: start them, import torch there, then time the work
                engine = ProcessingMeanwhile(engine, world / "ledger.sqlite", world / "model.safetensors", late, ds)
            else:
                engine = SerialEngine()
            startup = startups[name] = time.perf_counter() - t_start
            load_before = load_average()
            t = time.perf_counter()
            with Ledger(world / "ledger.sqlite") as ledger:
                result = ledger.consolidate(world / "model.safetensors", engine=engine, data=ds)
            wall = time.perf_counter() - t
            late_s[name] = engine.seconds if name == "ray" else 0.0
        runs[name] = result
        rec(f"consolidate_{name}", {"wall_seconds": wall, "engine_startup_seconds": startup,
                                    "retrain_seconds": result.retrain_seconds - late_s[name],
                                    "late_requests_processed_seconds": late_s[name],
                                    "engine": result.engine, "shards_retrained": result.shards_retrained,
                                    "tasks": result.tasks,
                                    "task_cpu_seconds": sum(t["cpu_seconds"] for t in result.tasks),
                                    "session_cpu_share": sum(t["cpu_seconds"] for t in result.tasks)
                                    / (result.retrain_seconds - late_s[name]),
                                    "slices_retrained": result.slices_retrained, "requests": len(result.requests),
                                    "repatched": len(result.repatched), "points_removed": result.n_points_removed,
                                    "record_after": result.record_after, "load_before": load_before,
                                    "load_after": load_average()})
    serial = runs["serial"].retrain_seconds
    rec("ratio_ray_over_serial", {
        "retrain": (runs["ray"].retrain_seconds - late_s["ray"]) / serial,
        "retrain_with_engine_startup": (runs["ray"].retrain_seconds - late_s["ray"] + startups["ray"]) / serial,
        "same_record": runs["ray"].record_after == runs["serial"].record_after})
    check_stage(ds, args, work / "run-ray", requests, late, rec)


def check_stage(ds, args, world: Path, requests, late, rec: Recorder):
    model = load(world / "model.safetensors")
    consolidated_X = ds.X_train[torch.tensor(requests)]
    region, _ = model.covering_region(consolidated_X) if isinstance(model, PatchedModel) else (None, None)
    with Ledger(world / "ledger.sqlite") as ledger:
        live = ledger.requests(status="processed")
        statuses = [r.status for r in ledger.requests()]
        verified = ledger.verify(world / "model.safetensors").ok
        t = time.perf_counter()
        replay = ledger.replay([args.replay_shard], world / "model.safetensors", data=ds)
        replay_seconds = time.perf_counter() - t
    with torch.no_grad():
        late_pred = model(ds.X_train[torch.tensor([r.indices[0] for r in live])]).argmax(1).tolist()
    claims = [r.claims[0] for r in live]
    rec("checks", {
        "consolidated": statuses.count("consolidated"), "processed": statuses.count("processed"),
        "consolidated_points_under_a_patch": int((region >= 0).sum()) if region is not None else 0,
        "repatched_region_claims": sum(c["proved"] == "region" for c in claims),
        "repatched_mispredicted": sum(p == c["target"] != c["label"] for p, c in zip(late_pred, claims)),
        "ledger_verify_ok": verified, "replay": replay.to_dict(), "replay_seconds": replay_seconds,
        "test_accuracy_consolidated": accuracy(model.base if isinstance(model, PatchedModel) else model, ds)})


def unsharded_retrain_stage(ds, args, work: Path, rec: Recorder):
    """The unsharded model consolidated the same way (the whole model retrains): the accuracy reference."""
    requests = request_order(ds, args)[:args.consolidate]
    world = work / "unsharded-run"
    if world.exists():
        shutil.rmtree(world)
    with Ledger(world / "ledger.sqlite") as ledger:
        ledger.add_many([{"requester": f"user{i}", "indices": [i]} for i in requests], data=ds)
        shutil.copy2(work / "unsharded.safetensors", world / "model.safetensors")
        ledger.process(world / "model.safetensors", data=ds)
        t = time.perf_counter()
        result = ledger.consolidate(world / "model.safetensors", engine=SerialEngine(), data=ds)
    rec("consolidate_unsharded", {"wall_seconds": time.perf_counter() - t, "shards_retrained": result.shards_retrained,
                                  "test_accuracy": accuracy(load(world / "model.safetensors"), ds),
                                  "load_after": load_average()})


def many_requests_stage(ds, args, work: Path, rec: Recorder):
    world = work / "run-ray"
    with Ledger(world / "ledger.sqlite") as ledger:
        used = {i for r in ledger.requests() for i in r.indices}
        fresh = [i for i in request_order(ds, args) if i not in used][:args.requests]
        t = time.perf_counter()
        ledger.add_many([{"requester": f"bulk{i % 97}", "indices": [i]} for i in fresh], data=ds)
        t_add = time.perf_counter() - t
        t = time.perf_counter()
        processed = ledger.process(world / "model.safetensors", data=ds, batch_size=1000)
        t_process = time.perf_counter() - t
        with make_engine("ray", workers=args.workers) as engine:
            t = time.perf_counter()
            result = ledger.consolidate(world / "model.safetensors", engine=engine, data=ds)
            t_consolidate = time.perf_counter() - t
        t = time.perf_counter()
        verified = ledger.verify(world / "model.safetensors")
        t_verify = time.perf_counter() - t
        statuses = [r.status for r in ledger.requests()]
    model = load(world / "model.safetensors")
    rec("many_requests", {
        "requests": len(fresh), "add_seconds": t_add, "process_seconds": t_process,
        "process_failed": processed.n_failed, "consolidate_seconds": t_consolidate,
        "consolidated": len(result.requests), "shards_retrained": result.shards_retrained,
        "verify_seconds": t_verify, "verify_ok": verified.ok, "statuses": {s: statuses.count(s) for s in set(statuses)},
        "test_accuracy": accuracy(model.base if isinstance(model, PatchedModel) else model, ds),
        "load_after": load_average()})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", type=Path, default=Path("results/consolidate"))
    p.add_argument("--work", type=Path, default=Path("/tmp/prune-bench-consolidate"))
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--slices", type=int, default=4)
    p.add_argument("--epochs", type=int, default=None, help="Override the recipe's epochs.")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--shard-batch-size", type=int, default=16,
                   help="Batch size of the sharded run (default 16; the unsharded run keeps the recipe's 64).")
    p.add_argument("--shard-anneal-epochs", type=int, default=2,
                   help="Epochs at lr/10 at the end of every slice of the sharded run (default 2).")
    p.add_argument("--consolidate", type=int, default=500)
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--replay-shard", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stages", default="train,consolidate,unsharded,many")
    args = p.parse_args()
    torch.set_num_threads(1)
    ds = load_dataset(args.data, args.data_dir)
    args.work.mkdir(parents=True, exist_ok=True)
    out = args.out / f"consolidate-{args.data}.json"
    autogroup = Path("/proc/sys/kernel/sched_autogroup_enabled")  # CPU shared per session, not per process
    meta = {"args": {k: str(v) for k, v in vars(args).items()}, "torch": torch.__version__, "threads": 1,
            "sched_autogroup": autogroup.read_text().strip() if autogroup.exists() else None,
            "cpus": os.cpu_count(), "platform": platform.platform(), "load_at_start": load_average()}
    rec = Recorder(out, meta)
    if out.exists():  # stages not run again keep their numbers; the meta of earlier runs is kept too
        earlier = json.loads(out.read_text())
        rec.data.update({k: v for k, v in earlier.items() if k not in ("meta", "earlier_meta")})
        rec.data["earlier_meta"] = [*earlier.get("earlier_meta", []), earlier["meta"]]
    stages = args.stages.split(",")
    for name, fn in (("train", train_stage), ("consolidate", consolidation_stage),
                     ("unsharded", unsharded_retrain_stage), ("many", many_requests_stage)):
        if name in stages:
            fn(ds, args, args.work, rec)


if __name__ == "__main__":
    main()
