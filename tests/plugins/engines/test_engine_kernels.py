"""The DM and ML engines' own fused kernels against plain numpy statements of the same maths.

The model intensity is scale x sum over pods |field|^2 + background; each test
uses a non-trivial background and scales, so the terms for real data are
checked with the rest.
"""

from __future__ import annotations

import numpy as np
import pytest

from difframe.plugins.engines import ml_kernels
from difframe.ptycho import projection
from difframe.ptycho import kernels

from kernel_cases import FRAMES, SHAPE, close, complex_array, pods_reference, random_weights

TINY = float(np.finfo(np.float32).tiny) * 1e6


def dm_fourier(fpo, phi, intensity, weights, scale, background, alpha, *rest, gain=1.0):
    """DM's Fourier step: the core projection with the whole change taken (mix = 1); ``fpo`` holds F(PO) / gain."""
    projection.fourier_projection(fpo, phi, intensity, weights, scale, background, alpha, 1.0, gain, *rest)


def _terms(c):
    """A background map and per-frame scales in the case's precision."""
    bg = c["rng"].uniform(0.0, 2.0, SHAPE).astype(c["real"])
    scale = c["rng"].uniform(0.6, 1.5, FRAMES).astype(c["real"])
    return bg, scale


def _deviance(imodel, meas, valid):
    """Poisson deviance per frame, summed over valid pixels, written out in numpy."""
    im = np.maximum(imodel.astype(float), TINY)
    m = meas.astype(float)
    logs = np.where(m > 0, m * np.log(np.where(m > 0, m, 1) / im), 0.0)
    return (2 * (im - m + logs) * valid).sum(axis=(1, 2))


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("gain", [1.0, 1 / 128])  # F(PO) as a unitary transform gives it; without its factor
def test_dm_fourier(kernel_case, shared, gain):
    c = kernel_case
    weights = random_weights(c, shared)
    valid = np.broadcast_to(weights > 0, c["intensity"].shape)
    count = np.maximum(valid.sum(axis=(1, 2)), 1).astype(float)
    meas = c["intensity"]
    bg, scale = _terms(c)
    fpo = c["stack"]
    phi = complex_array(c["rng"], fpo.shape, c["dtype"])
    alpha = 0.7
    relaxed = (1 + alpha) * fpo - alpha * phi
    ir = (np.abs(relaxed) ** 2).sum(axis=1)
    ipo = (np.abs(fpo) ** 2).sum(axis=1)
    s = scale[:, None, None]
    amp, a = np.sqrt(meas), np.sqrt(s * ir + bg)
    err_ref = ((a - amp) ** 2 * valid).sum(axis=(1, 2)) / count
    # half the frames already within their bound (left alone), half far outside (moved to the bound)
    bound = np.where(np.arange(FRAMES) % 2 == 0, 2 * err_ref, err_ref / 9)
    err, dev = np.empty(FRAMES), np.empty(FRAMES)
    threads = numba_threads()
    bg_sums = np.zeros((threads, 2, *SHAPE), c["real"])
    scale_sums = np.zeros((FRAMES, 2))
    out_fpo, out_phi = (fpo / c["dtype"](gain)).astype(c["dtype"]), phi.copy()
    dm_fourier(out_fpo, out_phi, meas, weights, scale, bg, alpha, count, bound, TINY,
               err, dev, bg_sums, scale_sums, gain=gain)
    close(err, err_ref, c["tol"])
    close(dev, _deviance(s * ipo + bg, meas, valid), c["tol"] * 10)
    renorm = np.where(err_ref > bound, np.sqrt(bound / err_ref), 1.0)[:, None, None]
    factor = np.where(valid, (amp + (a - amp) * renorm) / a, 1.0)
    change = factor[:, None] * relaxed - fpo
    close(out_fpo, change, c["tol"] * 10)
    close(out_phi, phi + change, c["tol"] * 10)
    # Poisson gradient and curvature of the current PO model with respect to background and scales
    im = s * ipo + bg
    wb = np.broadcast_to(weights, meas.shape)
    d1 = wb * (1 - meas / im)
    d2 = wb * meas / im**2
    close(bg_sums.sum(axis=0)[0], d1.sum(axis=0), c["tol"] * 10)
    close(bg_sums.sum(axis=0)[1], d2.sum(axis=0), c["tol"] * 10)
    close(scale_sums[:, 0], (d1 * ipo).sum(axis=(1, 2)), c["tol"] * 10)
    close(scale_sums[:, 1], (d2 * ipo**2).sum(axis=(1, 2)), c["tol"] * 10)
    # the projected amplitudes meet the bound exactly where they were moved
    moved = s * (np.abs(factor[:, None] * relaxed) ** 2).sum(axis=1) * factor**0 + bg * factor**2
    err_after = ((np.sqrt(moved) - amp) ** 2 * valid).sum(axis=(1, 2)) / count
    close(err_after[1::2], bound[1::2], 1e-3)


