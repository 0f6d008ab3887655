"""TDS exposure integration: recovery of known constants from noise-free simulated rotation stacks.

For each crystal and frame width the simulator (which integrates every frame over
its exposure, as a detector does) writes a stack covering the same phi range;
it is harvested and fitted with the model at the frame centres (exposure off) and
averaged over the exposure (on).  Printed: worst-constant error against the
simulation's constants, every constant's error, and the fit times and their ratio,
measured in the same run; for the first crystal at 0.5 and 1 deg also the fit time on
200000 points (the harvest tiled) with numpy and OpenCL, off against on.  The table in
docs/tds-fit.md (Exposure) comes from this script.

Run: .venv/bin/python benchmarks/tds_exposure.py [widths, e.g. 0.1,0.5,1] [crystals, e.g. rutile,aragonite]
[points for the timing, 0: none]
"""

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from difframe.crystal.symmetry import elastic_structure
from difframe.plugins.minimisers import trust_region
from difframe.tds import fit
from difframe.tds.harvest import HarvestOptions, harvest
from difframe.tds.simulate import simulate

#: name -> crystal table of a simulation spec (constants in GPa)
CRYSTALS = {
    "MgO": {"cell": [4.212, 4.212, 4.212, 90, 90, 90], "centering": "F", "generators": "1~,4(z),3(111)",
            "constants": {"C11": 297.0, "C12": 95.2, "C44": 155.7}, "density": 3.585},
    "Mg": {"cell": [3.209, 3.209, 5.211, 90, 90, 120], "generators": "1~,6(z),2(x)",
           "constants": {"C11": 59.40, "C12": 25.61, "C13": 21.44, "C33": 61.60, "C44": 16.40}, "density": 1.738},
    "rutile": {"cell": [4.594, 4.594, 2.959, 90, 90, 90], "generators": "1~,4(z),2(x)",
               "constants": {"C11": 269.0, "C12": 177.0, "C13": 146.0, "C33": 480.0, "C44": 124.0, "C66": 192.0},
               "density": 4.25},
    "aragonite": {"cell": [4.96, 7.97, 5.74, 90, 90, 90], "generators": "1~,2(z),2(y)",
                  "constants": {"C11": 171.1, "C12": 60.3, "C13": 27.8, "C22": 110.1, "C23": 41.9, "C33": 98.4,
                                "C44": 39.3, "C55": 24.2, "C66": 40.2}, "density": 2.93},
    "monoclinic": {"cell": [5.0, 7.0, 6.0, 90, 104, 90], "generators": "1~,2(y)",  # aragonite's + C15 C25 C35 C46
                   "constants": {"C11": 171.1, "C12": 60.3, "C13": 27.8, "C15": 5.0, "C22": 110.1, "C23": 41.9,
                                 "C25": -4.0, "C33": 98.4, "C35": 6.0, "C44": 39.3, "C46": 3.0, "C55": 24.2,
                                 "C66": 40.2}, "density": 2.93},
    "triclinic": {"cell": [5.0, 6.0, 6.5, 84, 97, 106], "generators": "1~",  # aragonite's + 12 couplings
                  "constants": {"C11": 171.1, "C12": 60.3, "C13": 27.8, "C14": 2.0, "C15": 3.0, "C16": -2.0,
                                "C22": 110.1, "C23": 41.9, "C24": 1.0, "C25": -3.0, "C26": 2.0, "C33": 98.4,
                                "C34": 2.0, "C35": 4.0, "C36": -1.0, "C44": 39.3, "C45": 1.0, "C46": 2.0,
                                "C55": 24.2, "C56": -1.0, "C66": 40.2}, "density": 2.93},
    "calcite": {"cell": [4.99, 4.99, 17.06, 90, 90, 120], "centering": "R", "generators": "1~,3(z),2(x)",
                "constants": {"C11": 137.0, "C12": 48.2, "C13": 56.8, "C14": -20.0, "C33": 81.1, "C44": 35.0},
                "density": 2.71},
}


def spec(crystal: str, width: float, scan_deg: float = 40.0, shape=(160, 168), max_spots: int = 10,
         substeps=None) -> dict:
    """A noise-free simulation of ``crystal`` with ``width``-degree frames over ``scan_deg``."""
    scan = {"frames": int(round(scan_deg / width)), "prefix": "f_", "max_hkl": 4, "max_spots": max_spots}
    if substeps is not None:
        scan["exposure_substeps"] = substeps
    return {
        "crystal": {"name": crystal, "temperature": 300.0, **CRYSTALS[crystal]},
        "geometry": {"lmbda": 0.4, "dist": 34.0, "pixel_size": 0.172, "det_origin_X": shape[1] / 2 + 0.3,
                     "det_origin_Y": shape[0] / 2 - 0.4, "angular_step": width, "kappa": 20.0, "r1": 17.0,
                     "r2": 31.0, "r3": 8.0, "phi": -scan_deg / 2},
        "detector": {"shape": list(shape), "beamstop_radius": 3.0},
        "scan": scan,
        "intensity": {"noise": False, "tds_scale": 2000.0, "bragg": 2e8, "seed": 1},
        "options": {"DeltaQ_max": 0.15, "DeltaQ_min": 0.04, "threshold": 1e7},
    }


