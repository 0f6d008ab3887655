"""difframe.ptycho.frame_fft (the sequential engines' transforms inside numba) against scipy.fft.

FFTW's plans and rocket-fft's fallback give scipy's transforms to float
rounding; the three epoch kernels give the same result with FFTW's plans as
through rocket-fft; and a kernel loaded from numba's on-disk cache by a fresh
process (where FFTW's functions sit at other addresses) still does.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import numba
import numpy as np
import pytest
import scipy.fft

from difframe.plugins.engines import multislice_kernels, opr_kernels, pie_kernels
from difframe.ptycho import frame_fft

DTYPES = [np.complex64, np.complex128]
SHAPES = [(24, 40), (3, 24, 40)]  # one frame, non-square; a stack of pods (K, H, W)
KERNELS = {"pie": pie_kernels.pie_epoch, "opr": opr_kernels.opr_epoch,
           "multislice": multislice_kernels.multislice_epoch}


@numba.njit
def _to_detector(field, transfer, plans):
    return frame_fft.to_detector(field, transfer, plans)


@numba.njit
def _from_detector(field, transfer_back, plans):
    return frame_fft.from_detector(field, transfer_back, plans)


@numba.njit
def _rocket(field, transfer):
    return frame_fft.to_detector(field, transfer)


def _random(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)


def _close(got, want, dtype):
    tol = 2e-6 if dtype == np.complex64 else 1e-13
    assert got.dtype == dtype
    assert np.abs(got - want).max() <= tol * np.abs(want).max()


def _transfer(shape, dtype):
    fy, fx = np.fft.fftfreq(shape[0])[:, None], np.fft.fftfreq(shape[1])[None, :]
    # a tilt: not symmetric under k -> -k (an exchanged forward and backward plan shows); not unitary: the scale shows
    return np.exp(-1j * (40 * (fy**2 + fx**2) + 9 * fy) + 0.1 * fy).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("route", ["FFTW", "rocket-fft"])
def test_transforms_equal_scipy(dtype, shape, route):
    x = _random(shape, dtype)
    plans = frame_fft.plans(shape, dtype) if route == "FFTW" else frame_fft.NO_PLANS
    assert len(plans) == (8 if route == "FFTW" else 0)
    far = np.empty((0, 0), dtype)
    _close(_to_detector(x.copy(), far, plans), scipy.fft.fft2(x, norm="ortho"), dtype)
    _close(_from_detector(x.copy(), far, plans), scipy.fft.ifft2(x, norm="ortho"), dtype)
    transfer = _transfer(shape[-2:], dtype)
    want = scipy.fft.ifft2(scipy.fft.fft2(x) * transfer)
    _close(_to_detector(x.copy(), transfer, plans), want, dtype)
    _close(_from_detector(x.copy(), transfer, plans), want, dtype)
    if route == "rocket-fft":
        _close(_rocket(x.copy(), transfer), want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_plans_are_executed_and_fields_they_do_not_fit_go_through_scipy(dtype):
    shape = (3, 24, 40)
    x, far = _random(shape, dtype), np.empty((0, 0), dtype)
    plans = frame_fft.plans(shape, dtype)
    assert frame_fft.plans(list(shape), dtype) is plans  # made once per kind
    swapped = plans.copy()
    swapped[frame_fft.FORWARD] = plans[frame_fft.BACKWARD]  # FFTW runs the plan it is given
    _close(_to_detector(x.copy(), far, swapped), scipy.fft.ifft2(x, norm="ortho"), dtype)
    want = scipy.fft.fft2(x, norm="ortho")
    other = frame_fft.plans((2, 24, 40), dtype)  # another stack: never handed to FFTW
    _close(_to_detector(x.copy(), far, other), want, dtype)
    _close(_to_detector(x.copy(), far, frame_fft.plans((24, 40), dtype)), want, dtype)
    other = frame_fft.plans(shape, np.complex128 if dtype == np.complex64 else np.complex64)  # another dtype
    _close(_to_detector(x.copy(), far, other), want, dtype)
    buffer = np.empty(x.size + 1, dtype)[1:]  # off FFTW's alignment
    off = buffer.reshape(shape)
    off[...] = x
    _close(_to_detector(off, far, plans), want, dtype)
    wide = np.empty((3, 24, 80), dtype)[..., ::2]  # not contiguous
    wide[...] = x
    _close(_to_detector(wide, far, plans), want, dtype)


def test_without_fftw_frames_go_through_rocket_fft_and_say_so_once(monkeypatch, caplog):
    monkeypatch.setattr(frame_fft, "_made", {})
    caplog.set_level(logging.DEBUG, logger="difframe.ptycho.frame_fft")
    assert frame_fft.plans((4, 4), np.clongdouble) is frame_fft.NO_PLANS  # a dtype FFTW lacks here
    monkeypatch.setattr(frame_fft, "_libraries", lambda prefix: [])
    frame_fft._library.cache_clear()
    try:
        for shape in ((8, 8), (2, 8, 8)):
            assert frame_fft.plans(shape, np.complex64) is frame_fft.NO_PLANS
    finally:
        frame_fft._library.cache_clear()
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert sum("rocket_fft" in message for message in said) == 2, said
    x = _random((8, 8), np.complex64)
    _close(_to_detector(x.copy(), np.empty((0, 0), np.complex64), frame_fft.NO_PLANS),
           scipy.fft.fft2(x, norm="ortho"), np.complex64)


def kernel_case(kind: str, dtype, near: bool):
    """(arguments before ``plans``, the stack shape FFTW plans for, the outputs) of one epoch of kernel ``kind``
    on a small random scan: frames of 12 x 10, two probe modes (PIE: and two object modes; e3PIE: 3 slices)."""
    rng = np.random.default_rng(3)
    real = np.finfo(dtype).dtype.type
    h, w, frames = 12, 10, 7
    n_probe, n_obj = (1, 1) if kind == "opr" else (2, 2 if kind == "pie" else 3)
    probe = (1 + 0.3 * _random((n_probe, h, w), dtype, 1)).astype(dtype)
    obj = (1 + 0.2 * _random((n_obj, 26, 23), dtype, 2)).astype(dtype)
    corners = rng.integers(0, (26 - h, 23 - w), (frames, 2))
    order = rng.permutation(frames).astype(np.int64)
    meas = rng.poisson(3.0 * n_probe, (frames, h, w)).astype(real)
    weights = (rng.random((frames, h, w)) > 0.2).astype(real)
    scale, bg = rng.uniform(0.6, 1.5, frames).astype(real), rng.uniform(0.0, 2.0, (h, w)).astype(real)
    transfer = _transfer((h, w), dtype) if near else np.empty((0, 0), dtype)
    sums = [np.zeros(frames), np.zeros(frames), np.zeros(frames), np.zeros((2, h, w), real), np.zeros((frames, 2))]
    data = [corners, order, meas, weights, scale, bg, transfer]
    tiny = float(np.finfo(real).tiny) * 1e6
    if kind == "pie":
        args = [probe, obj, *data, real(0.7), real(0.4), real(0.2), real(0.6), True, True, tiny, *sums]
        return args, (n_probe * n_obj, h, w), [probe, obj, *sums]
    if kind == "opr":
        devs = 0.1 * _random((frames, h, w), dtype, 4)
        args = [probe[0], devs, real(2.5), obj[0], *data, real(0.7), real(0.4), real(0.2),
                real(0.6), True, tiny, *sums]
        return args, (h, w), [probe, devs, obj, *sums]
    slab = _transfer((h, w), dtype).conj()
    args = [probe, obj, *data, slab, real(0.7), real(0.4), True, tiny, *sums]
    return args, (n_probe, h, w), [probe, obj, *sums]


def run_kernel(kind: str, dtype, near: bool, fftw: bool, swapped: bool = False) -> np.ndarray:
    """The outputs of one epoch, flattened into one complex128 vector; ``swapped``: FFTW's forward and backward
    plans exchanged."""
    args, shape, outputs = kernel_case(kind, dtype, near)
    plans = frame_fft.plans(shape, dtype).copy()
    if swapped:
        plans[[frame_fft.FORWARD, frame_fft.BACKWARD]] = plans[[frame_fft.BACKWARD, frame_fft.FORWARD]]
    KERNELS[kind](*args, *([plans] if fftw else []))
    return np.concatenate([np.ravel(a).astype(np.complex128) for a in outputs])


@pytest.mark.parametrize("kind", list(KERNELS))
@pytest.mark.parametrize("near", [False, True], ids=["far", "near"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_epoch_kernels_with_fftw_equal_rocket_fft(kind, near, dtype):
    got, want = run_kernel(kind, dtype, near, True), run_kernel(kind, dtype, near, False)
    assert np.abs(got - want).max() <= (1e-4 if dtype == np.complex64 else 1e-10) * np.abs(want).max()
    wrong = run_kernel(kind, dtype, near, True, swapped=True)  # the kernel runs FFTW's plans (not a stale cache)
    assert np.abs(wrong - want).max() > 1e-2 * np.abs(want).max()


CACHED_RUN = """
import sys
import numpy as np
sys.path.insert(0, {here!r})
from test_frame_fft import KERNELS, run_kernel
from difframe.ptycho import frame_fft
np.save({out!r}, run_kernel("pie", np.complex64, False, True))
stats = KERNELS["pie"].stats
print(sum(stats.cache_hits.values()), sum(stats.cache_misses.values()),
      frame_fft.plans((4, 12, 10), np.complex64)[frame_fft.EXECUTE])
