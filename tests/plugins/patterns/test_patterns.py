"""Every built-in scan pattern: counts, spacing, centring, ROI clipping, determinism."""

import numpy as np
import pytest
from scipy.spatial import cKDTree

from difframe.errors import UsageError
from difframe.run import Run


def positions(xy):
    run = Run({"scans": {"s": {"xy": xy}}})
    return run.scan_positions("s")


def nearest_distances(pos):
    d, _ = cKDTree(pos).query(pos, k=2)
    return d[:, 1]


def test_raster_counts_spacing_centring_order():
    pos = positions({"type": "raster", "raster": {"nx": 5, "ny": 3, "dx": 2e-6, "dy": 1e-6}})
    assert pos.shape == (15, 2)
    np.testing.assert_allclose(pos.mean(axis=0), 0.0, atol=1e-18)
    np.testing.assert_allclose(np.unique(pos[:, 0]), [-1e-6, 0.0, 1e-6])
    np.testing.assert_allclose(np.unique(pos[:, 1]), np.arange(-2, 3) * 2e-6)
    np.testing.assert_allclose(pos[1] - pos[0], [0.0, 2e-6])  # row by row: x runs fastest
    np.testing.assert_allclose(pos[5] - pos[0], [1e-6, 0.0])


def test_round_counts_radii_and_even_spacing():
    nr, nth, dr = 4, 6, 3e-7
    pos = positions({"type": "round", "round": {"dr": dr, "nr": nr, "nth": nth}})
    assert len(pos) == 1 + nth * nr * (nr + 1) // 2
    r = np.hypot(*pos.T)
    for k in range(nr + 1):
        assert np.sum(np.isclose(r, k * dr)) == (1 if k == 0 else k * nth)
    ring = pos[np.isclose(r, 3 * dr)]  # chord between neighbours on ring k: 2 k dr sin(pi / (k nth))
    np.testing.assert_allclose(nearest_distances(ring), 2 * 3 * dr * np.sin(np.pi / (3 * nth)), rtol=1e-9)
    np.testing.assert_allclose(pos.mean(axis=0), 0.0, atol=1e-20)


def test_round_roi_clips_to_the_rectangle_and_fills_it():
    p = {"dr": 3e-7, "nth": 5, "lx": 3e-6, "ly": 1.5e-6}
    pos = positions({"type": "round_roi", "round_roi": p})
    assert np.all(np.abs(pos[:, 1]) <= p["lx"] / 2 * (1 + 1e-9))
    assert np.all(np.abs(pos[:, 0]) <= p["ly"] / 2 * (1 + 1e-9))
    assert pos[:, 1].max() > 0.4 * p["lx"] and pos[:, 0].max() > 0.4 * p["ly"]  # reaches the edges
    full = positions({"type": "round", "round": {"dr": 3e-7, "nth": 5, "nr": 10}})
    inside = full[(np.abs(full[:, 1]) <= p["lx"] / 2) & (np.abs(full[:, 0]) <= p["ly"] / 2)]
    np.testing.assert_allclose(pos, inside)  # the same circles, cropped


def test_spiral_count_density_and_radius():
    dr, r_out = 2e-6, 3e-5
    pos = positions({"type": "spiral", "spiral": {"dr": dr, "r_out": r_out}})
    assert len(pos) == int(np.floor(np.pi * (r_out / dr) ** 2)) + 1  # one point per dr^2 of the disc
    assert np.hypot(*pos.T).max() <= r_out * (1 + 1e-12)
    d = nearest_distances(pos)
    assert 0.6 * dr < np.median(d) < 1.2 * dr  # evenly filled at spacing ~dr
    assert np.hypot(*pos.mean(axis=0)) < 0.05 * dr * np.sqrt(len(pos))


def test_spiral_roi_clips_and_keeps_density():
    p = {"dr": 1e-6, "lx": 2e-5, "ly": 1e-5}
    pos = positions({"type": "spiral_roi", "spiral_roi": p})
    assert np.all(np.abs(pos[:, 1]) <= p["lx"] / 2 * (1 + 1e-9)) and np.all(np.abs(pos[:, 0]) <= p["ly"] / 2 * (1 + 1e-9))
    area_per_point = p["lx"] * p["ly"] / len(pos)
    assert 0.85 < area_per_point / p["dr"] ** 2 < 1.15


def test_custom_positions_from_the_tree():
    pos = positions({"type": "custom", "positions": [[0.0, 1e-6], [2e-6, -1e-6], [3e-6, 0.0]]})
    np.testing.assert_array_equal(pos, [[0.0, 1e-6], [2e-6, -1e-6], [3e-6, 0.0]])
    with pytest.raises(UsageError, match="needs scan.xy.positions"):
        positions({"type": "custom"})
    with pytest.raises(UsageError, match=r"list of \[y, x\] pairs"):
        positions({"type": "custom", "positions": [1.0, 2.0, 3.0]})


@pytest.mark.parametrize("kind", ["raster", "round", "round_roi", "spiral", "spiral_roi"])
def test_patterns_are_deterministic_and_default_to_the_reference(kind):
    a = positions({"type": kind})
    b = positions({"type": kind})
    np.testing.assert_array_equal(a, b)
    assert np.all(np.isfinite(a)) and a.shape[1] == 2 and len(a) > 1


def test_no_pattern_means_positions_from_the_data():
    assert positions({}) is None


def test_a_pattern_with_no_points_is_an_error():
    with pytest.raises(UsageError, match="gave no positions"):
        positions({"type": "raster", "raster": {"nx": 0}})
