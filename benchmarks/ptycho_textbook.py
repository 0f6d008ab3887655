"""difframe's DM (and DM + ML) against a plain textbook DM on a simulated moonflower-like scan with known truth.

    .venv/bin/python benchmarks/ptycho_textbook.py [--iterations 100] [--photons 1e8] [-p path=value ...]

Why: the issue measured difframe less accurate than ptypy and than a plain
numpy DM on ptypy's moonflower data; this benchmark measures that gap where
the truth is known, in one run, so a change to the engines shows up as a ratio.

The scan (like ptypy's moonflower): 161 far-field frames of 128 x 128 on a
spiral, Poisson counts of 1e8 photons per frame, a crescent ("moon") probe
propagated 0.2 mm, a flower object (amplitude 0.2..1, phase 0..pi/2).  The
reconstructions start from a flat object and a circular aperture of the
probe's size.  Three reconstructions from the same frames and starting guess:

(a) a textbook difference map (Thibault et al., Ultramicroscopy 2009) written
    below in plain numpy: exit waves psi_j, psi_j += P_F(2 P O_j - psi_j) -
    P O_j with the full modulus projection (alpha = 1, no relaxation), then the
    overlap loop of object and probe updates with the engine's inertias, probe
    support, probe_update_start, overlap loop limits;
(b) difframe's DM through `difframe run`'s flow with the same settings;
(c) (b) followed by ML.

Errors are relative, after removing a global complex factor, shift and phase
ramp (difframe.ptycho.quality.aligned_error), over the object pixels the true
probe lights (> 10% of the peak summed intensity) and over the probe frame.
Target: difframe's errors / textbook's <= 1.  ``--noiseless`` takes exact
intensities, where a bias of the engine (e.g. its Fourier relaxation) is not
hidden by noise.  ``-p`` sets engine parameters
of difframe's DM for experiments (``-p fourier_relax_factor=0``); the textbook
takes the same values where it has them; ``--ml`` sets ML parameters of (c) (``--ml
illumination_precond=true``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np

from difframe import Run
from difframe.plugins.recipes.sim import simulate
from difframe.ptycho import model as pm
from difframe.ptycho import workflow
from difframe.ptycho.ptyr import read_ptyr
from difframe.ptycho.quality import truth_errors


def parameters(photons: float, engines: dict, home: Path, dm_extra: dict | None = None,
               noise: bool = True, ml_extra: dict | None = None) -> dict:
    """The run's tree: the moonflower-like scan, ``engines`` (label -> (name, numiter)), no files but the result."""
    scan = {
        "data": {"source": "sim", "shape": 128, "recipe": {"sim": {"poisson": noise}},
                 "simulation": {  # the truth: a propagated crescent probe, a flower object
                     "illumination": {"model": "moon", "aperture": {"size": 8e-6},
                                      "propagation": {"parallel": 2e-4}},
                     "sample": {"model": "flower"}}},
        "geometry": {"energy": 6.2, "distance": 7.19, "psize": 172e-6},  # object pixel 65 nm
        # floor(pi (r_out / dr)^2) + 1 = 161 positions, 18 pixels apart; the probe is ~64 pixels wide
        "xy": {"type": "spiral", "spiral": {"dr": 1.2e-6, "r_out": 8.57e-6}},
        # the starting probe: a disc of the crescent's outer diameter
        "illumination": {"photons": int(photons), "aperture": {"form": "circ", "size": 4.2e-6, "edge": 2}},
    }
    eng = {}
    for label, (name, numiter) in engines.items():
        eng[label] = {"name": name, "numiter": numiter, "numiter_contiguous": 10}
        eng[label].update((dm_extra if name == "DM" else ml_extra) or {})
    return {"run": "textbook", "data_type": "single", "scans": {"sim": scan}, "engines": eng,
            "io": {"paths": {"home": str(home)}, "autosave": {"active": False}}, "plotclient": {"dump": False}}


