"""Batched 2-D FFTs over the last two axes through FFTW (pyFFTW), in place on the caller's arrays.

Why: the engines spend half their time in stacks of small 2-D transforms
(P25: 200 x 2 pods of 100 x 100, several thousand times a run).  FFTW's
measured plans, in place, do these in 0.45 of the time scipy's pocketfft
takes with as many threads (0.55 for 128 x 128 frames; idle machine,
benchmarks/fft_backends.py).

The first transform of a given stack shape, dtype and direction is planned
with FFTW_MEASURE on a scratch array (the caller's data is never touched by
planning); FFTW keeps what it measured ("wisdom"), every later plan of that
kind is made from it, and the wisdom goes to a file in the user's cache
(:func:`wisdom_file`) that later runs start from (measuring P25's kinds took
~0.7 s a run).  Transforms run on SIMD-aligned memory only (an array off
alignment goes through an aligned copy), so one plan serves every array of a
kind and a process gives bit-identical results for identical input (a
simulation with a seed is reproducible).  Arrays FFTW cannot take (not
complex64 or complex128, not C-contiguous) go through scipy.fft, which gives
the same result.

Stacks of at least THREADED_SIZE values are transformed with as many
threads as the process may use (:func:`fft_workers`, as the numba kernels);
smaller ones on one thread, where starting threads costs more than it saves.
Each thread keeps the plans of its last KEPT_PLANS kinds (a plan made from
wisdom cost ~25 us on one thread, ~0.3 ms on two: as much as transforming a
64 x 64 frame, and the engines' cache-sized chunks are transformed hundreds
of times per iteration); a kept plan is pointed at the caller's array for
one execution only, so it holds no reference to it.

``norm`` has numpy's meaning: "backward" (inverse scaled by 1/N), "ortho"
(both by 1/sqrt(N)), "forward" (forward scaled by 1/N).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pyfftw
import scipy.fft

_FLAGS = ("FFTW_MEASURE", "FFTW_DESTROY_INPUT")
#: stacks with fewer values are transformed on one thread
THREADED_SIZE = 2**18
#: the alignment (bytes) FFTW's plans here assume: arrays off it are transformed through an aligned copy
SIMD_ALIGNMENT = pyfftw.simd_alignment
#: plans each thread keeps, the most recently used kinds
KEPT_PLANS = 16
_kept = threading.local()
#: a wisdom file larger than this is not FFTW's (a few kB per kind of transform)
_WISDOM_BYTES = 2**22
log = logging.getLogger(__name__)
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


def blas_one_thread():
    """A context in which BLAS (the OpenBLAS or MKL numpy and scipy load) runs on one thread.

    Why: the engines call BLAS only for small products (norms, mode overlaps,
    OPR's truncation) between kernels that already use every core the rank
    may (:func:`fft_workers`), and OpenBLAS starts as many threads as the
    node has CPUs, which then spin after each call: under mpiexec every rank's
    BLAS would take every core, and on a busy machine OPR fitted 65 epochs in
    DM's time with one BLAS thread where 43 with OpenBLAS's own (119 against
    20 on the tests' small drifting scan).  On an idle machine it changes
    nothing measurable (DM 0.97x and 1.04x, P25 the same, interleaved runs).
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def fft2(x: np.ndarray, *, inverse: bool = False, norm: str = "backward", overwrite: bool = False) -> np.ndarray:
    """2-D (inverse) FFT of ``x`` (..., H, W) over its last two axes; with ``overwrite`` the result is written
    into a writeable C-contiguous complex ``x`` (the returned array is then ``x``; other arrays go through
    scipy, which may write elsewhere)."""
    if norm not in ("backward", "ortho", "forward"):
        raise ValueError(f"norm must be 'backward', 'ortho' or 'forward', got {norm!r}")
    if x.dtype not in (np.complex64, np.complex128) or not x.flags.c_contiguous or x.ndim < 2 or x.size == 0:
        transform = scipy.fft.ifft2 if inverse else scipy.fft.fft2
        return transform(x, norm=norm, overwrite_x=overwrite)
    in_place = overwrite and x.flags.writeable and pyfftw.is_byte_aligned(x, SIMD_ALIGNMENT)
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
    """Make sure FFTW's wisdom holds a measured plan of this kind: from the wisdom file of earlier runs, else
    measured once on an aligned scratch array (then written to that file)."""
    key = (shape, dtype, direction, threads)
    if key in _planned:
        return
    with _planning:
        if key in _planned:
            return
        if not _planned:
            _load_wisdom()
        scratch = pyfftw.empty_aligned(shape, dtype=dtype)
        try:
            pyfftw.FFTW(scratch, scratch, axes=(-2, -1), direction=direction, flags=(*_FLAGS, "FFTW_WISDOM_ONLY"),
                        threads=threads)
        except RuntimeError:  # not known yet: measure it
            pyfftw.FFTW(scratch, scratch, axes=(-2, -1), direction=direction, flags=_FLAGS, threads=threads)
            _save_wisdom()
        _planned.add(key)


# -- wisdom kept between runs ----------------------------------------------------------------------


def wisdom_file() -> Path | None:
    """Where measured plans are kept between runs: ``$DIFFRAME_CACHE_DIR`` (empty: nowhere), else
    ``$XDG_CACHE_HOME/difframe`` or ``~/.cache/difframe``; one file per FFTW version and CPU model, since a
    plan measured on one CPU is correct but not the fastest on another."""
    root = os.environ.get("DIFFRAME_CACHE_DIR")
    if root == "":
        return None
    if root is None:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "difframe"
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    machine = hashlib.sha256(f"{pyfftw.__version__} {platform.machine()} {cpu}".encode()).hexdigest()[:16]
    return Path(root) / f"fftw-wisdom-{machine}.json"


def _load_wisdom() -> None:
    """Import the wisdom file's plans into FFTW; a missing, unreadable or corrupt file is passed over."""
    path = wisdom_file()
    if path is None or not path.is_file():
        return
    try:
        if path.stat().st_size > _WISDOM_BYTES:
            raise ValueError(f"larger than {_WISDOM_BYTES} bytes")
        parts = json.loads(path.read_text(encoding="ascii"))["fftw"]
        if not (isinstance(parts, list) and len(parts) == 3 and all(isinstance(p, str) for p in parts)):
            raise ValueError("no list of FFTW's three wisdom strings")
        pyfftw.import_wisdom(tuple(p.encode("ascii") for p in parts))
    except (OSError, ValueError, KeyError, TypeError, UnicodeError) as exc:
        log.info("FFTW wisdom file %s passed over (%s); plans are measured afresh", path, exc)


def _save_wisdom() -> None:
    """Write FFTW's wisdom to the wisdom file (atomically: concurrent runs never see half a file)."""
    path = wisdom_file()
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"fftw": [w.decode("ascii") for w in pyfftw.export_wisdom()]})
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=path.name, suffix=".tmp", delete=False,
                                         encoding="ascii") as tmp:
            tmp.write(text)
        os.replace(tmp.name, path)
    except OSError as exc:
        log.debug("FFTW wisdom not kept in %s: %s", path, exc)
