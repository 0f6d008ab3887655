"""Each fused kernel of difframe.ptycho.kernels against a plain numpy statement of the same maths."""

from __future__ import annotations

import numpy as np
import pytest

from difframe.ptycho import kernels
from difframe.ptycho import model as pm

SHAPE = (12, 10)
FRAMES = 9


def _complex(rng, shape, dtype):
    return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(dtype)


@pytest.fixture(params=[(np.complex64, 1, 1), (np.complex128, 2, 1), (np.complex64, 2, 3)],
                ids=["single-1x1", "double-2x1", "single-2x3"])
def case(request):
    """Random probe (P modes), object (O modes), overlapping windows, frames and stacks (N, P*O, H, W)."""
    dtype, n_probe, n_obj = request.param
    rng = np.random.default_rng(7)
    real = np.finfo(dtype).dtype
    probe = _complex(rng, (n_probe, *SHAPE), dtype)
    obj = _complex(rng, (n_obj, 30, 27), dtype)
    corners = rng.integers(0, (30 - SHAPE[0], 27 - SHAPE[1]), (FRAMES, 2))
    pods = n_probe * n_obj
    return {
        "dtype": dtype, "real": real, "probe": probe, "obj": obj, "corners": corners, "rng": rng,
        "stack": _complex(rng, (FRAMES, pods, *SHAPE), dtype),
        "intensity": rng.poisson(3.0, (FRAMES, *SHAPE)).astype(real),
        "tol": 2e-5 if dtype == np.complex64 else 1e-12,
    }


def _pods(c, obj=None, probe=None):
    """Reference pods (N, P*O, H, W) by fancy-index gather."""
    obj = c["obj"] if obj is None else obj
    probe = c["probe"] if probe is None else probe
    views = pm.gather(obj, c["corners"], SHAPE)
    return pm.exit_waves(probe, views).reshape(FRAMES, -1, *SHAPE)


def _close(a, b, tol):
    scale = max(np.abs(b).max(), 1e-30)
    assert np.abs(np.asarray(a) - np.asarray(b)).max() <= tol * scale


def _weights(c, shared: bool):
    mask = c["rng"].random((1 if shared else FRAMES, *SHAPE)) > 0.2
    return mask.astype(c["real"]) * c["rng"].uniform(0.5, 2.0, mask.shape).astype(c["real"])


def test_pods_and_dm_relaxed(case):
    c = case
    out = np.empty_like(c["stack"])
    kernels.pods(c["probe"], c["obj"], c["corners"], out)
    ref = _pods(c)
    _close(out, ref, c["tol"])
    alpha = c["real"].type(0.7)
    kernels.dm_relaxed(c["probe"], c["obj"], c["corners"], c["stack"], alpha, out)
    _close(out, (1 + alpha) * ref - alpha * c["stack"], c["tol"])


def test_dm_exit_update(case):
    c = case
    back = _complex(c["rng"], c["stack"].shape, c["dtype"])
    exits = c["stack"].copy()
    change = np.empty(FRAMES)
    kernels.dm_exit_update(c["probe"], c["obj"], c["corners"], back, exits, change)
    diff = back - _pods(c)
    _close(exits, c["stack"] + diff, c["tol"])
    _close(change, (np.abs(diff) ** 2).sum(axis=(1, 2, 3)), c["tol"])


@pytest.mark.parametrize("shared", [True, False])
def test_dm_fourier_modulus(case, shared):
    c = case
    weights = _weights(c, shared)
    valid = np.broadcast_to(weights > 0, c["intensity"].shape)
    count = np.maximum(valid.sum(axis=(1, 2)), 1).astype(float)
    meas = c["intensity"]
    fields = c["stack"].copy()
    model = (np.abs(fields) ** 2).sum(axis=1)
    err_ref = ((np.sqrt(model) - np.sqrt(meas)) ** 2 * valid).sum(axis=(1, 2)) / count
    # half the frames already within their bound (left alone), half far outside (moved to the bound)
    bound = np.where(np.arange(FRAMES) % 2 == 0, 2 * err_ref, err_ref / 9)
    err, ll = np.empty(FRAMES), np.empty(FRAMES)
    kernels.dm_fourier_modulus(fields, meas, weights, count, bound, err, ll)
    _close(err, err_ref, c["tol"])
    _close(ll, ((model - meas) ** 2 / (meas + 1) * valid).sum(axis=(1, 2)) / count, c["tol"])
    renorm = np.where(err_ref > bound, np.sqrt(bound / err_ref), 1.0)[:, None, None]
    amp, a = np.sqrt(meas), np.sqrt(model)
    factor = np.where(valid, (amp + (a - amp) * renorm) / (a + 1e-10), 1.0)
    _close(fields, c["stack"] * factor[:, None], c["tol"] * 10)
    # the projected amplitudes meet the bound exactly where they were moved
    moved = (np.abs(fields) ** 2).sum(axis=1)
    err_after = ((np.sqrt(moved) - amp) ** 2 * valid).sum(axis=(1, 2)) / count
    _close(err_after[1::2], bound[1::2], 1e-3)


