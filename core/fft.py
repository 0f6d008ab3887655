"""Batched 2-D FFTs over the last two axes through FFTW (pyFFTW), in place on the caller's arrays.

Why: the engines spend half their time in stacks of small 2-D transforms
(P25: 200 x 2 pods of 100 x 100, several thousand times a run).  FFTW's
measured plans, in place, do these in 0.45 of the time scipy's pocketfft
takes with as many threads (0.55 for 128 x 128 frames; idle machine,
benchmarks/fft_backends.py).

The first transform of a given stack shape, dtype and direction is planned
with FFTW_MEASURE on a scratch array (the caller's data is never touched by
planning); FFTW keeps what it measured ("wisdom"), so every later plan of
that kind is made from it in about 0.1 ms and is used once, holding no
reference to the caller's arrays.  Transforms run on SIMD-aligned memory
only (an array off alignment goes through an aligned copy), so one plan
serves every array of a kind and a process gives bit-identical results for
identical input (a simulation with a seed is reproducible).  Arrays FFTW cannot take (not complex64
or complex128, not C-contiguous) go through scipy.fft, which gives the same
result.  Stacks of at least THREADED_SIZE values are transformed with as
many threads as the process may use (:func:`fft_workers`, as the numba
kernels); smaller ones on one thread, where starting threads costs more than
it saves.  Each thread keeps the plans of its last KEPT_PLANS kinds (a plan
made from wisdom cost ~25 us on one thread, ~0.3 ms on two: as much as
transforming a 64 x 64 frame, and the engines' cache-sized chunks are
transformed hundreds of times per iteration); a kept plan is pointed at the
caller's array for one execution only, so it holds no reference to it.  ``norm`` has numpy's meaning: "backward" (inverse scaled by
1/N), "ortho" (both by 1/sqrt(N)), "forward" (forward scaled by 1/N).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

import numpy as np
import pyfftw
import scipy.fft

_FLAGS = ("FFTW_MEASURE", "FFTW_DESTROY_INPUT")
#: stacks with fewer values are transformed on one thread
THREADED_SIZE = 2**18
#: plans each thread keeps, the most recently used kinds
KEPT_PLANS = 16
_kept = threading.local()
_planned: set[tuple] = set()
_planning = threading.Lock()


def fft_workers() -> int:
    """Threads for the FFTs and the engines' kernels: the CPUs this process may use, shared among the MPI ranks
    a launcher started on this node (``MPI_LOCALNRANKS`` from MPICH's hydra, Open MPI's local size)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    local = os.environ.get("MPI_LOCALNRANKS") or os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE") or "1"
    return max(1, cpus // max(1, int(local)))


def fft2(x: np.ndarray, *, inverse: bool = False, norm: str = "backward", overwrite: bool = False) -> np.ndarray:
    """2-D (inverse) FFT of ``x`` (..., H, W) over its last two axes; with ``overwrite`` the result is written
    into a writeable C-contiguous complex ``x`` (the returned array is then ``x``; other arrays go through
    scipy, which may write elsewhere)."""
    if norm not in ("backward", "ortho", "forward"):
        raise ValueError(f"norm must be 'backward', 'ortho' or 'forward', got {norm!r}")
    if x.dtype not in (np.complex64, np.complex128) or not x.flags.c_contiguous or x.ndim < 2 or x.size == 0:
        transform = scipy.fft.ifft2 if inverse else scipy.fft.fft2
        return transform(x, norm=norm, overwrite_x=overwrite)
    in_place = overwrite and x.flags.writeable and pyfftw.is_byte_aligned(x, pyfftw.simd_alignment)
    y = x if in_place else pyfftw.empty_aligned(x.shape, dtype=x.dtype)
    if not in_place:
        y[...] = x
    direction = "FFTW_BACKWARD" if inverse else "FFTW_FORWARD"
    _execute(y, direction, fft_workers() if y.size >= THREADED_SIZE else 1)
    scaled = {"backward": inverse, "forward": not inverse, "ortho": True}[norm]
    if scaled:
        n = y.shape[-1] * y.shape[-2]
        y *= y.real.dtype.type(1.0 / np.sqrt(n) if norm == "ortho" else 1.0 / n)
    if overwrite and y is not x and x.flags.writeable:  # an array off alignment: the result goes back into it
        x[...] = y
        return x
    return y


def empty(shape, dtype=np.complex64) -> np.ndarray:
    """An uninitialised array on SIMD-aligned memory: :func:`fft2` transforms it in place without a copy."""
    return pyfftw.empty_aligned(shape, dtype=dtype)


def ifft2(x: np.ndarray, *, norm: str = "backward", overwrite: bool = False) -> np.ndarray:
    """Inverse of :func:`fft2` (same ``norm``)."""
    return fft2(x, inverse=True, norm=norm, overwrite=overwrite)


def _execute(y: np.ndarray, direction: str, threads: int) -> None:
    """Transform the aligned stack ``y`` in place with this thread's kept plan of its kind."""
    plans = _kept.__dict__.setdefault("plans", OrderedDict())
    key = (y.shape, y.strides, y.dtype, direction, threads)
    if key in plans:
        plans.move_to_end(key)
        plan, rest = plans[key]
        plan.update_arrays(y, y)
    else:
        _learn(y.shape, y.dtype, direction, threads)
        plan = pyfftw.FFTW(y, y, axes=(-2, -1), direction=direction, flags=(*_FLAGS, "FFTW_WISDOM_ONLY"),
                           threads=threads)  # from wisdom: the data are not touched
        # a kept plan rests on a view of one aligned element with the plan's shape and strides, never
        # executed: it keeps no caller's array alive and costs no memory
        one = pyfftw.empty_aligned(1, dtype=y.dtype)
        rest = np.lib.stride_tricks.as_strided(one, shape=y.shape, strides=y.strides, writeable=False)
        plans[key] = plan, rest
        if len(plans) > KEPT_PLANS:
            plans.popitem(last=False)
    try:
        plan.execute()
    finally:
        plan.update_arrays(rest, rest)


def _learn(shape, dtype, direction: str, threads: int) -> None:
    """Measure a plan of this kind once on an aligned scratch array, so that FFTW's wisdom holds it."""
    key = (shape, dtype, direction, threads)
    if key in _planned:
        return
    with _planning:
        if key not in _planned:
            scratch = pyfftw.empty_aligned(shape, dtype=dtype)
            pyfftw.FFTW(scratch, scratch, axes=(-2, -1), direction=direction, flags=_FLAGS, threads=threads)
            _planned.add(key)
