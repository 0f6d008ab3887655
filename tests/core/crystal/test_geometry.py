"""Lattice, goniometer and detector geometry against analytic answers."""

import numpy as np
import pytest

from difframe.crystal.geometry import A_VARIABLE_NAMES, Geometry
from difframe.crystal.goniometer import axis_rotation, gonio_rotation, orientation_matrix
from difframe.crystal.lattice import Lattice
from difframe.errors import UsageError

BASE = dict(lmbda=0.7, dist=50.0, pixel_size=0.172, det_origin_X=100.0, det_origin_Y=120.0,
            AA=4.212, BB=4.212, CC=4.212, angular_step=0.5)


def test_cubic_and_hexagonal_b_matrix():
    assert np.allclose(Lattice(4.0, 4.0, 4.0).B, 2 * np.pi / 4.0 * np.eye(3))
    hexa = Lattice(3.21, 3.21, 5.21, 90, 90, 120)
    b = hexa.B
    assert np.allclose(b[1:, 0], 0) and np.allclose(b[2, :2], 0)  # a* along x, b* in xy
    assert np.allclose(hexa.direct[:2, 2], 0)  # c along z
    assert np.allclose(hexa.direct.T @ b, 2 * np.pi * np.eye(3))
    assert hexa.volume == pytest.approx(3.21**2 * 5.21 * np.sqrt(3) / 2)
    # d-spacing of (h k l) in a hexagonal cell: 1/d^2 = 4/3 (h^2 + hk + k^2)/a^2 + l^2/c^2
    h, k, l = 1, 2, 3
    inv_d2 = 4 / 3 * (h * h + h * k + k * k) / 3.21**2 + l * l / 5.21**2
    assert np.linalg.norm(hexa.q([h, k, l])) == pytest.approx(2 * np.pi * np.sqrt(inv_d2))
    assert np.allclose(hexa.hkl(hexa.q([[1, 2, 3], [-1, 0, 4]])), [[1, 2, 3], [-1, 0, 4]])
    tric = Lattice(5.0, 6.0, 7.0, 80, 95, 105)
    assert np.allclose(tric.direct.T @ tric.B, 2 * np.pi * np.eye(3))
    assert np.allclose(np.linalg.norm(tric.direct, axis=0), [5, 6, 7])
    with pytest.raises(UsageError, match="cell length b"):
        Lattice(4.0, -1.0, 4.0)
    with pytest.raises(UsageError, match="angles"):
        Lattice(4.0, 4.0, 4.0, 10, 10, 170)


def test_rotations_are_active_right_handed():
    assert np.allclose(axis_rotation(2, 90) @ [1, 0, 0], [0, 1, 0])
    assert np.allclose(axis_rotation(0, 90) @ [0, 1, 0], [0, 0, 1])
    assert np.allclose(axis_rotation(1, 90) @ [0, 0, 1], [1, 0, 0])
    # with alpha = beta = 0 omega, kappa and phi all turn about z and add up
    assert np.allclose(gonio_rotation(10, 0, 0, 20, 30), axis_rotation(2, 60))
    # vectorised over phi
    r = gonio_rotation(5, 50, 3, 15, np.array([0.0, 1.0, 2.0]))
    assert r.shape == (3, 3, 3) and np.allclose(r[2], gonio_rotation(5, 50, 3, 15, 2.0))
    # the phi axis is z tilted by beta, carried by kappa and omega: it is left fixed by R_phi
    axis = axis_rotation(1, 3) @ [0, 0, 1]
    fixed = gonio_rotation(5, 50, 0, 15, 0) @ axis
    assert np.allclose(gonio_rotation(5, 50, 3, 15, 40) @ axis, fixed)
    assert np.allclose(orientation_matrix(0, 0, 90) @ [1, 0, 0], [0, 1, 0])


def test_pixel_q_matches_bragg_angle():
    g = Geometry(**BASE)
    assert np.allclose(g.q_lab(120, 100), 0)  # the beam-axis pixel scatters nothing
    rows, cols = np.array([0, 50, 255]), np.array([3, 200, 17])
    r = np.hypot((rows - 120) * 0.172, (cols - 100) * 0.172)
    two_theta = np.arctan2(r, 50.0)
    q = np.linalg.norm(g.q_lab(rows, cols), axis=-1)
    assert np.allclose(q, 4 * np.pi * np.sin(two_theta / 2) / 0.7)
    qi = g.q_lab_image((256, 200))
    assert qi.shape == (256, 200, 3) and np.allclose(qi[50, 17], g.q_lab(50, 17))
    # orientation of the image: columns to -y, rows to -z
    assert g.q_lab(120, 110)[1] < 0 and g.q_lab(130, 100)[2] < 0


