"""The detector-plane projection every stochastic engine inlines (difframe.ptycho.projection.project_frame, built
from row_fit and row_modulus, which DM's Fourier step shares) against a numpy statement of the same maths."""

import numpy as np
import pytest

from difframe.ptycho import projection
from difframe.ptycho.kernels import weight_rows

SHAPE, FRAMES, PODS = (9, 14), 4, 3


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
@pytest.mark.parametrize("fit", ["nothing", "background and scales"])
def test_project_frame_against_numpy(dtype, fit):
    rng = np.random.default_rng(4)
    real = np.finfo(dtype).dtype
    tiny = float(np.finfo(real).tiny) * 1e6
    field = (rng.normal(size=(PODS, *SHAPE)) + 1j * rng.normal(size=(PODS, *SHAPE))).astype(dtype)
    meas = rng.poisson(4.0, (FRAMES, *SHAPE)).astype(real)
    weights = ((rng.random((FRAMES, *SHAPE)) > 0.25) * rng.uniform(0.5, 2.0, (FRAMES, *SHAPE))).astype(real)
    scale = rng.uniform(0.6, 1.5, FRAMES).astype(real)
    bg = rng.uniform(0.0, 2.0, SHAPE).astype(real)
    n = 2
    fitting = fit != "nothing"
    bg_sums = np.zeros((2, *SHAPE), real) if fitting else np.empty((0, 0, 0), real)
    scale_sums = np.zeros((FRAMES, 2)) if fitting else np.empty((0, 2))

    f = field.astype(complex)
    model = (np.abs(f) ** 2).sum(axis=0)
    im = np.maximum(scale[n] * model + bg, tiny)
    valid = weights[n] > 0
    amp, am = np.sqrt(meas[n].astype(float)), np.sqrt(im)
    err = ((am - amp) ** 2)[valid].sum() / valid.sum()
    m = meas[n].astype(float)
    logs = np.where(m > 0, m * np.log(np.where(m > 0, m, 1) / im), 0)
    dev = (2 * (im - m + logs))[valid].sum()
    d1, d2 = weights[n] * (1 - m / im), weights[n] * m / im**2
    change = f * np.where(valid, amp / am - 1, 0)

    scratch = [np.empty(SHAPE[1], real) for _ in range(3)]
    got_err, got_dev = projection.project_frame(field, n, meas, weights, weight_rows(weights, FRAMES), scale, bg,
                                                tiny, bg_sums, scale_sums, *scratch)
    tol = 1e-4 if dtype == np.complex64 else 1e-10
    assert got_err == pytest.approx(err, rel=tol) and got_dev == pytest.approx(dev, rel=tol)
    assert np.abs(field - change).max() <= tol * np.abs(change).max()
    if fitting:
        np.testing.assert_allclose(bg_sums, np.stack([d1, d2]), rtol=tol, atol=tol * np.abs(d1).max())
        want = [(d1 * model).sum(), (d2 * model**2).sum()]
        np.testing.assert_allclose(scale_sums[n], want, rtol=tol * 10)
        assert not scale_sums[[0, 1, 3]].any()  # only frame n's row is written


def test_row_modulus_moves_part_of_the_way():
    """renorm r: the amplitude goes from the measured one back toward the model by r (1: stays, 0: the data);
    pixels of weight 0 keep the model."""
    model = np.array([4.0, 9.0, 1.0, 16.0])
    meas = np.array([1.0, 4.0, 9.0, 25.0])
    wt = np.array([1.0, 1.0, 0.0, 2.0])
    bg = np.zeros(4)
    for renorm in (0.0, 0.3, 1.0):
        factor = np.empty(4)
        e_row, valid = projection.row_modulus(1.0, model, bg, meas, wt, renorm, 1e-30, factor)
        am, amp = np.sqrt(model), np.sqrt(meas)
        want = np.where(wt > 0, (amp + (am - amp) * renorm) / am, 1.0)
        np.testing.assert_allclose(factor, want)
        assert e_row == pytest.approx((((am - amp) ** 2) * (wt > 0)).sum()) and valid == 3
