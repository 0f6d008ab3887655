"""Sub-pixel windows (difframe.ptycho.subpixel) against analytic fields and their own adjoint."""

import numpy as np

from difframe.ptycho import model as pm
from difframe.ptycho import subpixel

SHAPE = (24, 20)


def band_limited(y, x):
    """A smooth complex field known at any real coordinate: a few plane waves well below Nyquist."""
    waves = [(0.07, 0.02, 0.3), (-0.03, 0.11, 1.1), (0.13, -0.08, 2.0), (0.01, 0.05, -0.7)]
    return sum((1 + 0.3 * k) * np.exp(2j * np.pi * (fy * y + fx * x) + 1j * ph)
               for k, (fy, fx, ph) in enumerate(waves))


def test_shifted_windows_sample_the_field_at_the_exact_positions():
    yy, xx = np.mgrid[:64, :60]
    obj = band_limited(yy, xx)[None].astype(np.complex128)
    corners = np.array([[10, 12], [20, 30], [33, 25]])
    shifts = np.array([[0.5, -0.5], [0.23, 0.41], [-0.37, 0.08]])
    got = subpixel.views(obj, corners, shifts, SHAPE)
    i, j = np.mgrid[:SHAPE[0], :SHAPE[1]]
    for n, ((y, x), (dy, dx)) in enumerate(zip(corners, shifts)):
        want = band_limited(y + i + dy, x + j + dx)
        err = np.abs(got[n, 0] - want) / np.abs(want).mean()
        assert err.max() < 0.03, (n, err.max())
        # the nearest integer window is an order of magnitude worse: the test sees sub-pixel placement
        rounded = band_limited(y + i + np.rint(dy), x + j + np.rint(dx))
        assert err.mean() < 0.1 * (np.abs(rounded - want) / np.abs(want).mean()).mean()


def test_integer_shifts_are_the_neighbouring_windows():
    rng = np.random.default_rng(0)
    obj = pm.gaussian_smooth(rng.normal(size=(2, 50, 50)) + 1j * rng.normal(size=(2, 50, 50)), 2.0)
    corners = np.array([[5, 6], [10, 3], [20, 20]])
    steps = np.array([[1, 0], [0, -1], [-1, 1]])
    got = subpixel.views(obj, corners, steps.astype(float), SHAPE)
    np.testing.assert_allclose(got, pm.gather(obj, corners + steps, SHAPE), atol=1e-9 * np.abs(obj).max())


def test_add_back_is_the_adjoint_of_views():
    rng = np.random.default_rng(1)
    obj = rng.normal(size=(1, 40, 40)) + 1j * rng.normal(size=(1, 40, 40))
    corners = np.array([[0, 0], [8, 15], [16, 20]])  # the first window touches the object's edge
    shifts = rng.uniform(-0.5, 0.5, (3, 2))
    stack = rng.normal(size=(3, 1, *SHAPE)) + 1j * rng.normal(size=(3, 1, *SHAPE))
    back = np.zeros_like(obj)
    subpixel.add_back(back, stack, corners, shifts)
    assert np.isclose(np.vdot(subpixel.views(obj, corners, shifts, SHAPE), stack), np.vdot(obj, back), rtol=1e-10)


def test_offsets_are_the_positions_fraction_of_a_pixel():
    psize = np.array([1e-7, 1e-7])
    storage = pm.Storage(np.ones((1, 80, 80), complex), psize, np.array([-4e-6, -4e-6]), 8.0)
    positions = np.array([[0.0, 0.0], [0.26e-6, -0.33e-6], [1.05e-6, 0.5e-6]])
    corners = pm.corners_of(positions, storage, SHAPE)

    class Scan:
        pass
    scan = Scan()
    scan.positions, scan.first, scan.num_frames, scan.shape, scan.corners = positions, 0, 3, SHAPE, corners
    off = subpixel.offsets(scan, storage)
    np.testing.assert_allclose(off, [[0, 0], [-0.4, -0.3], [0.5, 0]], atol=1e-9)
