"""Issue 15: which form of an MNIST region property does Marabou prove fast? One query per run of this script.

Reads an export folder (``region_network.onnx``: Y = base logits then the hidden pre-activations z; ``region_<r>.vnnlib``:
the box, the pattern as bounds s_i z_i ≥ θ on z, and the per-label gaps of the certified claim) and builds the query
in maraboupy, in one of these forms (no ReLU is left in any of them but ``onnx`` and ``layered-relu``):

``onnx``          the exported files as they are: ``read_onnx`` + the property's bounds (ReLUs present, phases fixed
                  only by the bounds on z).
``layered``       the hidden layers as variables with no ReLU: z₁ = W₀x + b₀, z_{j+1} = W_j diag(a_j) z_j + b_j,
                  y = W_L diag(a_L) z_L + b_L; the pattern as variable bounds (z ≥ θ active, z ≤ −θ inactive).
``layered-relu``  ``layered`` with the ReLUs kept (r_j = ReLU(z_j), z_{j+1} = W_j r_j + b_j) and the same bounds.
``affine-dense``  one affine map x → y on the region, the halfspaces as 784-column input inequalities
                  (benchmarks/marabou_affine.py).

and one of these properties (the unsafe set; UNSAT proves it):

``label:L``       the certificate's claim for one label L ≠ t: y_L − y_t ≥ gap_L (one of the per-target disjuncts).
``all``           the certificate's claim: the disjunction over every L ≠ t (Marabou disjunction constraint).
``predicts:L``    the paper's weaker claim "L is not predicted": y_L + d_L ≥ y_o + d_o for every o (a conjunction;
                  d = the patch, read from the gaps: gap_o = d_t − d_o − margin, so d_L − d_o = gap_o − gap_L, and
                  d_L − d_t = −margin − gap_L with the margin from export.json).

    python benchmarks/marabou_forms.py /tmp/prune-bench-verify/export-500 0 --form layered --prop label:6 --timeout 60

Prints one JSON line: the form, property, Marabou's answer, wall and CPU seconds (build, solve), load.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
import warnings

import numpy as np

warnings.simplefilter("ignore")


def read_export(folder: str, r: int):
    import onnx
    from onnx import numpy_helper

    m = onnx.load(os.path.join(folder, "region_network.onnx"))
    inits = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in m.graph.initializer}
    gemms = [n for n in m.graph.node if n.op_type == "Gemm"]
    ws = [inits[n.input[1]] for n in gemms]
    bs = [inits[n.input[2]] for n in gemms]
    text = open(os.path.join(folder, f"region_{r}.vnnlib")).read()
    C, N, d = ws[-1].shape[0], sum(w.shape[0] for w in ws[:-1]), ws[0].shape[1]
    signs = np.zeros(N)
    for op, k in re.findall(r"\(assert \((>=|<=) Y_(\d+) -?[0-9.e-]+\)\)", text):
        signs[int(k) - C] = 1.0 if op == ">=" else -1.0
    theta = float(re.search(r"theta = ([0-9.e-]+)\)", text).group(1))
    unsafe = {int(a): float(g) for a, b, g in re.findall(r"\(>= \(- Y_(\d+) Y_(\d+)\) (-?[0-9.e-]+)\)", text)}
    t = int(re.search(r"target label (\d+)", text).group(1))
    lo, hi = np.zeros(d), np.ones(d)
    for i, v in re.findall(r"\(assert \(>= X_(\d+) (-?[0-9.e-]+)\)\)", text):
        lo[int(i)] = float(v)
    for i, v in re.findall(r"\(assert \(<= X_(\d+) (-?[0-9.e-]+)\)\)", text):
        hi[int(i)] = float(v)
    assert (signs != 0).all() and len(unsafe) == C - 1
    return ws, bs, signs, theta, unsafe, t, lo, hi


def build(form: str, folder: str, ws, bs, signs, theta, lo, hi):
    """``(net, x vars, y vars)`` with the region's pattern imposed."""
    from maraboupy import Marabou
    from maraboupy.MarabouNetwork import MarabouNetwork

    C = ws[-1].shape[0]
    if form == "onnx":
        net = Marabou.read_onnx(os.path.join(folder, "region_network.onnx"))
        x, out = net.inputVars[0].flatten(), net.outputVars[0].flatten()
        for i in range(len(x)):
            net.setLowerBound(int(x[i]), lo[i])
            net.setUpperBound(int(x[i]), hi[i])
        for k, s in enumerate(signs):
            (net.setLowerBound if s > 0 else net.setUpperBound)(int(out[C + k]), s * theta)
        return net, x, out[:C]
    if form == "affine-dense":
        return _affine_dense(ws, bs, signs, theta, lo, hi)
    net = MarabouNetwork()
    x = np.array([net.getNewVariable() for _ in range(ws[0].shape[1])])
    for i, v in enumerate(x):
        net.setLowerBound(int(v), lo[i])
        net.setUpperBound(int(v), hi[i])
    prev, on_prev, start = x, np.ones(len(x), bool), 0
    for j, (w, b) in enumerate(zip(ws, bs)):
        cols = np.flatnonzero(on_prev)
        z = np.array([net.getNewVariable() for _ in range(w.shape[0])])
        for i in range(w.shape[0]):  # z_i − Σ w_ic prev_c = b_i
            nz = cols[w[i, cols] != 0]
            net.addEquality([int(z[i])] + [int(prev[c]) for c in nz], [1.0] + list(-w[i, nz]), float(b[i]))
        if j == len(ws) - 1:
            net.inputVars, net.outputVars = [x], [z]
            return net, x, z
        s = signs[start: start + w.shape[0]]
        start += w.shape[0]
        for i, v in enumerate(z):
            (net.setLowerBound if s[i] > 0 else net.setUpperBound)(int(v), s[i] * theta)
        if form == "layered-relu":
            r = np.array([net.getNewVariable() for _ in range(len(z))])
            for zi, ri in zip(z, r):
                net.addRelu(int(zi), int(ri))
                net.setLowerBound(int(ri), 0.0)
            prev, on_prev = r, np.ones(len(z), bool)
        else:
            prev, on_prev = z, s > 0
    raise AssertionError


