"""Marabou on exported VNN-LIB properties, in a child process: a crash in the optional C++ verifier must not take
the suite down."""

import json
import subprocess
import sys

_SCRIPT = """
import json, time, warnings
warnings.simplefilter("ignore")
from maraboupy import Marabou
out = []
for prop in {props!r}:
    net = Marabou.read_onnx("region_network.onnx")
    start = time.perf_counter()
    code, _, _ = net.solve(propertyFilename=prop, verbose=False,
                           options=Marabou.createOptions(verbosity=0, timeoutInSeconds=60))
    out.append([code, time.perf_counter() - start])
print(json.dumps(out))
"""


def solve_region_properties(props, folder) -> list:
    """``[[exit code, seconds], ...]`` of Marabou on each property over ``folder/region_network.onnx`` (60 s limit)."""
    run = subprocess.run([sys.executable, "-c", _SCRIPT.format(props=list(props))], cwd=folder, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])