def test_dm_fourier_skips_what_is_not_fitted():
    """Empty background and scale sums: nothing is accumulated, the projection is the same."""
    c = _case()
    fpo, phi = c["stack"].copy(), c["stack"][::-1].copy()
    args = (c["intensity"], np.ones((1, *SHAPE), np.float32), np.ones(FRAMES, np.float32),
            np.zeros(SHAPE, np.float32), 1.0, np.full(FRAMES, 120.0), np.zeros(FRAMES), TINY)
    err, dev = np.empty(FRAMES), np.empty(FRAMES)
    dm_fourier(fpo, phi, *args, err, dev, np.empty((0, 2, 0, 0), np.float32), np.empty((0, 2)))
    fpo2, phi2 = c["stack"].copy(), c["stack"][::-1].copy()
    dm_fourier(fpo2, phi2, *args, err, dev, np.zeros((numba_threads(), 2, *SHAPE), np.float32),
                          np.zeros((FRAMES, 2)))
    close(fpo, fpo2, 1e-6)


@pytest.mark.parametrize("gain", [1.0, 1 / 128])
def test_add_exit_change(kernel_case, gain):
    c = kernel_case
    back = complex_array(c["rng"], c["stack"].shape, c["dtype"])
    exits = c["stack"].copy()
    change = np.empty(FRAMES)
    projection.add_exit_change(back, exits, gain, change)
    close(exits, c["stack"] + gain * back, c["tol"])
    close(change, (np.abs(gain * back) ** 2).sum(axis=(1, 2, 3)), c["tol"])


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


@pytest.mark.parametrize("threaded", [True, False])
@pytest.mark.parametrize("kind", sorted(kernels.LIKELIHOODS))
@pytest.mark.parametrize("floating", [False, True])
def test_ml_gradient_weights_and_line_sums(kernel_case, kind, floating, threaded):
    c = kernel_case
    weights = random_weights(c, shared=not floating)
    meas, renorm, tiny = c["intensity"], 0.8, float(np.finfo(c["real"]).tiny) * 1e6
    bg, scale = _terms(c)
    bg *= 0.2  # keep the least-squares scales positive
    fields = c["stack"]
    model = (np.abs(fields.astype(complex)) ** 2).sum(axis=1)
    wb = np.broadcast_to(weights, meas.shape)
    scale_ref = ((wb * (meas - bg) * model).sum(axis=(1, 2)) / (wb * model**2).sum(axis=(1, 2)) if floating
                 else scale.copy())
    out, err, ll, dev = np.empty_like(fields), np.empty(FRAMES), np.empty(FRAMES), np.empty(FRAMES)
    bg_sums = np.zeros((numba_threads() if threaded else 1, 2, *SHAPE), c["real"])
    gradient_weights = ml_kernels.ml_gradient_weights if threaded else ml_kernels.ml_gradient_weights_serial
    gradient_weights(fields, meas, weights, scale, floating, bg, kernels.LIKELIHOODS[kind], renorm, tiny, out, err,
                     ll, dev, bg_sums)
    valid = wb > 0
    cs = scale_ref[:, None, None]
    imodel = cs * model + bg
    close(scale, scale_ref, c["tol"])
    close(err, ((np.sqrt(imodel) - np.sqrt(meas)) ** 2 * valid).sum(axis=(1, 2)) / valid.sum(axis=(1, 2)), c["tol"])
    value, d1, d2 = _likelihood_reference(kind, imodel, meas, wb, renorm)
    close(ll, value.sum(axis=(1, 2)), c["tol"] * 10)
    close(dev, _deviance(imodel, meas, valid), c["tol"] * 10)
    close(out, fields * (d1 * cs)[:, None], c["tol"] * 10)
    close(bg_sums.sum(axis=0)[0], d1.sum(axis=0), c["tol"] * 10)
    close(bg_sums.sum(axis=0)[1], d2.sum(axis=0), c["tol"] * 10)

    first = complex_array(c["rng"], fields.shape, c["dtype"])
    second = complex_array(c["rng"], fields.shape, c["dtype"])
    a1 = 2 * (np.conj(fields) * first).real.sum(axis=1)
    a2 = (np.abs(first) ** 2).sum(axis=1) + 2 * (np.conj(fields) * second).real.sum(axis=1)
    for line_sums in (ml_kernels.ml_line_sums, ml_kernels.ml_line_sums_serial):
        sums = np.empty((FRAMES, 3))
        line_sums(fields, first, second, meas, weights, scale, bg, kernels.LIKELIHOODS[kind], renorm, tiny, sums)
        close(sums[:, 0], (d1 * cs * a1).sum(axis=(1, 2)), c["tol"] * 10)
        close(sums[:, 1], (d1 * cs * a2 + 0.5 * d2 * (cs * a1) ** 2).sum(axis=(1, 2)), c["tol"] * 10)
        close(sums[:, 2], (np.abs(first) ** 2).sum(axis=(1, 2, 3)), c["tol"])