def _likelihood_reference(kind, imodel, meas, w, renorm):
    """(L, dL/dI, d2L/dI2) per pixel, the three likelihoods written out in numpy."""
    tiny = np.finfo(float).tiny * 1e6
    if kind == "gaussian":
        weight = w / (meas + 1.0 / renorm)
        return weight * (imodel - meas) ** 2, 2 * weight * (imodel - meas), 2 * weight
    im = np.maximum(imodel, tiny)
    if kind == "poisson":
        return w * renorm * (im - meas * np.log(im)), w * renorm * (1 - meas / im), w * renorm * meas / im**2
    root, amp = np.sqrt(im), np.sqrt(meas)
    return w * renorm * (root - amp) ** 2, w * renorm * (1 - amp / root), w * renorm * amp / (2 * im * root)


@pytest.mark.parametrize("kind", sorted(kernels.LIKELIHOODS))
@pytest.mark.parametrize("floating", [False, True])
def test_ml_gradient_weights_and_line_sums(case, kind, floating):
    c = case
    weights = _weights(c, shared=not floating)
    meas, renorm, tiny = c["intensity"], 0.8, float(np.finfo(c["real"]).tiny) * 1e6
    fields = c["stack"]
    model = (np.abs(fields.astype(complex)) ** 2).sum(axis=1)
    wb = np.broadcast_to(weights, meas.shape)
    scale = np.full(FRAMES, 1.3, c["real"])
    scale_ref = (wb * meas * model).sum(axis=(1, 2)) / (wb * model**2).sum(axis=(1, 2)) if floating else scale.copy()
    out, err, ll = np.empty_like(fields), np.empty(FRAMES), np.empty(FRAMES)
    kernels.ml_gradient_weights(fields, meas, weights, scale, floating, kernels.LIKELIHOODS[kind], renorm, tiny,
                                out, err, ll)
    valid = wb > 0
    _close(scale, scale_ref, c["tol"])
    _close(err, ((np.sqrt(model) - np.sqrt(meas)) ** 2 * valid).sum(axis=(1, 2)) / valid.sum(axis=(1, 2)), c["tol"])
    cs = scale_ref[:, None, None]
    value, d1, d2 = _likelihood_reference(kind, cs * model, meas, wb, renorm)
    _close(ll, value.sum(axis=(1, 2)), c["tol"] * 10)
    _close(out, fields * (d1 * cs)[:, None], c["tol"] * 10)

    first = _complex(c["rng"], fields.shape, c["dtype"])
    second = _complex(c["rng"], fields.shape, c["dtype"])
    sums = np.empty((FRAMES, 3))
    kernels.ml_line_sums(fields, first, second, meas, weights, scale, kernels.LIKELIHOODS[kind], renorm, tiny, sums)
    a1 = 2 * (np.conj(fields) * first).real.sum(axis=1)
    a2 = (np.abs(first) ** 2).sum(axis=1) + 2 * (np.conj(fields) * second).real.sum(axis=1)
    _close(sums[:, 0], (d1 * cs * a1).sum(axis=(1, 2)), c["tol"] * 10)
    _close(sums[:, 1], (d1 * cs * a2 + 0.5 * d2 * (cs * a1) ** 2).sum(axis=(1, 2)), c["tol"] * 10)
    _close(sums[:, 2], (np.abs(first) ** 2).sum(axis=(1, 2, 3)), c["tol"])


