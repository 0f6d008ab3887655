"""RAAR and the PIE family (ePIE, rPIE, mPIE) against DM: seconds per iteration and object error, one run.

    .venv/bin/python benchmarks/ptycho_new_engines.py [--iterations 100] [--epochs 60] [--photons 1e8]
                                                      [--frames 161 1000] [--ptylab [PYTHON]]
                                                      [--skip-speed] [--skip-quality] [--dm-time]

Two parts, every figure measured in this run:

1. Speed: median seconds per iteration (PIE: per epoch, every frame visited
   once) on far-field frames of 128 x 128 (benchmarks/ptycho_engines.py's
   problem: 161 frames as ptypy's moonflower, and 1000), after warm-up
   iterations (kernels compiled or loaded from the cache), the engines taking
   turns one iteration at a time so that a changing load hits all alike.  Ratios to DM;
   target RAAR <= 1.1 x DM.  A plain numpy ePIE (one frame at a time:
   gather, FFT, modulus, inverse FFT, updates; PtyLab's ePIE is written this
   way) gives the PIE epoch a yardstick measured on the same frames; with
   ``--ptylab`` PtyLab's own ePIE (installed in a benchmark-only environment,
   by default /work/bench-ptylab: see benchmarks/ptylab_epie.py) takes turns
   with the engines, and the PIE epochs are given as ratios to it (target
   <= 0.5).  Ratios are of medians, followed in brackets by the median and
   range of the ratios of the epochs timed in the same round.
2. Quality: benchmarks/ptycho_textbook.py's moonflower-like scan with known
   truth (161 frames of 128 x 128, Poisson counts), every engine from the
   flow's starting probe and object; object and probe errors after removing
   a global factor, shift and phase ramp (difframe.ptycho.quality.truth_errors),
   the engine's total time, and the ratios to DM's error and time.  Target:
   each engine reaches at least DM's object error in at most DM's time
   (``--dm-time``: RAAR and each PIE engine run as many iterations or epochs
   as fit in the time DM took in this run).  The object error is given twice: with whole-pixel
   shifts removed (truth_errors, the issue's figures) and with the shift
   removed to 0.05 pixel (:func:`subpixel_object_error`: object and probe
   shifted together are an exact far-field ambiguity, and the fraction of a
   pixel a reconstruction settles at otherwise counts as error).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from difframe import Run
from difframe.fft import blas_one_thread
from difframe.plugins.recipes.sim import simulate
from difframe.ptycho import model as pm
from difframe.ptycho import workflow
from difframe.ptycho.quality import aligned_error, truth_errors

from ptycho_engines import in_turns, problem
from ptycho_textbook import parameters

ENGINES = ("DM", "RAAR", "ePIE", "rPIE", "mPIE")


def engine_params(name: str, iterations: int, home: Path, extra: dict | None = None, photons: float = 1e8):
    """engines.<label> of ``name`` as the flow resolves it (engine.common + engine.<name> defaults, then
    ``extra``)."""
    run = Run(run_parameters(name, iterations, home, extra, photons))
    return run.plugins.get("engine", name), run.params.engines.e


def parse_variant(variant: str, default: str, other: str) -> tuple[str, dict]:
    """(engine name, parameters) of a sweep's ``--variant``: "key=value,..." for engine ``default``,
    "<other>:key=value,..." (or just "<other>") for engine ``other``; "None" is None, integers stay integers."""
    name, _, rest = variant.partition(":") if variant.startswith(other) else (default, "", variant)
    extra = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        extra[key] = None if value == "None" else (int(value) if value.lstrip("-").isdigit() else float(value))
    return name, extra


def started_engine(name: str, iterations: int, home: Path, extra: dict, photons: float, prepared):
    """(engine, model) of ``name`` with parameters ``extra`` on the prepared scan of :func:`moonflower`,
    initialised."""
    spec, p = engine_params(name, iterations, home, extra, photons)
    model = workflow.build_run_model(Run(run_parameters(name, iterations, home, extra, photons)), prepared)
    engine = spec.factory(p, model)
    engine.initialize()
    return engine, model


def at_checkpoints(engine, checkpoints):
    """Iterate ``engine`` up to each of ``checkpoints`` (cumulative counts) in turn, yielding (count done,
    seconds spent iterating so far, the last iteration's metrics) at each: the sweeps' measuring loop."""
    done, seconds = 0, 0.0
    for count in checkpoints:
        start = time.perf_counter()
        last = engine.iterate(count - done)[-1]
        seconds += time.perf_counter() - start
        done = count
        yield done, seconds, last


def run_parameters(name: str, iterations: int, home: Path, extra: dict | None = None, photons: float = 1e8):
    """benchmarks/ptycho_textbook.py's tree with one engine, ``name``, labelled ``e``, its parameters ``extra``."""
    return parameters(photons, {"e": (name, iterations)}, home, dm_extra=extra if name == "DM" else None,
                      ml_extra=None if name == "DM" else extra)


def fresh_model(prep, probe):
    return pm.build_model({"bench": prep}, {"bench": (None, 1.0, None, 1.0)},
                          init_probe=lambda *a: probe, init_object=lambda label, shape, *a: np.ones((1, *shape)))


def interleaved_samples(engines: dict, rounds: int, warmup: int = 3) -> tuple[dict, dict]:
    """(wall, cpu): name -> array of the wall-clock and the CPU seconds (all threads of the process) of each
    timed iteration, the engines taking turns one iteration each per round (ptycho_engines.in_turns; an engine
    whose ``iterate`` returns a (wall, cpu) pair times itself).  On a loaded machine the CPU seconds of a
    single-threaded engine estimate its wall time on an idle one."""
    for engine in engines.values():
        engine.initialize()
        engine.iterate(warmup)  # past probe_update_start: every kernel compiled (or loaded), buffers touched
    samples = in_turns({name: (lambda engine=engine: engine.iterate(1)) for name, engine in engines.items()}, rounds)
    for engine in engines.values():
        engine.finalize()
    return samples


def numpy_epie_epoch(prep, probe, seed: int = 0) -> float:
    """Seconds of one epoch of a plain numpy ePIE (alpha = beta = 1), frame by frame as PtyLab writes it."""
    model = fresh_model(prep, probe)
    (scan,) = model.scans
    obj, pr = model.objects["bench"].data[0], model.probes["bench"].data[0].copy()
    amp = np.sqrt(scan.intensity)
    h, w = pr.shape
    start = time.perf_counter()
    for n in np.random.default_rng(seed).permutation(scan.num_frames):
        y, x = scan.corners[n]
        win = obj[y:y + h, x:x + w]
        psi = pr * win
        f = np.fft.fft2(psi, norm="ortho")
        f = amp[n] * np.exp(1j * np.angle(f))
        dpsi = np.fft.ifft2(f, norm="ortho") - psi
        old = win.copy()
        obj[y:y + h, x:x + w] = win + np.conj(pr) / (np.abs(pr) ** 2).max() * dpsi
        pr = pr + np.conj(old) / (np.abs(old) ** 2).max() * dpsi
    return time.perf_counter() - start


def speed(frames_list, home: Path, ptylab: str | None = None) -> None:
    print("1. seconds per iteration (PIE: per epoch), far field 128 x 128, complex64; medians of interleaved "
          "rounds, per-round ratios in brackets")
    for frames in frames_list:
        prep, probe = problem(frames, 128, 1)
        rounds = 15 if frames <= 200 else 7
        engines, worker = {}, None
        for name in ENGINES:
            spec, p = engine_params(name, 100, home)
            engines[name] = spec.factory(p, fresh_model(prep, probe))
        try:
            if ptylab:  # PtyLab's ePIE from its own environment takes turns with the others
                import ptylab_epie

                path = home / f"frames{frames}.h5"
                model = fresh_model(prep, probe)
                ptylab_epie.write_frames(path, model.scans[0], model.probes["bench"].data[0],
                                         model.objects["bench"].data[0])
                del model
                worker = ptylab_epie.Worker(ptylab, path)
                engines["PtyLab"] = ptylab_epie.PtyLabEngine(worker, "fast", rounds + 5)
            samples, cpu = interleaved_samples(engines, rounds)
        finally:
            if worker is not None:
                worker.close()
        del engines
        t = {name: float(np.median(s)) for name, s in samples.items()}
        t_cpu = {name: float(np.median(s)) for name, s in cpu.items()}
        t_np = None if ptylab else numpy_epie_epoch(prep, probe)

        def ratio(name, ref):
            per_round = samples[name] / samples[ref]
            return (f"{t[name] / t[ref]:5.2f} [{np.median(per_round):.2f}, "
                    f"{per_round.min():.2f}..{per_round.max():.2f}]")

        print(f"  {frames} frames ({rounds} rounds, load average {os.getloadavg()[0]:.1f}):")
        for name in t:
            extra = "  (target <= 1.1)" if name == "RAAR" else ""
            if name.endswith("PIE") and t_np is not None:
                extra = f"  plain numpy ePIE epoch {t_np:.3f} s: ratio {t[name] / t_np:.2f}"
            elif name.endswith("PIE"):
                extra = (f"  to PtyLab's ePIE {ratio(name, 'PtyLab')}, CPU {t_cpu[name] / t_cpu['PtyLab']:.2f}"
                         f" (target <= 0.5)")
            print(f"    {name:6s} {t[name]:7.3f} s/it (CPU {t_cpu[name]:6.3f} s)   ratio to DM {ratio(name, 'DM')}"
                  f"{extra}")


def subpixel_object_error(obj: np.ndarray, corners: np.ndarray, truth: dict, step: float = 0.05) -> float:
    """truth_errors' object error with the joint shift of object and probe removed to ``step`` of a pixel.

    In far field, object and probe moved together by any s, O(r + s) and P(r + s), change every exit wave by
    that shift only, which no intensity sees: the shift is an exact ambiguity, and a reconstruction settles at
    a fraction of a pixel from the truth that depends on the start and the engine.  truth_errors removes whole
    pixels; a remaining fraction of 0.3 pixel costs the flower about 0.03 of object error, as much as engines
    differ by.  Here the reconstruction is Fourier-shifted by fractions of a pixel around the best whole shift
    (a grid of 0.25 pixel, then of ``step`` around its best) and the smallest error is kept."""
    (dy, dx), t_obj = (np.asarray(corners) - truth["view_corners"])[0], truth["object"][0]
    placed = np.zeros_like(obj)
    h, w = min(obj.shape[0] - dy, t_obj.shape[0]), min(obj.shape[1] - dx, t_obj.shape[1])
    placed[dy:dy + h, dx:dx + w] = t_obj[:h, :w]
    t_probe = np.abs(truth["probe"][0]) ** 2
    light = np.zeros(obj.shape)
    pm.scatter_add(light, np.broadcast_to(t_probe, (len(corners), *t_probe.shape)), corners)
    lit = light > 0.1 * light.max()
    rows, cols = np.nonzero(lit.any(axis=1))[0], np.nonzero(lit.any(axis=0))[0]
    box = (slice(max(rows[0] - 8, 0), rows[-1] + 9), slice(max(cols[0] - 8, 0), cols[-1] + 9))
    obj, placed, lit = obj[box], placed[box], lit[box]  # the lit part and a margin: shorter FFTs
    best, whole = aligned_error(obj, placed, lit)
    spectrum = np.fft.fft2(obj)
    ky, kx = np.fft.fftfreq(obj.shape[0])[:, None], np.fft.fftfreq(obj.shape[1])[None, :]
    shift = np.asarray(whole, float)
    for grid in (np.arange(-0.5, 0.51, 0.25), np.arange(-0.2, 0.21, step)):
        centre = shift
        for fy in grid:
            for fx in grid:
                s = centre + (fy, fx)
                moved = np.fft.ifft2(spectrum * np.exp(-2j * np.pi * (ky * s[0] + kx * s[1])))
                err = aligned_error(moved, placed, lit, max_shift=0)[0]
                if err < best:
                    best, shift = err, s
    return best


def reconstruct(name: str, n: int, photons: float, home: Path, prepared, truth, extra: dict | None = None,
                subpixel: bool = False, budget: float | None = None):
    """((object error, probe error[, sub-pixel object error]), seconds[, iterations]) of ``n`` iterations of
    engine ``name`` (parameters ``extra``) on the moonflower-like scan ``prepared``, from the flow's starting probe
    and object.  With ``budget`` (seconds): one iteration at a time, stopping before the one that would overrun it
    (the last one's duration as the estimate) or at ``n``, and the iterations done are returned too."""
    spec, p = engine_params(name, n, home, extra, photons)
    model = workflow.build_run_model(Run(run_parameters(name, n, home, extra, photons)), prepared)
    engine = spec.factory(p, model)
    engine.initialize()
    start = time.perf_counter()
    if budget is None:
        engine.iterate(n)
    done, last = (n, 0.0) if budget is None else (0, 0.0)
    while done < n and time.perf_counter() - start + last <= budget:
        begin = time.perf_counter()
        engine.iterate(1)
        last, done = time.perf_counter() - begin, done + 1
    elapsed = time.perf_counter() - start
    engine.finalize()
    (scan,) = model.scans
    obj = model.objects["sim"].data[0]
    errors = truth_errors(obj, model.probes["sim"].data[0], scan.corners, truth)
    if subpixel:
        errors = (*errors, subpixel_object_error(obj, scan.corners, truth))
    return (errors, elapsed) if budget is None else (errors, elapsed, done)


def moonflower(photons: float, iterations: int, home: Path):
    """(truth, prepared scans) of the moonflower-like scan with ``photons`` per frame (the truth: the sim recipe's
    meta["truth"])."""
    run = Run(parameters(photons, {"e": ("DM", iterations)}, home))
    truth = simulate(run.params.scans.sim, run.scan_context("sim")).meta["truth"]
    return truth, workflow.prepare_scans(run)


def quality(iterations: int, epochs: int, photons: float, home: Path, dm_time: bool = False) -> None:
    print(f"2. moonflower-like scan, 161 frames of 128 x 128, {photons:.0e} photons per frame; DM {iterations} "
          "iterations, " + (f"the others as many iterations or epochs as fit in DM's time (PIE at most {epochs})"
                            if dm_time else f"RAAR {iterations} iterations, PIE {epochs} epochs"))
    truth, prepared = moonflower(photons, iterations, home)
    results = {}
    for name in ENGINES:
        pie = name.endswith("PIE")
        budget = results["DM"][1] if name != "DM" and dm_time else None
        # under --dm-time RAAR is not held to the PIE epochs' cap: iterations cost about DM's, so 60 would stop it
        # at 0.6 of DM's time
        most = epochs if pie else (10 * iterations if budget is not None else iterations)
        out = reconstruct(name, most, photons, home, prepared, truth, subpixel=True, budget=budget)
        results[name] = out if budget is not None else (*out, most)
    (dm_obj, _, dm_sub), dm_seconds, _ = results["DM"]
    print("  object error: whole-pixel shifts removed (truth_errors); sub-pixel: shifts removed to 0.05 pixel")
    for name, ((obj_err, probe_err, sub_err), elapsed, done) in results.items():
        print(f"  {name:5s} {done:4d} it  object error {obj_err:.4f}  sub-pixel {sub_err:.4f}  probe error "
              f"{probe_err:.4f}  {elapsed:6.2f} s   ratio to DM: object error {obj_err / dm_obj:.2f}, sub-pixel "
              f"{sub_err / dm_sub:.2f}, time {elapsed / dm_seconds:.2f}")
    print("  target: object error ratio <= 1 at time ratio <= 1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=100, help="DM and RAAR iterations (quality)")
    ap.add_argument("--epochs", type=int, default=60,
                    help="PIE epochs (quality; with --dm-time, the most epochs of PIE)")
    ap.add_argument("--dm-time", action="store_true",
                    help="RAAR and the PIE engines run as many iterations or epochs as fit in DM's time (quality): "
                         "the issue's target")
    ap.add_argument("--photons", type=float, default=1e8, help="photons per frame (quality)")
    ap.add_argument("--frames", type=int, nargs="*", default=[161, 1000], help="frame counts (speed)")
    ap.add_argument("--ptylab", metavar="PYTHON", nargs="?", const="/work/bench-ptylab/bin/python",
                    help="time PtyLab's ePIE too, in the environment of this python (benchmarks/ptylab_epie.py)")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_speed:
            speed(args.frames, Path(tmp), args.ptylab)
        if not args.skip_quality:
            quality(args.iterations, args.epochs, args.photons, Path(tmp), args.dm_time)


if __name__ == "__main__":
    with blas_one_thread():  # as a run's engines have it (difframe.ptycho.workflow)
        main()
