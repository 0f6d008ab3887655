"""Passes over frame stacks a cache-sized chunk at a time, each thread working through chunks of its own.

Why: the projection engines' Fourier pass is five steps per frame (pods,
FFT, modulus step, inverse FFT, exit-wave update).  Done step after step over
8 MiB chunks, each step threaded over frames, every step streamed its chunk
through main memory again; done about 1 MiB (one core's L2 cache) at a time,
every step of a chunk on one core while the other cores take other chunks,
the same pass took 0.55-0.7 of the time (1000 frames of 128 x 128, DM).  A
task therefore runs serial numba kernels (``nogil``) and one-thread FFTs
(difframe.fft), both of which let the other threads run.

Chunk i always goes to worker i % workers, so whatever a worker accumulates
(e.g. the background's likelihood sums) adds up in the same order on every
run with the same thread count.
"""

from __future__ import annotations

import threading

import numba

#: bytes of one chunk: one core's L2 cache on the machines this was measured on (AMD EPYC, 1 MiB)
CACHE_BYTES = 2**20


def workers() -> int:
    """Threads a pass uses: those of the numba kernels (the rank's share of the node's CPUs)."""
    return numba.get_num_threads()


def chunks(frames: int, frame_bytes: int) -> list[slice]:
    """Slices of ``frames`` frames of ``frame_bytes`` bytes each (all pods), about CACHE_BYTES a slice."""
    step = max(1, CACHE_BYTES // max(1, frame_bytes))
    return [slice(start, min(start + step, frames)) for start in range(0, frames, step)]


def run(task, slices: list[slice], threads: int | None = None) -> list:
    """``[task(worker, sl) for sl in slices]`` on ``threads`` threads (default :func:`workers`), slice i done
    by worker i % threads, worker 0 being the calling thread.  The first exception (a Ctrl-C in the calling
    thread too) stops every worker after its current chunk and is raised once all have stopped."""
    threads = max(1, min(threads or workers(), len(slices)))
    results = [None] * len(slices)
    failed: list[BaseException] = []

    def work(worker: int) -> None:
        for i in range(worker, len(slices), threads):
            if failed:
                return
            try:
                results[i] = task(worker, slices[i])
            except BaseException as exc:  # noqa: B036 - handed to the calling thread, which raises it
                failed.append(exc)
                return

    others = [threading.Thread(target=work, args=(w,), name=f"difframe-frames-{w}", daemon=True)
              for w in range(1, threads)]
    for thread in others:
        thread.start()
    try:
        work(0)
    finally:
        for thread in others:
            thread.join()
    if failed:
        raise failed[0]
    return results