"""


def test_epoch_from_numbas_disk_cache_in_a_fresh_process_equals_scipy(tmp_path):
    # This process runs the kernel first, so numba's on-disk cache (difframe's, where the suite's kernels live)
    # holds it, compiled here or stored by an earlier process; a fresh process then loads it (FFTW's functions at
    # other addresses there).  Should that process still compile (the sources changed since this process
    # stamped its entry, or the cache could not be written), it stores the kernel and a second one loads it.
    want = run_kernel("pie", np.complex64, False, False)  # through rocket-fft: scipy's transforms
    here = run_kernel("pie", np.complex64, False, True)
    assert np.abs(here - want).max() <= 1e-4 * np.abs(want).max()
    assert KERNELS["pie"].stats.cache_path  # cached on disk
    runs = []
    for k in range(2):  # the same environment (and cache) as this process
        out = tmp_path / f"run{k}.npy"
        script = CACHED_RUN.format(here=os.path.dirname(__file__), out=str(out))
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        hits, misses, _ = (int(v) for v in done.stdout.split())
        runs.append((hits, misses, np.load(out)))
        if (hits, misses) == (1, 0):
            break
        assert (hits, misses) == (0, 1)  # compiled and stored
    assert runs[-1][:2] == (1, 0)  # loaded from the cache in a fresh process
    for *_, got in runs:
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