def test_tilted_detector_round_trip():
    g = Geometry(**BASE, d1=2.0, d2=-3.0, theta=1.5, beam_tilt_angle=0.2)
    rows, cols = np.meshgrid(np.arange(0, 256, 37.0), np.arange(0, 200, 29.0), indexing="ij")
    row, col = g.lab_to_pixel(g.pixel_lab(rows, cols))
    assert np.allclose(row, rows) and np.allclose(col, cols)
    # a tilt about the beam axis d1 = 90 deg turns columns into rows
    g90 = Geometry(**BASE, d1=90.0)
    p = g90.pixel_lab(120.0, 110.0)
    assert np.allclose(p, [50.0, 0.0, -10 * 0.172])


def test_bragg_prediction_lands_on_integer_hkl_and_satisfies_laue():
    g = Geometry(**BASE, r1=10, r2=20, r3=30, kappa=15, omega=5, beta=3, d1=0.5, d2=-1, phi=-4.0)
    hkl = np.array([[h, k, l] for h in range(-4, 5) for k in range(-4, 5) for l in range(-4, 5) if h or k or l])
    p = g.predict_bragg(hkl, 180, (256, 256))
    assert len(p["frame"]) > 20
    assert np.all((p["frame"] >= -0.5) & (p["frame"] <= 179.5))
    for hk, f, r, c in zip(p["hkl"], p["frame"], p["row"], p["col"]):
        q_c = g.lab_to_crystal(f) @ g.q_lab(r, c)
        assert np.allclose(g.lattice.hkl(q_c), hk, atol=1e-9)
    # independent check of the crossing angle: the Laue residual changes sign around it
    hk, f = p["hkl"][0], p["frame"][0]
    g_c = g.lattice.q(hk)
    resid = [np.linalg.norm(g.k_in + g.gonio(x) @ g.U @ g_c) - g.k for x in (f - 0.01, f + 0.01)]
    assert resid[0] * resid[1] < 0


def test_from_mapping_names_the_culprit():
    conf = dict(BASE, DeltaQ_max=0.15, dim1=256, dim2=200, r1="1.5")
    g = Geometry.from_mapping(conf)
    assert g.r1 == 1.5 and g.dim1 == 256 and g.to_mapping()["dim2"] == 200
    assert Geometry.from_mapping(g.to_mapping()) == g
    bad = dict(BASE)
    del bad["lmbda"]
    with pytest.raises(UsageError, match="lmbda"):
        Geometry.from_mapping(bad)
    with pytest.raises(UsageError, match="kappa"):
        Geometry.from_mapping(dict(BASE, kappa="fast"))
    with pytest.raises(UsageError, match="dist"):
        Geometry.from_mapping(dict(BASE, dist=float("nan")))
    with pytest.raises(UsageError, match="dim1"):
        Geometry.from_mapping(dict(BASE, dim1=2.5))


def test_a_variables_corrections():
    g = Geometry(**BASE)
    deltas = np.arange(len(A_VARIABLE_NAMES)) * 0.01
    c = g.corrected(deltas)
    assert c.r3 == pytest.approx(0.02) and c.det_origin_Y == pytest.approx(120.13) and c.AA == pytest.approx(4.242)
    with pytest.raises(UsageError, match="A_variables has 3"):
        g.corrected([0, 0, 0])


def test_scan_axis_in_the_crystal_frame_turns_q_like_the_goniometer():
    """Q_c at a fractional frame equals Q_c at the frame centre turned about scan_axis_crystal (Rodrigues)."""
    import dataclasses

    from difframe.tds.model import rotate_about

    base = Geometry(lmbda=0.7, dist=60.0, pixel_size=1.0, det_origin_X=1.0, det_origin_Y=2.0, AA=4.0, BB=5.0, CC=6.0,
                    aCC=100.0, angular_step=0.7, phi=-10.0, r1=12.0, r2=-7.0, r3=31.0, kappa=20.0, omega=5.0)
    q_lab = np.random.default_rng(0).normal(size=(6, 3))
    for geometry in (base, dataclasses.replace(base, beta=3.0, angular_step=-1.3)):
        axis = geometry.scan_axis_crystal
        assert np.linalg.norm(axis) == pytest.approx(1.0)
        centre = q_lab @ geometry.lab_to_crystal(7).T
        for frac in (-0.5, 0.37):
            turned = q_lab @ geometry.lab_to_crystal(7 + frac).T
            np.testing.assert_allclose(rotate_about(centre, axis, np.radians(frac * geometry.angular_step)), turned,
                                       atol=1e-12)