def textbook_dm(intensity, probe, obj, corners, p, iterations: int):
    """Plain difference map; returns (object, probe).  Arrays as the engines hold them (frames in FFT order).

    Written from the equations, nothing shared with difframe's kernels: the
    point is a yardstick whose every step is obvious.
    """
    h, w = probe.shape
    amp = np.sqrt(intensity)
    obj, probe = obj.copy(), probe.copy()
    windows = [(slice(y, y + h), slice(x, x + w)) for y, x in corners]

    def views(o):
        return np.stack([o[win] for win in windows])

    support = pm.probe_support((h, w), p.probe_support, np.float32)
    obj_weight = float(p.object_inertia) * float(intensity.mean())  # inertia relative to the measured power
    psi = probe * views(obj)
    for it in range(iterations):
        # data constraint on the reflected wave 2 P O - psi: keep the phase, take the measured modulus
        pods = probe * views(obj)
        f = np.fft.fft2(2 * pods - psi, norm="ortho")
        f = amp * np.exp(1j * np.angle(f))
        psi += np.fft.ifft2(f, norm="ortho").astype(psi.dtype) - pods
        # overlap constraint: alternate object and probe least-squares updates until the probe settles
        for _ in range(max(1, int(p.overlap_max_iterations))):
            num, den = obj_weight * obj, np.full(obj.shape, obj_weight, np.float32)
            pc, pp = np.conj(probe), np.abs(probe) ** 2
            for j, win in enumerate(windows):
                num[win] += pc * psi[j]
                den[win] += pp
            obj = (num / den).astype(obj.dtype)
            if it < p.probe_update_start:
                break
            ov = views(obj)
            pr_weight = float(p.probe_inertia) * len(windows) * float(np.mean(np.abs(obj) ** 2))
            new = (pr_weight * probe + (np.conj(ov) * psi).sum(axis=0)) / (pr_weight + (np.abs(ov) ** 2).sum(axis=0))
            if support is not None:
                new *= support
            change = np.linalg.norm(new - probe) / np.linalg.norm(new)
            probe = new.astype(probe.dtype)
            if change < p.overlap_converge_factor:
                break
    return obj, probe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=100, help="DM iterations (and ML iterations after DM)")
    ap.add_argument("--photons", type=float, default=1e8, help="photons per frame (Poisson noise)")
    ap.add_argument("--noiseless", action="store_true",
                    help="exact intensities (the limit of very high dose), no Poisson draw")
    ap.add_argument("-p", action="append", default=[], metavar="KEY=VALUE",
                    help="difframe DM parameter (TOML value), e.g. fourier_relax_factor=0")
    ap.add_argument("--ml", action="append", default=[], metavar="KEY=VALUE",
                    help="difframe ML parameter (TOML value), e.g. illumination_precond=true")
    args = ap.parse_args()
    n = args.iterations
    dm_extra, ml_extra = ({k: None if v == "None" else tomllib.loads(f"v = {v}")["v"]
                           for k, v in (s.split("=", 1) for s in given)} for given in (args.p, args.ml))
    noise = not args.noiseless
    print(f"moonflower-like scan: 161 frames of 128x128, {args.photons:.0e} photons per frame "
          f"({'Poisson counts' if noise else 'noiseless'}), DM {n}, ML {n}"
          + (f"; difframe DM with {dm_extra}" if dm_extra else "") + (f"; ML with {ml_extra}" if ml_extra else ""))
    print("errors after removing a global factor, shift and phase ramp")
    with tempfile.TemporaryDirectory() as tmp:
        # the textbook DM starts from exactly what the run flow builds: frames, starting probe and object
        run = Run(parameters(args.photons, {"dm": ("DM", n)}, Path(tmp), dm_extra, noise))
        truth = simulate(run.params.scans.sim, run.scan_context("sim")).meta["truth"]
        model = workflow.build_run_model(run, workflow.prepare_scans(run))
        (scan,) = model.scans
        p = run.params.engines.dm
        start = time.perf_counter()
        obj, probe = textbook_dm(scan.intensity, model.probes["sim"].data[0], model.objects["sim"].data[0],
                                 scan.corners, p, n)
        t_book = time.perf_counter() - start
        book = truth_errors(obj, probe, scan.corners, truth)
        print(f"  {'textbook DM ' + str(n):22s} object error {book[0]:.4f}   probe error {book[1]:.4f}   "
              f"{t_book:6.1f} s")
        del model, scan
        cases = {f"difframe DM {n}": {"dm": ("DM", n)}, f"difframe DM {n} + ML {n}": {"dm": ("DM", n), "ml": ("ML", n)}}
        for k, (name, engines) in enumerate(cases.items()):
            start = time.perf_counter()
            path = Run(parameters(args.photons, engines, Path(tmp) / str(k), dm_extra, noise,
                                  ml_extra)).run()["reconstruction"]
            elapsed = time.perf_counter() - start
            rec = read_ptyr(path)
            (ost,), (pst,) = rec.objects.values(), rec.probes.values()
            obj, probe = np.asarray(ost["data"])[0], np.asarray(pst["data"])[0]
            storage = pm.Storage(obj, np.asarray(ost["_psize"]), np.asarray(ost["_origin"]), 6.2)
            corners = pm.corners_of(np.asarray(rec.positions["sim"]), storage, probe.shape)
            err = truth_errors(obj, probe, corners, truth)
            print(f"  {name:22s} object error {err[0]:.4f}   probe error {err[1]:.4f}   {elapsed:6.1f} s (whole run)"
                  f"   ratio to textbook: object {err[0] / book[0]:.2f}, probe {err[1] / book[1]:.2f}")
    print("target: ratios <= 1 (difframe at least as accurate as the textbook DM with the same settings)")


if __name__ == "__main__":
    main()
