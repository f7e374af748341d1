"""Issue 15: Marabou on the exported MNIST region properties, both forms, from the files ``prune export`` writes.

The model and certificate are those of ``bench_verify.py --only export`` (the MNIST FC(256×256) base of the
``mnist10k`` section, 500 random training points forgotten with the dual bound, seed 1); the export is
``export_bundle(..., regions=SAMPLE, not_predicted=True)`` (what ``prune export --region … --not-predicted``
runs) into ``--scratch``. Each property is solved by maraboupy in a fresh child process, as a verifier would:
``read_onnx("region_network.onnx")`` then ``solve(propertyFilename=…)``, ``timeoutInSeconds=--timeout``.
Prints one JSON line per property (form, result, wall and child CPU seconds, load). Torch: one thread.

    PRUNE_DATA_DIR=../shared/data python benchmarks/marabou_not_predicted.py [--forms not,claim] [--regions 0 100]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

SAMPLE = (0, 100, 250, 400, 499)
_SOLVE = """
import json, sys, time, warnings
warnings.simplefilter("ignore")
from maraboupy import Marabou
t = time.perf_counter()
net = Marabou.read_onnx("region_network.onnx")
code, _, _ = net.solve(propertyFilename=sys.argv[1], verbose=False,
                       options=Marabou.createOptions(verbosity=0, timeoutInSeconds=int(sys.argv[2])))
print(json.dumps({"result": code, "wall_s": time.perf_counter() - t}))
"""


def build(scratch: Path, regions) -> dict:
    torch.set_num_threads(1)
    from prune_unlearn import forget, load, load_dataset
    from prune_unlearn.verify.bundle import export_bundle

    ds = load_dataset("mnist", os.environ.get("PRUNE_DATA_DIR"))
    base = load(Path(scratch).parent / "mnist-base-verify.safetensors")
    idx = torch.randperm(len(ds.y_train), generator=torch.Generator().manual_seed(1))[:500]
    res = forget(base, ds.X_train[idx], labels=ds.y_train[idx], bound="dual", radius=None)
    return export_bundle(res.model, scratch, certificate=res.certificate, regions=list(regions), onnx=False,
                         not_predicted=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scratch", default="/tmp/prune-bench-verify/export-500-np")
    ap.add_argument("--regions", type=int, nargs="*", default=list(SAMPLE))
    ap.add_argument("--forms", default="not,claim", help="not (label not predicted), claim (the certificate's claim)")
    ap.add_argument("--timeout", type=int, default=60)
    args = ap.parse_args()
    scratch = Path(args.scratch)
    doc_path = scratch / "export.json"
    doc = json.loads(doc_path.read_text()) if doc_path.exists() else None
    if doc is None or not {p["region"] for p in doc["properties"]} >= set(args.regions):
        t = time.perf_counter()
        doc = build(scratch, sorted(set(args.regions) | set(SAMPLE)))
        print(json.dumps({"export_s": round(time.perf_counter() - t, 1), "files": len(doc["files"])}), flush=True)
    todo = []
    for form in [f for f in args.forms.split(",") if f]:
        if form not in ("not", "claim"):
            raise SystemExit(f"--forms takes not and/or claim; got {form!r}")
        entries = doc["not_predicted"] if form == "not" else doc["properties"]
        todo += [(form, e) for e in entries if e["region"] in args.regions]
    for form, e in todo:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        load0 = os.getloadavg()[0]
        run = subprocess.run([sys.executable, "-c", _SOLVE, e["vnnlib"], str(args.timeout)], cwd=scratch,
                             capture_output=True, text=True, timeout=args.timeout + 300)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        row = json.loads(run.stdout.strip().splitlines()[-1]) if run.returncode == 0 else \
            {"error": run.stderr[-300:], "returncode": run.returncode}
        row.update({"form": "label not predicted" if form == "not" else "certificate claim", "region": e["region"],
                    "label": e.get("label"), "target": e["target"], "vnnlib": e["vnnlib"],
                    "child_cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2),
                    "load1": [round(load0, 2), round(os.getloadavg()[0], 2)]})
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
