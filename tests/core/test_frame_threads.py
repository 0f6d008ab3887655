"""difframe.frame_threads: chunking, the fixed chunk-to-worker assignment, failures."""

import threading
import time

import numpy as np
import pytest

from difframe import frame_threads


def test_chunks_cover_the_frames_in_cache_sized_slices():
    frame = 128 * 128 * 8
    slices = frame_threads.chunks(1003, frame)
    assert slices[0] == slice(0, frame_threads.CACHE_BYTES // frame)
    assert np.array_equal(np.concatenate([np.arange(1003)[s] for s in slices]), np.arange(1003))
    assert frame_threads.chunks(3, 10 * frame_threads.CACHE_BYTES) == [slice(0, 1), slice(1, 2), slice(2, 3)]
    assert frame_threads.chunks(0, frame) == []


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_results_in_order_chunk_i_on_worker_i_mod_threads(threads):
    slices = frame_threads.chunks(50, frame_threads.CACHE_BYTES // 4)
    seen = {}

    def task(worker, sl):
        seen[sl.start] = (worker, threading.current_thread())
        return sl.stop - sl.start

    assert frame_threads.run(task, slices, threads) == [s.stop - s.start for s in slices]
    for i, sl in enumerate(slices):
        assert seen[sl.start][0] == i % threads
    workers = {thread for _, thread in seen.values()}  # the objects are kept: distinct threads stay distinct
    assert len(workers) == threads and threading.current_thread() in workers  # the calling thread is worker 0


@pytest.mark.parametrize("failing_worker", [0, 1])
def test_a_failure_stops_every_worker_and_is_raised(failing_worker):
    slices = [slice(i, i + 1) for i in range(40)]
    done = []

    def task(worker, sl):
        if sl.start == 4 + failing_worker:
            raise RuntimeError(f"chunk {sl.start} broke")
        time.sleep(0.002)
        done.append(sl.start)
        return 0

    with pytest.raises(RuntimeError, match=f"chunk {4 + failing_worker} broke"):
        frame_threads.run(task, slices, 2)
    assert len(done) < 20  # the other worker stopped after its current chunk, not at the end of its share
    for thread in threading.enumerate():  # each has finished its work; let it leave its last line
        if thread.name.startswith("difframe-frames"):
            thread.join(timeout=2)
    assert not any(t.name.startswith("difframe-frames") for t in threading.enumerate())


@pytest.mark.parametrize("frame_bytes", [128 * 128 * 8, 2 * 101 * 101 * 8, 3 * 5 * 7 * 16])
def test_chunks_of_an_aligned_stack_start_aligned(frame_bytes):
    from difframe.fft import SIMD_ALIGNMENT

    slices = frame_threads.chunks(200, frame_bytes)
    assert all(sl.start * frame_bytes % SIMD_ALIGNMENT == 0 for sl in slices)
    assert slices[-1].stop == 200 and all(a.stop == b.start for a, b in zip(slices, slices[1:]))


def test_a_pass_started_inside_a_task_runs_on_that_task_s_thread():
    outer = frame_threads.chunks(8, frame_threads.CACHE_BYTES)

    def task(worker, sl):
        me = threading.current_thread()
        inner = frame_threads.run(lambda w, s: (w, threading.current_thread()), outer, 2)
        return all(w == 0 and t is me for w, t in inner)

    assert frame_threads.run(task, outer, 2) == [True] * 8


@pytest.mark.parametrize("kind", ["far", "far centred", "near"])
def test_propagators_split_large_stacks_over_the_workers(kind, monkeypatch):
    """A stack of many cache-sized chunks propagated in place, a chunk at a time on two workers, gives the
    whole-stack transform."""
    from difframe import fft, optics

    shape = (2, 48, 40)
    prop = {"far": optics.FarField(shape[1:], centred=False), "far centred": optics.FarField(shape[1:]),
            "near": optics.NearField(shape[1:], (1e-7, 1e-7), 1e-10, 2e-3)}[kind]
    stack = fft.empty((37, *shape))
    stack[...] = np.random.default_rng(4).normal(size=stack.shape) + 1j
    for inverse in (False, True):
        transform = prop.backward if inverse else prop.forward
        monkeypatch.setattr(frame_threads, "workers", lambda: 1)
        whole = transform(stack.copy())
        monkeypatch.setattr(frame_threads, "workers", lambda: 2)
        monkeypatch.setattr(frame_threads, "CACHE_BYTES", 3 * stack[0].nbytes)
        assert frame_threads.splits(stack)
        split = transform(stack.copy(), overwrite=True)
        np.testing.assert_allclose(split, whole, rtol=0, atol=1e-5 * np.abs(whole).max())


def test_an_interrupt_while_waiting_for_the_workers_stops_them():
    """A signal (Ctrl-C) reaching the calling thread while it waits for the others: they stop after their
    current chunk and the interrupt is raised."""
    import signal

    class Interrupted(Exception):
        pass

    def handler(signum, frame):
        raise Interrupted

    main = threading.main_thread().ident
    slow_done = []

    def task(worker, sl):
        if worker == 1:
            time.sleep(0.02)
            slow_done.append(sl.start)
        return 0

    previous = signal.signal(signal.SIGINT, handler)
    # from a thread of its own after 0.05 s: the calling thread finished its share long ago and is waiting
    timer = threading.Timer(0.05, signal.pthread_kill, (main, signal.SIGINT))
    try:
        timer.start()
        with pytest.raises(Interrupted):
            frame_threads.run(task, [slice(i, i + 1) for i in range(40)], 2)
    finally:
        timer.join()
        signal.signal(signal.SIGINT, previous)
    assert len(slow_done) <= 6  # the other worker stopped after its current chunk (and before run returned),
    time.sleep(0.2)
    assert len(slow_done) <= 6  # not after the 20 of its share
