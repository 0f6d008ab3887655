"""RAAR's parameters against DM at fixed iteration counts: object errors on the moonflower-like scan and the tests'
low-dose scan, with the truth known.

    .venv/bin/python benchmarks/raar_sweep.py [--checkpoints 60 80 100 120 160] [--photons 1e8]
                                              [--variant 'beta=0.8' ...] [--low-dose] [--skip-moonflower]

Each variant is a comma-separated list of RAAR parameters (``beta=0.8,object_inertia=0.01``); ``DM`` (optionally
``DM:alpha=1``) runs DM instead.  Every run starts from the flow's probe and object (moonflower-like scan, 161
frames of 128 x 128, benchmarks/ptycho_new_engines.py) and the whole-pixel and sub-pixel object errors
(ptycho_new_engines' truth_errors and subpixel_object_error) are printed at each checkpoint, with the seconds per
iteration (indicative only: the machine is shared).  ``--low-dose``: the same variants on the tests' scan (49
frames of 32 x 32, 1e5 photons per frame, from the amplitude guess: tests/plugins/engines/ptycho_truth.py), whose
object error is printed at 20 / 40 / 100 / 200 iterations: there DM wanders off and RAAR must stay near the truth.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "plugins" / "engines"))

from difframe.plugins.engines import dm, raar  # noqa: E402
from difframe.ptycho.quality import truth_errors  # noqa: E402

import ptycho_new_engines as bench  # noqa: E402
import ptycho_truth  # noqa: E402


def moonflower(variants, checkpoints, photons, home):
    truth, prepared = bench.moonflower(photons, 100, home)
    print(f"moonflower-like scan, {photons:.0e} photons: whole-pixel / sub-pixel object error at {checkpoints}")
    for variant in variants:
        name, extra = bench.parse_variant(variant, "RAAR", "DM")
        engine, model = bench.started_engine(name, max(checkpoints), home, extra, photons, prepared)
        row = []
        for done, seconds, _ in bench.at_checkpoints(engine, checkpoints):
            (scan,) = model.scans
            obj = model.objects["sim"].data[0]
            whole, _ = truth_errors(obj, model.probes["sim"].data[0], scan.corners, truth)
            row.append(f"{whole:.4f}/{bench.subpixel_object_error(obj, scan.corners, truth):.4f}")
        engine.finalize()
        print(f"  {variant:40s} {' '.join(row)}   {seconds / done:.3f} s/it", flush=True)


def low_dose(variants, photons=1e5, counts=(20, 40, 100, 200)):
    prep, probe, truth = ptycho_truth.simulate(photons=photons)
    guess = ptycho_truth.amplitude_guess(prep, truth.psize)
    print(f"tests' scan, {photons:.0e} photons: object error at {counts}")
    for variant in variants:
        name, extra = bench.parse_variant(variant, "RAAR", "DM")
        module = dm if name == "DM" else raar
        model = ptycho_truth.start_model(prep, guess)
        engine = module.factory(ptycho_truth.engine_params(module.PARAMETERS, **extra), model)
        engine.initialize()
        row = []
        for _ in bench.at_checkpoints(engine, counts):
            row.append(f"{ptycho_truth.object_error(model, truth, probe):.4f}")
        engine.finalize()
        print(f"  {variant:40s} {' '.join(row)}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", type=int, nargs="+", default=[60, 80, 100, 120, 160])
    ap.add_argument("--photons", type=float, default=1e8)
    ap.add_argument("--variant", action="append", default=None)
    ap.add_argument("--low-dose", action="store_true")
    ap.add_argument("--low-dose-photons", type=float, default=1e5)
    ap.add_argument("--skip-moonflower", action="store_true")
    args = ap.parse_args()
    variants = args.variant or ["DM", ""]
    if args.low_dose:
        low_dose(variants, args.low_dose_photons)
    if not args.skip_moonflower:
        with tempfile.TemporaryDirectory() as tmp:
            moonflower(variants, sorted(args.checkpoints), args.photons, Path(tmp))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
