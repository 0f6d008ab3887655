"""Object and probe errors against the simulation's truth: DM alone against DM followed by ML.

    .venv/bin/python benchmarks/ptycho_quality.py [--iterations 100] [--photons 1e8]

Runs examples/ptycho_sim.toml (a simulated far-field scan, noisy, from a
flat object and an unpropagated aperture) three ways through `difframe run`'s
own flow: DM for N iterations, DM for 2N, and DM N then ML N.  Errors are
relative, over the object pixels the true probe lights (> 10% of the peak
summed intensity) and over the probe frame, after removing what ptychography
leaves undetermined: a global complex factor, an integer shift and a linear
phase ramp (difframe.ptycho.quality.aligned_error).  The issue's target: DM
N + ML N clearly below DM alone.
"""

from __future__ import annotations

import argparse
import tempfile
import tomllib
from pathlib import Path

import numpy as np

from difframe import Run
from difframe.plugins.recipes.sim import simulate
from difframe.ptycho import model as pm
from difframe.ptycho.quality import truth_errors
from difframe.ptycho.ptyr import read_ptyr

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "ptycho_sim.toml"


def parameters(photons: float, engines: dict | None = None, home: Path | None = None) -> dict:
    """The example's tree with ``photons`` per frame, these ``engines`` (label -> name, numiter), no extras."""
    with open(EXAMPLE, "rb") as f:
        params = tomllib.load(f)
    params["scans"]["sim"]["illumination"]["photons"] = int(photons)
    params["engines"] = {label: {"name": name, "numiter": numiter} for label, (name, numiter) in (engines or {}).items()}
    params["io"] = {"paths": {"home": str(home or ".")}, "autosave": {"active": False}}
    params["plotclient"] = {"dump": False}
    return params


def simulated_truth(photons: float) -> dict:
    """The probe, object and window corners the example's frames are simulated from."""
    run = Run(parameters(photons))
    return simulate(run.params.scans.sim, run.scan_context("sim")).meta["truth"]


def errors(path: Path, truth: dict) -> tuple[float, float]:
    """(object error, probe error) of the reconstruction at ``path`` against the simulated ``truth``."""
    rec = read_ptyr(path)
    (ost,), (pst,) = rec.objects.values(), rec.probes.values()
    obj, probe = np.asarray(ost["data"])[0], np.asarray(pst["data"])[0]
    storage = pm.Storage(obj, np.asarray(ost["_psize"]), np.asarray(ost["_origin"]), 6.2)
    corners = pm.corners_of(np.asarray(rec.positions["sim"]), storage, probe.shape)
    return truth_errors(obj, probe, corners, truth)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--photons", type=float, default=1e8, help="photons per frame (Poisson noise)")
    args = ap.parse_args()
    n = args.iterations
    cases = {f"DM {n}": {"dm": ("DM", n)},
             f"DM {2 * n}": {"dm": ("DM", 2 * n)},
             f"DM {n} + ML {n}": {"dm": ("DM", n), "ml": ("ML", n)}}
    print(f"examples/ptycho_sim.toml, {args.photons:.0e} photons per frame; errors after removing a global factor, "
          "shift and phase ramp")
    results, truth = {}, simulated_truth(args.photons)
    with tempfile.TemporaryDirectory() as tmp:
        for k, (name, engines) in enumerate(cases.items()):
            home = Path(tmp) / str(k)
            path = Run(parameters(args.photons, engines, home)).run()["reconstruction"]
            results[name] = errors(path, truth)
            print(f"  {name:16s} object error {results[name][0]:.4f}   probe error {results[name][1]:.4f}")
    best_dm = min(results[f"DM {n}"][0], results[f"DM {2 * n}"][0])
    print(f"object error of DM + ML / best DM alone: {results[f'DM {n} + ML {n}'][0] / best_dm:.2f}  "
          "(target: clearly below 1)")


if __name__ == "__main__":
    main()
