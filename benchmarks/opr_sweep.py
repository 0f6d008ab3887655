"""OPR's parameters at fixed epoch counts on the steady moonflower-like scan and the tests' drifting-probe scan.

    .venv/bin/python benchmarks/opr_sweep.py [--checkpoints 20 30 45 60 90] [--variant 'weight_smoothing=0' ...]
                                             [--skip-drift] [--skip-steady] [--reach 0.5]

Each variant is a comma-separated list of OPR parameters (``rPIE`` or ``rPIE:alpha=0.3``: rPIE instead).  Steady:
benchmarks/ptycho_new_engines.py's moonflower-like scan (161 frames of 128 x 128, 1e8 photons), from the flow's
start, sub-pixel object error (its subpixel_object_error) at each checkpoint.  Drifting: benchmarks/ptycho_opr.py's
first scan (tests/plugins/engines/test_opr.py's drifting_scan), sub-pixel object error / deviance per pixel / mean
per-frame probe misfit at each checkpoint; ``--reach`` below 1 slides the vortex only that far in by the last frame
(a weaker drift).  Seconds per epoch are indicative only (a shared machine).
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

from difframe.plugins.engines import opr, pie  # noqa: E402

import ptycho_new_engines as bench  # noqa: E402
from ptycho_truth import engine_params, start_model  # noqa: E402
from test_opr import _misfit, drifting_scan  # noqa: E402


def steady(variants, checkpoints, photons, home):
    truth, prepared = bench.moonflower(photons, 100, home)
    print(f"steady (moonflower-like, {photons:.0e} photons): sub-pixel object error at {checkpoints}")
    for variant in variants:
        name, extra = bench.parse_variant(variant, "OPR", "rPIE")
        engine, model = bench.started_engine(name, max(checkpoints), home, extra, photons, prepared)
        row = []
        for done, seconds, last in bench.at_checkpoints(engine, checkpoints):
            (scan,) = model.scans
            obj = model.objects["sim"].data[0]
            row.append(f"{bench.subpixel_object_error(obj, scan.corners, truth):.4f}")
        engine.finalize()
        print(f"  {variant:40s} {' '.join(row)}   dev {last.get('deviance', 0):.2f}  {seconds / done:.3f} s/epoch",
              flush=True)


def drift(variants, checkpoints, reach=1.0):
    prep, probes, truth_obj = drifting_scan(reach=reach)
    guess = np.abs(probes[len(probes) // 2])[None]
    print(f"drifting (tests' scan, reach {reach}): sub-pixel object error / deviance / probe misfit at {checkpoints}")
    for variant in variants:
        name, extra = bench.parse_variant(variant, "OPR", "rPIE")
        model = start_model(prep, guess)
        if name == "OPR":
            engine = opr.factory(engine_params(opr.PARAMETERS, **extra), model)
        else:
            engine = pie._factory("rPIE")(engine_params(pie.VARIANTS["rPIE"][1], **extra), model)
        engine.initialize()
        row = []
        for _, _, metrics in bench.at_checkpoints(engine, checkpoints):
            (scan,) = model.scans
            frames = (engine.probes_of("sim") if name == "OPR"
                      else np.broadcast_to(model.probes["sim"].data[0], probes.shape))
            misfit = float(np.mean([_misfit(f, q) for f, q in zip(frames, probes)]))
            truth = {"object": truth_obj.data, "probe": probes.mean(axis=0)[None], "view_corners": scan.corners}
            sub = bench.subpixel_object_error(model.objects["sim"].data[0], scan.corners, truth)
            row.append(f"{sub:.3f}/{metrics['deviance']:.1f}/{misfit:.3f}")
        found = ("  found steady" if engine.steady else "  relaxed") if name == "OPR" else ""
        engine.finalize()
        print(f"  {variant:40s} {' '.join(row)}{found}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", type=int, nargs="+", default=[20, 30, 45, 60, 90])
    ap.add_argument("--photons", type=float, default=1e8)
    ap.add_argument("--variant", action="append", default=None)
    ap.add_argument("--skip-drift", action="store_true")
    ap.add_argument("--skip-steady", action="store_true")
    ap.add_argument("--reach", type=float, default=1.0, help="how far the drifting scan's vortex slides in")
    args = ap.parse_args()
    variants = args.variant or ["rPIE", ""]
    checkpoints = sorted(args.checkpoints)
    if not args.skip_drift:
        drift(variants, checkpoints, args.reach)
    if not args.skip_steady:
        with tempfile.TemporaryDirectory() as tmp:
            steady(variants, checkpoints, args.photons, Path(tmp))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
