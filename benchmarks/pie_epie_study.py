"""ePIE (and rPIE, mPIE, DM) on the moonflower-like scan at fixed epoch counts: object errors against the truth.

    .venv/bin/python benchmarks/pie_epie_study.py [-e ePIE] [-p alpha=1 beta=0.5 ...] [--at 20 40 60 80 107]
                                                  [--seeds 0 1 2]

Every figure is deterministic for a seed (no wall time enters): the engine
runs from the flow's starting probe and object (benchmarks/ptycho_new_engines.py's
problem: 161 frames of 128 x 128, 1e8 photons, Poisson) and at each epoch
count of ``--at`` the whole-pixel (truth_errors) and sub-pixel
(ptycho_new_engines.subpixel_object_error) object errors and the probe error
are printed, with the probe's centre of mass (pixels from the window's
centre).  The epoch counts of the issue's comparison are the epochs an
engine fits in DM's 100 iterations on an idle machine (docs/ptycho-engines.md,
PIE section).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from difframe import Run
from difframe.ptycho import workflow
from difframe.ptycho.quality import truth_errors

from ptycho_new_engines import engine_params, moonflower, run_parameters, subpixel_object_error


def value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def centre_of_mass(probe: np.ndarray) -> tuple[float, float]:
    p = np.abs(probe) ** 2
    h, w = p.shape
    yy, xx = np.mgrid[:h, :w]
    return float((p * yy).sum() / p.sum() - (h - 1) / 2), float((p * xx).sum() / p.sum() - (w - 1) / 2)


def trajectory(name: str, extra: dict, at, prepared, truth, home: Path, photons: float = 1e8):
    """[(epochs, whole-pixel error, sub-pixel error, probe error, probe centre of mass)] at the counts ``at``."""
    spec, p = engine_params(name, max(at), home, extra, photons)
    model = workflow.build_run_model(Run(run_parameters(name, max(at), home, extra, photons)), prepared)
    engine = spec.factory(p, model)
    engine.initialize()
    done, out = 0, []
    (scan,) = model.scans
    for k in sorted(at):
        engine.iterate(k - done)
        done = k
        obj, probe = model.objects["sim"].data[0], model.probes["sim"].data[0]
        whole, perr = truth_errors(obj, probe, scan.corners, truth)
        out.append((k, whole, subpixel_object_error(obj, scan.corners, truth), perr, centre_of_mass(probe)))
    engine.finalize()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-e", "--engine", default="ePIE")
    ap.add_argument("-p", "--params", nargs="*", default=[], help="name=value engine parameters")
    ap.add_argument("--at", type=int, nargs="*", default=[20, 40, 60, 80, 107, 120])
    ap.add_argument("--seeds", type=int, nargs="*", default=[0])
    ap.add_argument("--photons", type=float, default=1e8)
    ap.add_argument("--first", default="", help="experiment (set centre_out_epochs=0 with it): KIND:N, the first N epochs in order KIND "
                    "(centre: nearest the positions' centroid first; file: the scan's order)")
    args = ap.parse_args()
    if args.first:
        kind, count = args.first.split(":")
        from difframe.ptycho.stochastic import StochasticEngine
        plain = StochasticEngine.frame_order

        def frame_order(self, scan):
            order = plain(self, scan)
            if self.iteration >= int(count):
                return order
            if kind == "file":
                return np.arange(scan.num_frames, dtype=np.int64)
            c = scan.corners - scan.corners.mean(axis=0)
            return np.argsort(np.hypot(c[:, 0], c[:, 1]), kind="stable").astype(np.int64)
        StochasticEngine.frame_order = frame_order
    extra = dict((k, value(v)) for k, v in (s.split("=", 1) for s in args.params))
    with tempfile.TemporaryDirectory() as tmp:
        truth, prepared = moonflower(args.photons, 100, Path(tmp))
        for seed in args.seeds:
            params = dict(extra, seed=seed) if args.engine != "DM" else extra
            print(f"{args.engine} {params}")
            for k, whole, sub, perr, com in trajectory(args.engine, params, args.at, prepared, truth, Path(tmp),
                                                       args.photons):
                print(f"  {k:4d}  object error {whole:.4f}  sub-pixel {sub:.4f}  probe error {perr:.4f}  "
                      f"probe centre of mass ({com[0]:+.2f}, {com[1]:+.2f})", flush=True)


if __name__ == "__main__":
    main()
