"""difframe.fft (FFTW, in place) against scipy.fft (pocketfft) on the stacks the engines transform, one run.

    .venv/bin/python benchmarks/fft_backends.py [--rounds 15]

Stacks: the P25 example's ML chunk (52 frames x 2 modes of 100 x 100, near
field) and benchmarks/ptycho_engines.py's DM chunk (1000 frames of 128 x 128
split as the model splits them), complex64.  Each timed unit is a forward and
an inverse transform of the whole stack, as an engine's propagation makes
them: scipy with the worker threads the engines used to give it
(difframe.fft.fft_workers) and writing into a new array, difframe.fft in
place with as many threads.  The two take turns round by round so that a change of the machine's
load hits both alike; printed are the medians of wall and CPU seconds per
frame and their ratios (difframe.fft / scipy).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.fft

from difframe import fft
from difframe.ptycho import model as pm


def stacks() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    dm_frames = max(1, pm.CHUNK_BYTES // (128 * 128 * 8))
    shapes = {"P25 ML chunk 52 x 2 x 100^2": (52, 2, 100, 100), f"DM chunk {dm_frames} x 128^2": (dm_frames, 128, 128)}
    return {name: (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
            for name, shape in shapes.items()}


def pair_scipy(x: np.ndarray, workers: int) -> None:
    y = scipy.fft.fft2(x, workers=workers)
    scipy.fft.ifft2(y, workers=workers, overwrite_x=True)


def pair_fftw(x: np.ndarray) -> None:
    fft.fft2(x, overwrite=True)
    fft.ifft2(x, overwrite=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    workers = fft.fft_workers()
    print(f"forward + inverse 2-D FFT, complex64; scipy {scipy.__version__} with {workers} workers; "
          f"difframe.fft: FFTW, in place, {workers} threads for stacks of {fft.THREADED_SIZE} values and more")
    for name, x in stacks().items():
        frames = int(np.prod(x.shape[:-2]))
        runs = {"scipy": lambda: pair_scipy(x, workers), "difframe.fft": lambda: pair_fftw(x)}
        for run in runs.values():  # FFTW measures its plan here; both warm their caches
            run()
        samples = {key: [] for key in runs}
        for r in range(args.rounds):
            order = list(runs) if r % 2 == 0 else list(runs)[::-1]
            for key in order:
                wall, cpu = time.perf_counter(), time.process_time()
                runs[key]()
                samples[key].append(((time.perf_counter() - wall) / frames, (time.process_time() - cpu) / frames))
        med = {key: np.median(np.array(v), axis=0) * 1e6 for key, v in samples.items()}
        ratio = med["difframe.fft"] / med["scipy"]
        print(f"{name}: scipy {med['scipy'][0]:.1f} us/frame wall ({med['scipy'][1]:.1f} CPU), difframe.fft "
              f"{med['difframe.fft'][0]:.1f} ({med['difframe.fft'][1]:.1f} CPU): ratio wall {ratio[0]:.2f}, "
              f"CPU {ratio[1]:.2f}")


if __name__ == "__main__":
    main()