def _affine_dense(ws, bs, signs, theta, lo, hi):
    from maraboupy.MarabouNetwork import MarabouNetwork

    mat, vec, A, c, start = ws[0], bs[0], [ws[0]], [bs[0]], 0
    for j in range(1, len(ws)):
        n = ws[j - 1].shape[0]
        on = (signs[start:start + n] > 0).astype(float)
        start += n
        mat, vec = ws[j] @ (on[:, None] * mat), ws[j] @ (on * vec) + bs[j]
        if j < len(ws) - 1:
            A.append(mat)
            c.append(vec)
    A, c = np.concatenate(A), np.concatenate(c)
    net = MarabouNetwork()
    x = np.array([net.getNewVariable() for _ in range(A.shape[1])])
    y = np.array([net.getNewVariable() for _ in range(mat.shape[0])])
    for i, v in enumerate(x):
        net.setLowerBound(int(v), lo[i])
        net.setUpperBound(int(v), hi[i])
    for row, ci, s in zip(A, c, signs):  # s (row·x + c) ≥ θ  ⇔  −s row·x ≤ s c − θ
        nz = np.flatnonzero(row)
        net.addInequality([int(x[j]) for j in nz], list(-s * row[nz]), float(s * ci - theta))
    for k in range(len(y)):
        nz = np.flatnonzero(mat[k])
        net.addEquality([int(y[k])] + [int(x[j]) for j in nz], [1.0] + list(-mat[k, nz]), float(vec[k]))
    net.inputVars, net.outputVars = [x], [y]
    return net, x, y


def add_property(net, y, prop: str, unsafe: dict, t: int, margin: float) -> None:
    from maraboupy.MarabouUtils import Equation
    from maraboupy.MarabouCore import Equation as CoreEq

    if prop.startswith("label:"):
        lab = int(prop.split(":")[1])
        net.addInequality([int(y[t]), int(y[lab])], [1.0, -1.0], -unsafe[lab])  # y_l − y_t ≥ gap_l
    elif prop == "all":
        disjuncts = []
        for lab, gap in unsafe.items():
            eq = Equation(CoreEq.GE)
            eq.addAddend(1.0, int(y[lab]))
            eq.addAddend(-1.0, int(y[t]))
            eq.setScalar(gap)
            disjuncts.append([eq])
        net.addDisjunctionConstraint(disjuncts)
    elif prop.startswith("predicts:"):
        lab = int(prop.split(":")[1])
        gap = {**unsafe, t: -margin}
        for other in range(len(y)):
            if other != lab:  # y_L + d_L ≥ y_o + d_o  ⇔  y_o − y_L ≤ d_L − d_o = gap_o − gap_L
                net.addInequality([int(y[other]), int(y[lab])], [1.0, -1.0], gap[other] - gap[lab])
    else:
        raise SystemExit(f"unknown property {prop!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("region", type=int)
    ap.add_argument("--form", default="layered", choices=["onnx", "layered", "layered-relu", "affine-dense"])
    ap.add_argument("--prop", default="all", help="label:L, all, or predicts:L")
    ap.add_argument("--timeout", type=int, default=60)
    ap.add_argument("--tightening", default="deeppoly", help="Marabou tighteningStrategy (deeppoly, sbt, none)")
    ap.add_argument("--lp-solver", default="", help="Marabou lpSolver ('' = default, native, gurobi)")
    ap.add_argument("--verbosity", type=int, default=0)
    args = ap.parse_args()
    from maraboupy import Marabou

    load0 = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    ws, bs, signs, theta, unsafe, t, lo, hi = read_export(args.folder, args.region)
    net, x, y = build(args.form, args.folder, ws, bs, signs, theta, lo, hi)
    doc = json.load(open(os.path.join(args.folder, "export.json")))
    margin = next(p["margin"] for p in doc["properties"] if p["region"] == args.region)
    add_property(net, y, args.prop, unsafe, t, margin)
    t1, c1 = time.perf_counter(), time.process_time()
    opts = Marabou.createOptions(verbosity=args.verbosity, timeoutInSeconds=args.timeout,
                                 tighteningStrategy=args.tightening, lpSolver=args.lp_solver)
    code, vals, _ = net.solve(verbose=False, options=opts)
    t2, c2 = time.perf_counter(), time.process_time()
    print(json.dumps({"region": args.region, "target": t, "form": args.form, "prop": args.prop,
                      "tightening": args.tightening, "lp_solver": args.lp_solver or "default", "result": code,
                      "build_wall_s": round(t1 - t0, 2), "solve_wall_s": round(t2 - t1, 2),
                      "solve_cpu_s": round(c2 - c1, 2), "total_cpu_s": round(c2 - c0, 2), "vars": int(net.numVars), "hidden": int(len(signs)),
                      "active": int((signs > 0).sum()), "theta": theta, "load1": [load0, os.getloadavg()[0]]}),
          flush=True)


if __name__ == "__main__":
    main()
