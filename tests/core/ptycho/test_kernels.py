"""Each fused kernel of difframe.ptycho.kernels against a plain numpy statement of the same maths."""

from __future__ import annotations

import numpy as np
import pytest

from difframe.ptycho import kernels
from difframe.ptycho import model as pm

from kernel_cases import FRAMES, SHAPE, close, pods_reference


def _object_reference(c, probe_conj, stack):
    n_probe, n_obj = c["probe"].shape[0], c["obj"].shape[0]
    contrib = (probe_conj[None, :, None] * stack.reshape(FRAMES, n_probe, n_obj, *SHAPE)).sum(axis=1)
    num = np.zeros_like(c["obj"])
    pm.scatter_add(num, contrib, c["corners"])
    return num


@pytest.mark.parametrize("threads", [1, 2])
def test_add_object_update(kernel_case, threads, monkeypatch):
    c = kernel_case
    monkeypatch.setattr(kernels.numba, "get_num_threads", lambda: threads)  # bands for this many threads
    probe_conj = np.conj(c["probe"]) * c["real"].type(0.5)
    power = (np.abs(c["probe"]) ** 2).sum(axis=0).astype(c["real"])
    num, den = np.ones_like(c["obj"]), np.ones(c["obj"].shape[1:], c["real"])
    kernels.add_object_update(num, den, probe_conj, power, c["stack"], c["corners"])
    close(num, 1 + _object_reference(c, probe_conj, c["stack"]), c["tol"])
    den_ref = np.ones(c["obj"].shape[1:])
    pm.scatter_add(den_ref, np.broadcast_to(power, (FRAMES, *SHAPE)), c["corners"])
    close(den, den_ref, c["tol"])
    grad = np.zeros_like(c["obj"])
    kernels.add_object_update(grad, None, probe_conj, None, c["stack"], c["corners"])
    close(grad, _object_reference(c, probe_conj, c["stack"]), c["tol"])


def test_add_probe_update(kernel_case):
    c = kernel_case
    n_probe, n_obj = c["probe"].shape[0], c["obj"].shape[0]
    views = pm.gather(c["obj"], c["corners"], SHAPE)
    stack = c["stack"].reshape(FRAMES, n_probe, n_obj, *SHAPE)
    num_ref = 0.25 * (np.conj(views)[:, None] * stack).sum(axis=(0, 2))
    den_ref = 0.25 * (np.abs(views) ** 2).sum(axis=(0, 1))
    num, den = np.zeros_like(c["probe"]), np.zeros(SHAPE, c["real"])
    kernels.add_probe_update(num, den, c["obj"], c["stack"], c["corners"], weight=0.25)
    close(num, num_ref, c["tol"])
    close(den, den_ref, c["tol"])
    grad = np.zeros_like(c["probe"])
    kernels.add_probe_update(grad, None, c["obj"], c["stack"], c["corners"], weight=0.25)
    close(grad, num_ref, c["tol"])


def test_divide_by_map(kernel_case):
    c = kernel_case
    den = c["rng"].uniform(0.5, 2.0, c["obj"].shape[1:]).astype(c["real"])
    out = np.empty_like(c["obj"])
    kernels.divide_by_map(c["obj"], den, out)
    close(out, c["obj"] / den, c["tol"])


def test_row_bands_share_the_window_rows_evenly():
    starts = np.array([0, 0, 0, 50, 90])
    bands = kernels.row_bands(starts, 10, 100, 2)
    assert bands[0] == 0 and bands[-1] == 100 and len(bands) == 3
    # 50 window rows in all: the cut falls where the first 25 are covered (rows 0..9 carry 3 each)
    assert 8 <= bands[1] <= 10
    assert kernels.row_bands(starts, 10, 100, 1).tolist() == [0, 100]


@pytest.mark.parametrize("threaded", [True, False])
def test_pods(kernel_case, threaded):
    c = kernel_case
    out = np.empty_like(c["stack"])
    (kernels.pods if threaded else kernels.pods_serial)(c["probe"], c["obj"], c["corners"], out)
    close(out, pods_reference(c), c["tol"])


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
@pytest.mark.parametrize("sigma, shape", [(3.0, (60, 44)), (12.0, (150, 170))])  # a 2-D FFT pair; pruned columns
def test_gaussian_smooth_is_a_periodic_gaussian_filter_times_scale(dtype, sigma, shape):
    """Against scipy.ndimage's real-space Gaussian filter with wrapped edges (an independent computation)."""
    import scipy.ndimage

    from difframe.ptycho import model as pm

    rng = np.random.default_rng(7)
    obj = (rng.normal(size=(2, *shape)) + 1j * rng.normal(size=(2, *shape))).astype(dtype)
    got = pm.gaussian_smooth(obj, sigma, scale=0.25)
    ref = [0.25 * (scipy.ndimage.gaussian_filter(o.real, sigma, mode="grid-wrap", truncate=8)
                   + 1j * scipy.ndimage.gaussian_filter(o.imag, sigma, mode="grid-wrap", truncate=8)) for o in obj]
    assert got.dtype == dtype
    np.testing.assert_allclose(got, np.array(ref), atol=2e-5 * np.abs(ref).max())