def simulate_and_harvest(simulation: dict, folder: Path, threshold_rule: str = "frame"):
    """(harvest dict for fit.fit, structure, true constants, CGUESS, geometry, harvest result)."""
    from difframe.tds.config import geometry_of, read_tds_config

    truth = simulate(simulation, folder)
    tds = read_tds_config(folder / "input.par")
    geometry = geometry_of(tds)
    files = [folder / name for name in truth["frames"]]
    options = HarvestOptions(delta_q_min=tds["DeltaQ_min"], delta_q_max=tds["DeltaQ_max"], threshold=tds["threshold"],
                             spots=np.array(tds["collectSpots"]), mask_file=str(folder / "filter.edf"),
                             normalisation_file=str(folder / "normalisation.dat"), threshold_rule=threshold_rule)
    result = harvest(geometry, files, options)
    data = {"Q": result.Q, "intensity": result.intensity, "spot": result.spot, "G": result.G, "hkl": result.hkl,
            "frame": result.frame, "pixel": result.pixel, "angle_increment": result.attrs.get("angle_increment_deg"),
            "delta_q": result.attrs["delta_q"]}
    structure = elastic_structure(simulation["crystal"]["generators"], geometry.lattice.direct)
    values = truth["constants"]
    cguess = {n: [v if n == truth["fixed"] else 1.1 * v, -10 * abs(v) - 1, 10 * abs(v) + 1] for n, v in values.items()}
    return data, structure, values, cguess, geometry, result


def recover(data, structure, values, cguess, geometry, exposure: str, backend: str = "auto"):
    """(worst relative error, {constant: error}, seconds, result) of one fit."""
    start = time.perf_counter()
    result = fit.fit(data, structure, cguess, fit.FitSettings(exposure=exposure, backend=backend),
                     trust_region.minimise, geometry=geometry)
    seconds = time.perf_counter() - start
    errors = {n: float(v / values[n] - 1) for n, v in zip(result.names, result.values) if n not in result.fixed}
    return max(abs(e) for e in errors.values()), errors, seconds, result


def timing(data, structure, values, cguess, geometry, n_points: int):
    """Fit times with and without the exposure average on ``n_points`` (the harvest tiled, Q jittered by 1e-4)."""
    rng = np.random.default_rng(0)
    reps = -(-n_points // len(data["Q"]))
    tiled = {k: (np.concatenate([v] * reps)[:n_points] if k in ("Q", "intensity", "spot", "frame", "pixel") else v)
             for k, v in data.items()}
    tiled["Q"] = tiled["Q"] * (1 + 1e-4 * rng.standard_normal(tiled["Q"].shape))
    print(f"fit time on {n_points} points (harvest tiled {reps}x):")
    for backend in ("numpy", "opencl"):
        runs = {mode: recover(tiled, structure, values, cguess, geometry, mode, backend) for mode in ("off", "on")}
        off, on = runs["off"], runs["on"]
        per_off, per_on = off[2] / len(off[3].history), on[2] / len(on[3].history)
        print(f"  {backend:7s} off {off[2]:6.2f} s ({len(off[3].history)} Jacobians), on {on[2]:6.2f} s "
              f"({len(on[3].history)}): ratio {on[2] / off[2]:.2f}, per Jacobian {per_on / per_off:.2f}")


def main(widths=(0.1, 0.5, 1.0), crystals=("rutile", "aragonite"), n_timing=200_000):
    print(f"{'crystal':10s} {'width':>6s} {'points':>7s} {'excl.':>6s} {'off: worst':>11s} {'on: worst':>10s} "
          f"{'t_off':>6s} {'t_on':>6s} {'ratio':>6s}")
    for crystal in crystals:
        for width in widths:
            with tempfile.TemporaryDirectory() as tmp:
                data, structure, values, cguess, geometry, result = simulate_and_harvest(
                    spec(crystal, width), Path(tmp) / "run")
            off = recover(data, structure, values, cguess, geometry, "off")
            on = recover(data, structure, values, cguess, geometry, "on")
            print(f"{crystal:10s} {width:6.2f} {len(data['Q']):7d} {len(result.excluded_frames):6d} "
                  f"{100 * off[0]:10.3f}% {100 * on[0]:9.3f}% {off[2]:6.2f} {on[2]:6.2f} {on[2] / off[2]:6.2f}")
            for label, run in (("off", off), ("on", on)):
                print(f"    {label:3s} " + " ".join(f"{n} {100 * e:+.3f}%" for n, e in run[1].items()))
            if n_timing and width >= 0.5 and crystal == crystals[0]:
                timing(data, structure, values, cguess, geometry, n_timing)


if __name__ == "__main__":
    widths = tuple(float(w) for w in sys.argv[1].split(",")) if len(sys.argv) > 1 else (0.1, 0.5, 1.0)
    crystals = tuple(sys.argv[2].split(",")) if len(sys.argv) > 2 else ("rutile", "aragonite")
    main(widths, crystals, int(float(sys.argv[3])) if len(sys.argv) > 3 else 200_000)
