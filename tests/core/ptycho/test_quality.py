"""aligned_error: zero for a reconstruction that differs only in factor, shift and ramp; the noise level otherwise."""

import numpy as np
import pytest

from difframe.errors import DataError
from difframe.ptycho.model import gaussian_smooth
from difframe.ptycho.quality import aligned_error, star_contrast, truth_errors


def truth_and_region(seed=0):
    rng = np.random.default_rng(seed)
    field = gaussian_smooth(rng.normal(size=(2, 48, 52)) + 0j, 2.0).real
    truth = (1 + field[0] / np.abs(field[0]).max() * 0.3) * np.exp(1j * field[1] / np.abs(field[1]).max())
    region = np.zeros(truth.shape, bool)
    region[8:40, 10:42] = True  # away from the edges, so shifts up to 4 keep it inside
    return truth, region, rng


def test_factor_shift_and_ramp_are_removed():
    truth, region, _ = truth_and_region()
    yy, xx = np.indices(truth.shape)
    recon = np.roll(truth, (2, -3), axis=(0, 1)) * 2.5 * np.exp(1j * (0.7 + 0.04 * yy - 0.03 * xx))
    err, shift = aligned_error(recon, truth, region)
    assert shift == (-2, 3)
    assert err < 1e-10


def test_error_is_the_relative_noise_that_cannot_be_explained():
    truth, region, rng = truth_and_region(1)
    noise = rng.normal(size=truth.shape) + 1j * rng.normal(size=truth.shape)
    noise *= 0.05 * np.linalg.norm(truth[region]) / np.linalg.norm(noise[region])
    err, shift = aligned_error(truth + noise, truth, region)
    assert shift == (0, 0)
    assert 0.045 < err < 0.05  # the fit absorbs a little of the noise: 4 real parameters of ~2000 values


def test_shapes_must_agree():
    truth, region, _ = truth_and_region()
    with pytest.raises(DataError, match="one shape"):
        aligned_error(truth[:-1], truth)
    with pytest.raises(DataError, match="fewer than 3"):
        aligned_error(truth, truth, np.zeros(truth.shape, bool))


def test_truth_errors_place_the_truth_by_the_window_offset():
    truth, _, rng = truth_and_region()
    probe = np.exp(-((np.indices((10, 10)) - 4.5) ** 2).sum(axis=0) / 8) + 0j
    corners = rng.integers(0, 30, (12, 2))
    sim = {"object": truth[None], "probe": probe[None], "view_corners": corners}
    obj = np.zeros((truth.shape[0] + 3, truth.shape[1] + 2), complex)
    obj[3:, 2:] = truth * 0.5  # the reconstruction's frame is offset by (3, 2) and its scale is free
    assert truth_errors(obj, probe * 2, corners + (3, 2), sim) == pytest.approx((0.0, 0.0), abs=1e-10)
    shifted = corners + (3, 2)
    shifted[0] += 1
    with pytest.raises(DataError, match="one offset"):
        truth_errors(obj, probe, shifted, sim)


def test_star_contrast_of_a_simulated_star():
    """A 28-spoke star of phase 0.4 rad on a ramp-free background, centre off the middle: 0.4 rad found."""
    shape, centre, psize = (200, 210), (95, 110), 1e-7
    yy, xx = np.indices(shape)
    theta = np.arctan2(yy - centre[0], xx - centre[1])
    spokes = np.cos(28 * theta) > 0
    obj = np.exp(0.4j * spokes) * np.exp(0.3j)
    obj = obj + 0.02 * (np.random.default_rng(0).normal(size=shape) + 1j * np.random.default_rng(1).normal(size=shape))
    res = star_contrast(obj, psize, (3e-6, 8e-6), spokes=28)
    assert res["centre"] == centre
    assert res["contrast"] == pytest.approx(0.4, abs=0.02)