def test_ml_line_pods(case):
    c = case
    dprobe = _complex(c["rng"], c["probe"].shape, c["dtype"])
    dobj = _complex(c["rng"], c["obj"].shape, c["dtype"])
    first, second = np.empty_like(c["stack"]), np.empty_like(c["stack"])
    kernels.ml_line_pods(c["probe"], dprobe, c["obj"], dobj, c["corners"], first, second)
    _close(first, _pods(c, probe=dprobe) + _pods(c, obj=dobj), c["tol"])
    _close(second, _pods(c, obj=dobj, probe=dprobe), c["tol"])


def _object_reference(c, probe_conj, stack):
    n_probe, n_obj = c["probe"].shape[0], c["obj"].shape[0]
    contrib = (probe_conj[None, :, None] * stack.reshape(FRAMES, n_probe, n_obj, *SHAPE)).sum(axis=1)
    num = np.zeros_like(c["obj"])
    pm.scatter_add(num, contrib, c["corners"])
    return num


@pytest.mark.parametrize("threads", [1, 2])
def test_add_object_update(case, threads, monkeypatch):
    c = case
    monkeypatch.setattr(kernels.numba, "get_num_threads", lambda: threads)  # bands for this many threads
    probe_conj = np.conj(c["probe"]) * c["real"].type(0.5)
    power = (np.abs(c["probe"]) ** 2).sum(axis=0).astype(c["real"])
    num, den = np.ones_like(c["obj"]), np.ones(c["obj"].shape[1:], c["real"])
    kernels.add_object_update(num, den, probe_conj, power, c["stack"], c["corners"])
    _close(num, 1 + _object_reference(c, probe_conj, c["stack"]), c["tol"])
    den_ref = np.ones(c["obj"].shape[1:])
    pm.scatter_add(den_ref, np.broadcast_to(power, (FRAMES, *SHAPE)), c["corners"])
    _close(den, den_ref, c["tol"])
    grad = np.zeros_like(c["obj"])
    kernels.add_object_update(grad, None, probe_conj, None, c["stack"], c["corners"])
    _close(grad, _object_reference(c, probe_conj, c["stack"]), c["tol"])


def test_add_probe_update(case):
    c = case
    n_probe, n_obj = c["probe"].shape[0], c["obj"].shape[0]
    views = pm.gather(c["obj"], c["corners"], SHAPE)
    stack = c["stack"].reshape(FRAMES, n_probe, n_obj, *SHAPE)
    num_ref = 0.25 * (np.conj(views)[:, None] * stack).sum(axis=(0, 2))
    den_ref = 0.25 * (np.abs(views) ** 2).sum(axis=(0, 1))
    num, den = np.zeros_like(c["probe"]), np.zeros(SHAPE, c["real"])
    kernels.add_probe_update(num, den, c["obj"], c["stack"], c["corners"], weight=0.25)
    _close(num, num_ref, c["tol"])
    _close(den, den_ref, c["tol"])
    grad = np.zeros_like(c["probe"])
    kernels.add_probe_update(grad, None, c["obj"], c["stack"], c["corners"], weight=0.25)
    _close(grad, num_ref, c["tol"])


def test_row_bands_share_the_window_rows_evenly():
    starts = np.array([0, 0, 0, 50, 90])
    bands = kernels.row_bands(starts, 10, 100, 2)
    assert bands[0] == 0 and bands[-1] == 100 and len(bands) == 3
    # 50 window rows in all: the cut falls where the first 25 are covered (rows 0..9 carry 3 each)
    assert 8 <= bands[1] <= 10
    assert kernels.row_bands(starts, 10, 100, 1).tolist() == [0, 100]


def test_nan_survives_the_fast_maths():
    """The kernels keep IEEE NaN semantics (no nnan flag): a NaN in the data shows in the error."""
    rng = np.random.default_rng(0)
    fields = _complex(rng, (2, 1, *SHAPE), np.complex64)
    meas = np.ones((2, *SHAPE), np.float32)
    meas[1, 3, 4] = np.nan
    err, ll = np.empty(2), np.empty(2)
    kernels.dm_fourier_modulus(fields, meas, np.ones((1, *SHAPE), np.float32), np.full(2, SHAPE[0] * SHAPE[1], float),
                               np.zeros(2), err, ll)
    assert np.isfinite(err[0]) and np.isnan(err[1])
