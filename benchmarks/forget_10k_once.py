"""One 10,000-point forget on the cached MNIST base model of ``bench_verify.py --only mnist10k``, one torch thread.

For before/after comparisons at equal load: run it with ``PYTHONPATH`` pointing at each source tree in turn,

    PYTHONPATH=<tree>/src python benchmarks/forget_10k_once.py box <label>

and it prints one JSON line (wall and CPU seconds, mean ‖d‖∞, certified regions, peak RSS, load before/after).
"""

import json
import os
import resource
import sys
import time

import torch

torch.set_num_threads(1)
from safetensors.torch import load_file  # noqa: E402

from prune_unlearn import forget, load  # noqa: E402

SCRATCH = os.environ.get("PRUNE_BENCH_SCRATCH", "/tmp/prune-bench-verify")
bound, label = sys.argv[1], sys.argv[2]
model = load(f"{SCRATCH}/mnist-base-verify.safetensors")
pts = load_file(f"{SCRATCH}/mnist-10k-points.safetensors")
X, y = pts["X"], pts["y"]
forget(model, X[:2], labels=y[:2], bound=bound, radius=None)  # warm-up
load_before = os.getloadavg()[0]
t, c = time.perf_counter(), time.process_time()
res = forget(model, X, labels=y, bound=bound, radius=None)
print(json.dumps({"code": label, "bound": bound, "wall": time.perf_counter() - t, "cpu": time.process_time() - c,
                  "linf_mean": res.report.patch_linf_mean, "certified": res.report.n_certified_region,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "load1": [load_before, os.getloadavg()[0]]}))
