"""TDS fit: time of a 1e6-point, 6-constant fit (numpy and OpenCL model) and recovery of known crystals.

The reference in the same run is one numpy model + Jacobian evaluation: the fit
time is also printed in those units.  Recovery: MgO, Mg and aragonite from
~1e5 synthetic Poisson points, constants relative to the truth (first fixed).

Run: .venv/bin/python benchmarks/tds_fit.py [n_points_speed] [n_points_recovery]
"""

import sys
import time

import numpy as np

from _tds_points import harvest
from difframe.plugins.minimisers import trust_region
from difframe.tds import fit
from difframe.tds.model import NumpyModel


def timed_fit(data, structure, cguess, backend):
    start = time.perf_counter()
    result = fit.fit(data, structure, cguess, fit.FitSettings(backend=backend), trust_region.minimise)
    return result, time.perf_counter() - start


def main(n_speed=1_000_000, n_recovery=100_000):
    data, structure, values, cguess = harvest("rutile", n_speed, seed=1)
    p = np.array([values[n] for n in structure.free])
    model = NumpyModel(data["Q"], data["Q"] - data["G"][data["spot"]], structure.basis)
    model.evaluate(p)  # first touch of the temporaries
    start = time.perf_counter()
    model.evaluate(p)
    t_eval = time.perf_counter() - start
    print(f"fit of {n_speed} points, {len(p)} free constants (rutile 4/mmm, 5 fitted + C11 fixed); "
          f"one numpy model+Jacobian = {t_eval:.3f} s")
    for backend in ("numpy", "opencl"):
        result, seconds = timed_fit(data, structure, cguess, backend)
        err = np.abs(result.values / p - 1).max()
        print(f"  {result.backend:7s} {seconds:7.2f} s = {seconds / t_eval:6.1f} model evaluations, "
              f"{len(result.history)} Jacobians, converged {result.converged}, max error {100 * err:.3f} %")
    print(f"recovery from {n_recovery} points (Poisson, start 10 % off, first constant fixed):")
    for name in ("MgO", "Mg", "aragonite"):
        data, structure, values, cguess = harvest(name, n_recovery, seed=2)
        result, seconds = timed_fit(data, structure, cguess, "auto")
        rel = {n: v / values[n] - 1 for n, v in zip(result.names, result.values)}
        worst = max(abs(e) for e in rel.values())
        print(f"  {name:9s} max |error| {100 * worst:.3f} %  ({seconds:.2f} s, chi2_red {result.reduced_chi2:.3f})  "
              + " ".join(f"{n} {100 * e:+.3f}%" for n, e in rel.items() if n not in result.fixed))


if __name__ == "__main__":
    args = [int(float(a)) for a in sys.argv[1:3]]
    main(*args)
