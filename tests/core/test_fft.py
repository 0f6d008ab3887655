"""difframe.fft against scipy.fft (an independent FFT) on the stacks the engines transform."""

import numpy as np
import pytest
import scipy.fft

from difframe import fft


def _stack(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
@pytest.mark.parametrize("shape", [(3, 2, 30, 20), (7, 16, 12), (5, 6)])
@pytest.mark.parametrize("norm", ["backward", "ortho", "forward"])
@pytest.mark.parametrize("inverse", [False, True])
def test_matches_scipy(dtype, shape, norm, inverse):
    x = _stack(shape, dtype)
    ref = (scipy.fft.ifft2 if inverse else scipy.fft.fft2)(x, norm=norm)
    tol = 2e-5 if dtype == np.complex64 else 1e-12
    kept = x.copy()
    out = fft.fft2(x, inverse=inverse, norm=norm)
    assert out.dtype == dtype and out is not x
    assert np.array_equal(x, kept)  # neither planning nor the transform touched the input
    assert np.abs(out - ref).max() <= tol * np.abs(ref).max()
    inplace = fft.fft2(x, inverse=inverse, norm=norm, overwrite=True)
    assert inplace is x
    assert np.abs(x - ref).max() <= tol * np.abs(ref).max()


def test_round_trip_and_unaligned_in_place():
    raw = np.zeros(2 * 24 * 24 + 1, np.complex64)
    x = raw[1:].reshape(2, 24, 24)  # 8 bytes off any SIMD alignment
    x[...] = _stack(x.shape, np.complex64, 1)
    kept = x.copy()
    ref = scipy.fft.fft2(kept)
    assert fft.fft2(x, overwrite=True) is x
    assert np.allclose(x, ref, atol=1e-4 * np.abs(ref).max())
    fft.ifft2(x, overwrite=True)
    assert np.allclose(x, kept, atol=1e-5)


def test_other_arrays_go_through_scipy():
    real = np.random.default_rng(2).standard_normal((4, 10, 10))
    strided = _stack((4, 10, 20), np.complex64)[..., ::2]
    readonly = _stack((4, 10, 10), np.complex128)
    readonly.flags.writeable = False
    for x in (real, strided, readonly):
        ref = scipy.fft.fft2(x)
        assert np.allclose(fft.fft2(x, overwrite=True), ref, atol=1e-4)
    with pytest.raises(ValueError, match="norm"):
        fft.fft2(readonly, norm="unitary")


def test_same_input_same_bits_whatever_the_alignment():
    """One plan per kind, on aligned memory: an array off alignment gives the bits an aligned one gives (a seeded
    simulation through these transforms is reproducible)."""
    values = _stack((3, 40, 30), np.complex64, 3)
    raw = np.zeros(values.size + 1, np.complex64)
    off = raw[1:].reshape(values.shape)
    off[...] = values
    aligned = np.copy(values)
    assert np.array_equal(fft.fft2(off), fft.fft2(aligned))
    assert fft.fft2(off, overwrite=True) is off and fft.fft2(aligned, overwrite=True) is aligned
    assert np.array_equal(off, aligned)


def test_kept_plans_are_bounded_hold_no_reference_and_serve_threads():
    """Small stacks reuse their thread's plan: same bits as scipy within rounding from several threads at once,
    at most KEPT_PLANS kinds kept, and the caller's array is not kept alive by a plan."""
    import threading
    import weakref

    shapes = [(k, 8 + k, 6) for k in range(1, fft.KEPT_PLANS + 4)]
    values = {s: _stack(s, np.complex64, len(s) + s[0]) for s in shapes}
    errors = []

    def work():
        for _ in range(3):
            for s in shapes:
                x = values[s].copy()
                fft.fft2(x, overwrite=True)
                ref = scipy.fft.fft2(values[s])
                if np.abs(x - ref).max() > 2e-5 * np.abs(ref).max():
                    errors.append(s)
        errors.append(len(fft._kept.plans))

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [fft.KEPT_PLANS] * 3  # no wrong result; each thread kept its last KEPT_PLANS kinds
    for shape in [(2, 5, 7), (2, 512, fft.THREADED_SIZE // 1024)]:  # one thread; as many as the process may use
        x = fft.empty(shape)
        x[...] = _stack(shape, np.complex64)
        ref = scipy.fft.fft2(x)
        alive = weakref.ref(x)
        for _ in range(2):  # a new plan, then the kept one
            fft.fft2(x, overwrite=True)
            fft.ifft2(x, overwrite=True)
        assert np.abs(fft.fft2(x) - ref).max() <= 2e-5 * np.abs(ref).max()
        del x
        assert alive() is None


def _in_fresh_process(code: str, cache: str) -> str:
    import os
    import subprocess
    import sys

    env = {**os.environ, "DIFFRAME_CACHE_DIR": cache}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


# in a fresh process: transform a stack of a kind no earlier run measured, report whether FFTW knew the kind
# before (a plan from wisdom alone) and whether the result is scipy's
_WISDOM_PROBE = """
import numpy as np, pyfftw, scipy.fft
from difframe import fft
x = fft.empty((3, 38, 26))
x[...] = np.arange(x.size).reshape(x.shape) % 7 + 1j
fft._load_wisdom()
y = fft.empty(x.shape)
try:
    pyfftw.FFTW(y, y, axes=(-2, -1), flags=("FFTW_MEASURE", "FFTW_DESTROY_INPUT", "FFTW_WISDOM_ONLY"))
    known = "known"
except RuntimeError:
    known = "unknown"
ref = scipy.fft.fft2(x)
ok = np.allclose(fft.fft2(x, overwrite=True), ref, atol=1e-4 * abs(ref).max())
print(known, ok)
"""


def test_measured_plans_are_kept_for_later_runs(tmp_path):
    """A kind measured in one run is known to the next from the wisdom file; a corrupt file is passed over and
    replaced; an empty DIFFRAME_CACHE_DIR keeps nothing."""
    import json

    cache = str(tmp_path)
    assert _in_fresh_process(_WISDOM_PROBE, cache) == "unknown True"
    files = list(tmp_path.glob("fftw-wisdom-*.json"))
    assert len(files) == 1 and "fftw" in json.loads(files[0].read_text())["fftw"][1]  # single precision wisdom
    assert _in_fresh_process(_WISDOM_PROBE, cache) == "known True"
    files[0].write_bytes(b"\x00(fftw-3 garbage")
    assert _in_fresh_process(_WISDOM_PROBE, cache) == "unknown True"
    assert json.loads(files[0].read_text())["fftw"]  # rewritten whole
    assert _in_fresh_process(_WISDOM_PROBE, "") == "unknown True"  # no file read (the user's cache neither)



def blas_threads() -> set:
    import threadpoolctl

    return {lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"}


def test_blas_one_thread_limits_blas_and_lifts_the_limit_after():
    before = blas_threads()
    with fft.blas_one_thread():
        assert blas_threads() <= {1}
    assert blas_threads() == before