@pytest.mark.parametrize("threaded", [True, False])
def test_ml_line_pods(kernel_case, threaded):
    c = kernel_case
    dprobe = complex_array(c["rng"], c["probe"].shape, c["dtype"])
    dobj = complex_array(c["rng"], c["obj"].shape, c["dtype"])
    first, second = np.empty_like(c["stack"]), np.empty_like(c["stack"])
    line_pods = ml_kernels.ml_line_pods if threaded else ml_kernels.ml_line_pods_serial
    line_pods(c["probe"], dprobe, c["obj"], dobj, c["corners"], first, second)
    close(first, pods_reference(c, probe=dprobe) + pods_reference(c, obj=dobj), c["tol"])
    close(second, pods_reference(c, obj=dobj, probe=dprobe), c["tol"])


def test_nan_survives_the_fast_maths():
    """The kernels keep IEEE NaN semantics (no nnan flag): a NaN in the data shows in the error and deviance."""
    c = _case()
    fpo = c["stack"][:2].copy()
    meas = np.ones((2, *SHAPE), np.float32)
    meas[1, 3, 4] = np.nan
    err, dev = np.empty(2), np.empty(2)
    dm_fourier(fpo, fpo.copy(), meas, np.ones((1, *SHAPE), np.float32), np.ones(2, np.float32),
                          np.zeros(SHAPE, np.float32), 1.0, np.full(2, SHAPE[0] * SHAPE[1], float), np.zeros(2), TINY,
                          err, dev, np.empty((0, 2, 0, 0), np.float32), np.empty((0, 2)))
    assert np.isfinite(err[0]) and np.isnan(err[1])
    assert np.isfinite(dev[0]) and np.isnan(dev[1])


def _case():
    import kernel_cases

    return kernel_cases.make_case(np.complex64, 1, 1)


def numba_threads() -> int:
    import numba

    return numba.config.NUMBA_NUM_THREADS


@pytest.mark.parametrize("kind", sorted(kernels.LIKELIHOODS))
def test_masked_detector_markers_change_nothing(kind):
    """Masked pixels may hold a detector's negative markers (gaps -1, bad pixels -2): the Fourier step and the
    ML gradient come out as with zeros there, finite (the branch-free kernels multiply by the mask)."""
    c = _case()
    fields = c["stack"][:2].copy()
    weights = np.ones((1, *SHAPE), np.float32)
    weights[0, 2, :] = 0
    weights[0, :, 5] = 0
    clean = c["rng"].poisson(3.0, (2, *SHAPE)).astype(np.float32) * (weights > 0)
    marked = np.where(weights > 0, clean, np.float32(-1))
    marked[1, 2, 3] = -2
    runs = []
    for meas in (clean, marked):
        fpo, err, dev = fields.copy(), np.empty(2), np.empty(2)
        dm_fourier(fpo, fields.copy(), meas, weights, np.ones(2, np.float32), np.zeros(SHAPE, np.float32), 1.0,
                   np.full(2, (weights > 0).sum(), float), np.zeros(2), TINY, err, dev,
                   np.empty((0, 2, 0, 0), np.float32), np.empty((0, 2)))
        out, e2, ll, d2 = np.empty_like(fields), np.empty(2), np.empty(2), np.empty(2)
        ml_kernels.ml_gradient_weights(fields, meas, weights, np.ones(2, np.float32), False,
                                       np.zeros(SHAPE, np.float32), kernels.LIKELIHOODS[kind], 1.0, TINY, out, e2,
                                       ll, d2, np.empty((0, 2, 0, 0), np.float32))
        runs.append((fpo, err, dev, out, e2, ll, d2))
    for with_zeros, with_markers in zip(*runs):
        assert np.all(np.isfinite(with_markers))
        np.testing.assert_array_equal(with_markers, with_zeros)
