"""Throughput of the TDS model + Jacobian (points/s): the vectorised numpy statement, the CPU backend (one fused
numba pass, ``backend = "numpy"``) and the fused OpenCL kernel, float64 / float64 / float32.

Run: .venv/bin/python benchmarks/tds_model.py [n_points]
"""

import sys
import time

import numpy as np

from _tds_points import harvest
from difframe.tds.model import NumpyModel, classical
from difframe.tds.model_cl import OpenCLModel


def best_of(fn, repeat=3):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(n=1_000_000):
    data, structure, values, _ = harvest("rutile", n)
    Q, q = data["Q"], data["Q"] - data["G"][data["spot"]]
    p = np.array([values[name] for name in structure.free])
    print(f"TDS model, {n} points, {len(p)} free constants (rutile, 4/mmm)")
    class Statement:  # the numpy statement of the same maths (what the CPU backend was before numba)
        def evaluate(self, p, jacobian=True):
            return classical(Q, q, np.tensordot(p, structure.basis, axes=1), structure.basis if jacobian else None)

    rows = [("numpy statement", Statement()), ("CPU numba", NumpyModel(Q, q, structure.basis))]
    try:
        rows.append(("OpenCL float32", OpenCLModel(Q, q, structure.basis)))
    except Exception as exc:
        print(f"OpenCL unavailable: {exc}")
    reference = None
    for label, model in rows:
        model.evaluate(p)  # warm-up (kernel build, buffers)
        t_full = best_of(lambda: model.evaluate(p))
        t_T = best_of(lambda: model.evaluate(p, jacobian=False))
        reference = reference or t_full
        print(f"{label:15s} T+J {n / t_full:12.3e} points/s ({t_full * 1e3:7.1f} ms)   "
              f"T only {n / t_T:12.3e} points/s   speed-up vs the numpy statement {reference / t_full:5.2f}x")


if __name__ == "__main__":
    main(int(float(sys.argv[1])) if len(sys.argv) > 1 else 1_000_000)
