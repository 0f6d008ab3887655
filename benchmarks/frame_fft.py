"""The sequential engines' per-frame FFTs: FFTW's plans (difframe.ptycho.frame_fft) against rocket-fft's pocketfft.

    .venv/bin/python benchmarks/frame_fft.py [--frames 161 1000] [--rounds 9] [--engines ePIE rPIE [OPR e3PIE]]

Every figure is measured in this run, the two routes taking turns so that
the machine's changing speed hits both alike:

1. One frame's far-field transform pair (to_detector + from_detector of a
   (1, 128, 128) stack, in a numba loop, as inside the epochs), complex64 and
   complex128: microseconds per pair, median of interleaved repeats.
2. Seconds per epoch of ePIE and rPIE (``--engines``: also OPR, e3PIE with 2
   slices) on benchmarks/ptycho_engines.py's problem (far field, 128 x 128,
   complex64): the same engine, the same seed, once with FFTW's plans and
   once with frame_fft.NO_PLANS (the same compiled kernel transforming
   through rocket-fft), one epoch each per round after warm-up epochs, an
   engine's two routes one after the other, in alternating order; medians,
   and the median and range of the per-round ratios.  The epoch's kernel runs
   on the calling thread: the ratio of that thread's CPU seconds is not
   changed by other processes taking the cores (on a shared machine it is
   the steadier figure; OPR's truncation after each epoch also runs on BLAS's
   threads, which it leaves out).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

import numba
import numpy as np

from difframe.fft import blas_one_thread
from difframe.plugins.engines import multislice, opr, pie
from difframe.ptycho import frame_fft

from ptycho_engines import engine_params, problem
from ptycho_new_engines import fresh_model


@numba.njit
def _pairs(field, far, plans, count):
    for _ in range(count):
        field = frame_fft.from_detector(frame_fft.to_detector(field, far, plans), far, plans)
    return field


FACTORIES = {**{name: (pie._factory(name), pie.VARIANTS[name][1], {}) for name in pie.VARIANTS},
             "OPR": (opr.factory, opr.PARAMETERS, {}), "e3PIE": (multislice.factory, multislice.PARAMETERS,
                                                             {"num_slices": 2})}


@contextlib.contextmanager
def _route(fftw: bool):
    """The engines' plans: FFTW's, or none (rocket-fft)."""
    if fftw:
        yield
        return
    plans = frame_fft.plans
    frame_fft.plans = lambda shape, dtype: frame_fft.NO_PLANS
    try:
        yield
    finally:
        frame_fft.plans = plans


def _ratios(a, b) -> str:
    r = np.asarray(a) / np.asarray(b)
    return f"{np.median(a) / np.median(b):.2f} [{np.median(r):.2f}, {r.min():.2f}..{r.max():.2f}]"


def transform_pairs(repeats: int = 15, count: int = 400) -> None:
    print("1. one (1, 128, 128) far-field transform pair inside numba, microseconds; FFTW / rocket-fft")
    for dtype in (np.complex64, np.complex128):
        field = (np.random.default_rng(0).standard_normal((1, 128, 128)) * (1 + 1j)).astype(dtype)
        far, routes = np.empty((0, 0), dtype), {"FFTW": frame_fft.plans(field.shape, dtype),
                                                "rocket-fft": frame_fft.NO_PLANS}
        times = {name: [] for name in routes}
        for name, plans in routes.items():
            _pairs(field, far, plans, 2)
        for r in range(repeats):
            for name in (list(routes) if r % 2 else list(routes)[::-1]):
                start = time.perf_counter()
                _pairs(field, far, routes[name], count)
                times[name].append((time.perf_counter() - start) / count * 1e6)
        print(f"  {np.dtype(dtype).name:10s} FFTW {np.median(times['FFTW']):6.1f} us, rocket-fft "
              f"{np.median(times['rocket-fft']):6.1f} us: ratio {_ratios(times['FFTW'], times['rocket-fft'])}")


def epochs(frames_list, names, rounds: int, warmup: int = 2) -> None:
    print("2. seconds per epoch, far field 128 x 128, complex64; medians of interleaved rounds, FFTW / rocket-fft "
          "(per-round ratios: median, range)")
    for frames in frames_list:
        prep, probe = problem(frames, 128, 1)
        engines = {}
        for name in names:
            factory, schema, options = FACTORIES[name]
            for fftw in (True, False):
                engine = factory(engine_params(schema, **options), fresh_model(prep, probe))
                engine.initialize()
                with _route(fftw):
                    engine.iterate(warmup)
                engines[name, fftw] = engine
        times, cpu = {key: [] for key in engines}, {key: [] for key in engines}
        for r in range(rounds):  # an engine's two routes in turn, which goes first alternating: what runs before
            for name in names:  # (e.g. OPR's SVD leaving BLAS threads spinning) hits both alike
                for fftw in ((True, False) if r % 2 else (False, True)):
                    with _route(fftw):
                        start, start_cpu = time.perf_counter(), time.thread_time()
                        engines[name, fftw].iterate(1)
                        times[name, fftw].append(time.perf_counter() - start)
                        cpu[name, fftw].append(time.thread_time() - start_cpu)
        print(f"  {frames} frames ({rounds} rounds, load average {os.getloadavg()[0]:.1f}):")
        for name in names:
            fast, slow = times[name, True], times[name, False]
            print(f"    {name:5s}: FFTW {np.median(fast):.3f} s, rocket-fft {np.median(slow):.3f} s per epoch: "
                  f"ratio {_ratios(fast, slow)}; CPU of the calling thread "
                  f"{_ratios(cpu[name, True], cpu[name, False])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[161, 1000])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--engines", nargs="+", default=["ePIE", "rPIE"], choices=list(FACTORIES))
    args = parser.parse_args()
    transform_pairs()
    epochs(args.frames, args.engines, args.rounds)


if __name__ == "__main__":
    with blas_one_thread():  # as a run's engines have it (difframe.ptycho.workflow)
        main()
