"""Passes over frame stacks a cache-sized chunk at a time, each thread working through chunks of its own.

Why: the projection engines' Fourier pass is five steps per frame (pods,
FFT, modulus step, inverse FFT, exit-wave update).  Done step after step over
8 MiB chunks, each step threaded over frames, every step streamed its chunk
through main memory again; done about 1 MiB (L2 and L3 cache) at a time,
every step of a chunk on one core while the other cores take other chunks,
the same pass took 0.55-0.7 of the time (1000 frames of 128 x 128, DM).  A
task therefore runs serial numba kernels (``nogil``) and one-thread FFTs
(difframe.fft), both of which let the other threads run.  The propagators
(difframe.optics) send large stacks through :func:`in_chunks` the same way:
a near-field propagation (FFT, transfer function, inverse FFT) of P25's
chunks took half the time of FFTW's own threads over the whole stack
(on a busy machine; idle, the FFT pair of 1000 frames of 128 x 128 took about
0.8 of the threaded time).

Chunk i always goes to worker i % workers, so whatever a worker accumulates
(e.g. the background's likelihood sums) adds up in the same order on every
run with the same thread count.  A pass started from inside a task runs on
that task's thread.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from difframe.fft import SIMD_ALIGNMENT, fft_workers

#: bytes of one chunk: twice a core's L2 on the machines this was measured on (AMD EPYC, 512 KiB a core, 32 MiB
#: L3), which spills to L3; chunks of 512 and 256 KiB took 1.05x and 1.11x DM's CPU time (more chunks, more
#: per-chunk work: kernel calls, FFT plans)
CACHE_BYTES = 2**20
_inside = threading.local()


def workers() -> int:
    """Threads a pass uses: as many as the FFTs and numba kernels (the rank's share of the node's CPUs)."""
    return fft_workers()


def chunks(frames: int, frame_bytes: int) -> list[slice]:
    """Slices of ``frames`` frames of ``frame_bytes`` bytes each (all pods), about CACHE_BYTES a slice; each
    slice starts a whole number of SIMD alignments after the first, so that chunks of an aligned stack are
    aligned (FFTW transforms them in place)."""
    step = aligned_step(frame_bytes, CACHE_BYTES)
    return [slice(start, min(start + step, frames)) for start in range(0, frames, step)]


def aligned_step(frame_bytes: int, target_bytes: int) -> int:
    """Frames per chunk of about ``target_bytes`` (at least one), a multiple of the frames that span a whole
    number of SIMD alignments."""
    frame_bytes = max(1, frame_bytes)
    unit = SIMD_ALIGNMENT // math.gcd(frame_bytes, SIMD_ALIGNMENT)
    return max(1, target_bytes // frame_bytes) // unit * unit or unit


def run(task, slices: list[slice], threads: int | None = None) -> list:
    """``[task(worker, sl) for sl in slices]`` on ``threads`` threads (default :func:`workers`), slice i done
    by worker i % threads, worker 0 being the calling thread.  The first exception (a Ctrl-C in the calling
    thread too) stops every worker after its current chunk and is raised once all have stopped."""
    threads = 1 if getattr(_inside, "task", False) else max(1, min(threads or workers(), len(slices)))
    results = [None] * len(slices)
    failed: list[BaseException] = []

    finished = [threading.Event() for _ in range(threads)]

    def work(worker: int) -> None:
        nested = getattr(_inside, "task", False)
        _inside.task = True
        try:
            for i in range(worker, len(slices), threads):
                if failed:
                    return
                results[i] = task(worker, slices[i])
        except BaseException as exc:  # noqa: B036 - handed to the calling thread, which raises it
            failed.append(exc)
        finally:
            _inside.task = nested
            finished[worker].set()

    for w in range(1, threads):
        threading.Thread(target=work, args=(w,), name=f"difframe-frames-{w}", daemon=True).start()
    try:
        work(0)
    finally:
        # events, not Thread.join: a join a signal interrupts leaves its thread looking finished (CPython)
        for event in finished:
            while not event.is_set():
                try:
                    event.wait()
                except BaseException as exc:  # noqa: B036 - a Ctrl-C while waiting: the workers stop too
                    failed.append(exc)
    if failed:
        raise failed[0]
    return results


def in_chunks(transform, stack: np.ndarray) -> np.ndarray:
    """``transform(piece)`` on every cache-sized piece of ``stack`` (frames, ...) on every worker; the
    transform works in place, so ``stack`` holds the result (and is returned)."""
    run(lambda worker, sl: transform(stack[sl]), chunks(len(stack), stack[0].nbytes if len(stack) else 1))
    return stack


def splits(stack: np.ndarray) -> bool:
    """Whether :func:`in_chunks` should take ``stack``: a writeable C-contiguous complex stack (frames, ...) of
    at least a chunk per worker (with fewer, FFTW's own threads share each transform)."""
    return (stack.ndim >= 3 and stack.dtype.kind == "c" and stack.flags.c_contiguous and stack.flags.writeable
            and len(chunks(len(stack), stack[0].nbytes)) >= workers() > 1)
