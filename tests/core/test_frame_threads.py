"""difframe.ptycho.frame_threads: chunking, the fixed chunk-to-worker assignment, failures."""

import threading
import time

import numpy as np
import pytest

from difframe.ptycho import frame_threads


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
    assert not any(t.name.startswith("difframe-frames") for t in threading.enumerate())
