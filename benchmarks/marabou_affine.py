"""Issue 15 (c): Marabou on region r's property in the affine form: the head is affine on the region (pattern fixed), so the
network is one Gemm (784 -> 10: W_r, w_r) and the region's halfspaces are linear input constraints.
One query per label l != t: UNSAT of {x in box, halfspaces, y_l - y_t >= gap_l} for every l proves the claim.
Everything is read from an export folder (region_network.onnx, region_<r>.vnnlib); the region maps are float64.
A measurement of the form, not an exported artefact (the halfspaces are not rounded outwards here).

    python benchmarks/marabou_affine.py /tmp/prune-bench-verify/export-500 0 60
"""
import json, re, sys, time, warnings, os
warnings.simplefilter("ignore")
import numpy as np, onnx
from onnx import numpy_helper, helper, TensorProto
folder, r = sys.argv[1], int(sys.argv[2])
timeout = int(sys.argv[3]) if len(sys.argv) > 3 else 60
m = onnx.load(os.path.join(folder, "region_network.onnx"))
inits = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in m.graph.initializer}
gemms = [n for n in m.graph.node if n.op_type == "Gemm"]
ws = [inits[n.input[1]] for n in gemms]; bs = [inits[n.input[2]] for n in gemms]
for n, w in zip(gemms, ws):
    assert [a for a in n.attribute if a.name == "transB"][0].i == 1
text = open(os.path.join(folder, f"region_{r}.vnnlib")).read()
C = ws[-1].shape[0]; N = sum(w.shape[0] for w in ws[:-1]); d = ws[0].shape[1]
signs = np.zeros(N)
for k, op, val in [(int(a), b, float(c)) for b, a, c in re.findall(r"\(assert \((>=|<=) Y_(\d+) (-?[0-9.]+)\)\)", text)]:
    signs[k - C] = 1.0 if op == ">=" else -1.0
theta = float(re.search(r"\(assert \(>= Y_\d+ ([0-9.]+)\)\)", text).group(1))
unsafe = [(int(a), int(b), float(g)) for a, b, g in re.findall(r"\(>= \(- Y_(\d+) Y_(\d+)\) (-?[0-9.]+)\)", text)]
t = unsafe[0][1]
box = [(int(i), float(v)) for i, v in re.findall(r"\(assert \(>= X_(\d+) (-?[0-9.]+)\)\)", text)]
lo = np.zeros(d); hi = np.ones(d)
for i, v in box: lo[i] = v
for i, v in re.findall(r"\(assert \(<= X_(\d+) (-?[0-9.]+)\)\)", text): hi[int(i)] = float(v)
assert (signs != 0).all()
# region maps (float64)
mat, vec = ws[0], bs[0]; A = [mat]; c = [vec]; start = 0
for j in range(1, len(ws)):
    n = ws[j - 1].shape[0]; on = (signs[start:start + n] > 0).astype(float); start += n
    mat = ws[j] @ (on[:, None] * mat); vec = ws[j] @ (on * vec) + bs[j]
    if j < len(ws) - 1: A.append(mat); c.append(vec)
A = np.concatenate(A); c = np.concatenate(c); W, w = mat, vec
# affine ONNX: Y = X W^T + w
g = helper.make_graph([helper.make_node("Gemm", ["X", "W", "B"], ["Y"], transB=1)], "affine",
                      [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, d])],
                      [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, C])],
                      [numpy_helper.from_array(W.astype(np.float32), "W"), numpy_helper.from_array(w.astype(np.float32), "B")])
import tempfile
path = os.path.join(tempfile.mkdtemp(), f"affine_{r}.onnx")
onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), path)
from maraboupy import Marabou
results = []; t0 = time.perf_counter(); c0 = time.process_time()
for lab, tt, gap in unsafe:
    net = Marabou.read_onnx(path)
    x = net.inputVars[0].flatten(); y = net.outputVars[0].flatten()
    for i in range(d):
        net.setLowerBound(int(x[i]), lo[i]); net.setUpperBound(int(x[i]), hi[i])
    for row, rhs_c, s in zip(A, c, signs):
        # s (row·x + c) >= theta  <=>  -s row·x <= s c - theta
        nz = np.flatnonzero(row)
        net.addInequality([int(x[j]) for j in nz], list(-s * row[nz]), float(s * rhs_c - theta))
    net.addInequality([int(y[tt]), int(y[lab])], [1.0, -1.0], -gap)   # y_l - y_t >= gap
    q0 = time.perf_counter()
    code, _, _ = net.solve(verbose=False, options=Marabou.createOptions(verbosity=0, timeoutInSeconds=timeout))
    results.append({"label": lab, "result": code, "seconds": time.perf_counter() - q0})
print(json.dumps({"region": r, "target": t, "labels": results, "total_wall_s": time.perf_counter() - t0,
                  "total_cpu_s": time.process_time() - c0, "halfspaces": int(len(A)), "load1": os.getloadavg()[0]}))
