"""The exposure-averaged TDS model against a brute-force average over the frame through the geometry."""

import logging

import numpy as np
import pytest

from difframe.crystal.geometry import Geometry
from difframe.errors import DataError, UsageError
from difframe.tds import model, model_cl
from difframe.tds.fit import FitSettings, Points, choose_exposure
from tdsfit_support import ARAGONITE, MG

GEOMETRY = Geometry(lmbda=0.4, dist=34.0, pixel_size=0.172, det_origin_X=80.0, det_origin_Y=76.0, AA=4.96,
                    BB=7.97, CC=5.74, angular_step=1.0, phi=-20.0, kappa=20.0, beta=2.0, r1=17.0, r2=31.0, r3=8.0)


def _pixels_near_spots(geometry, rng, n=300, frames=40):
    """(frame, Q_lab) of pixels whose Q_c at the frame centre lies 0.04..0.15 |b|max from a reciprocal node."""
    lattice = geometry.lattice
    unit = lattice.max_reciprocal
    frame = rng.integers(0, frames, 40 * n)
    q_lab = geometry.q_lab(rng.uniform(0, 152, 40 * n), rng.uniform(0, 160, 40 * n))
    Q = np.einsum("nij,nj->ni", geometry.lab_to_crystal(frame), q_lab)
    G = lattice.q(np.rint(lattice.hkl(Q)))
    r = np.linalg.norm(Q - G, axis=1) / unit
    keep = np.flatnonzero((r > 0.04) & (r < 0.15) & (np.abs(lattice.hkl(G)).sum(1) > 0))[:n]
    return frame[keep], q_lab[keep], Q[keep], G[keep]


def _brute_force(geometry, frame, q_lab, G, C, sub=400):
    """Mean of T over ``sub`` equal sub-frames, each point turned by the goniometer itself (midpoint rule)."""
    total = 0.0
    for j in range(sub):
        Q = np.einsum("nij,nj->ni", geometry.lab_to_crystal(frame + (j + 0.5) / sub - 0.5), q_lab)
        total = total + model.classical(Q, Q - G, C)[0]
    return total / sub


@pytest.mark.parametrize("width", [0.5, 1.0])
def test_average_matches_the_goniometer_turning_through_the_frame(width):
    import dataclasses

    geometry = dataclasses.replace(GEOMETRY, angular_step=-width)  # the sign of the step does not matter
    make, values, _ = ARAGONITE
    s = make()
    C = s.full_voigt([values[n] for n in s.free])
    frame, q_lab, Q, G = _pixels_near_spots(geometry, np.random.default_rng(3))
    truth = _brute_force(geometry, frame, q_lab, G, C)
    centre = model.classical(Q, Q - G, C)[0]
    axis = geometry.scan_axis_crystal
    k = model.exposure_substeps(Q, Q - G, axis, width)
    averaged = model.ExposureModel(Q, Q - G, s.basis, model.Exposure(axis, width, k)).evaluate(
        [values[n] for n in s.free], jacobian=False)[0]
    assert np.abs(centre / truth - 1).max() > 0.02  # the frame centre is far off for some points
    assert 1 < k.max() <= model.MAX_SUBSTEPS and k.min() == 1
    assert np.abs(averaged / truth - 1).max() < 2e-3
    assert abs(np.mean(averaged / truth - 1)) < 2e-5


def test_jacobian_is_the_derivative_of_the_average():
    make, values, _ = MG
    s = make()
    rng = np.random.default_rng(5)
    G = np.array([3.0, -1.0, 2.0])
    q = rng.normal(size=(60, 3)) * 0.08
    axis = np.array([0.2, -0.4, 0.9]) / np.linalg.norm([0.2, -0.4, 0.9])
    m = model.ExposureModel(G + q, q, s.basis, model.Exposure(axis, 1.5, rng.integers(1, 6, 60)))
    p = np.array([values[n] for n in s.free])
    _, J = m.evaluate(p)
    for a in range(len(p)):
        h = np.zeros_like(p)
        h[a] = 1e-4 * p[a]
        numeric = (m.evaluate(p + h, False)[0] - m.evaluate(p - h, False)[0]) / (2 * h[a])
        np.testing.assert_allclose(J[:, a], numeric, rtol=1e-6, atol=1e-9 * np.abs(J).max())


def test_opencl_exposure_kernel_matches_numpy():
    pytest.importorskip("pyopencl")
    try:
        model_cl._program()
    except Exception as exc:
        pytest.skip(f"no OpenCL device: {exc}")
    make, values, _ = ARAGONITE
    s = make()
    rng = np.random.default_rng(2)
    G = np.array([1.3, 2.4, -3.3])
    q = rng.normal(size=(4000, 3)) * 0.1
    axis = GEOMETRY.scan_axis_crystal
    exposure = model.Exposure(axis, 1.0, model.exposure_substeps(G + q, q, axis, 1.0))
    p = np.array([values[n] for n in s.free]) * 1.05
    T_ref, J_ref = model.ExposureModel(G + q, q, s.basis, exposure).evaluate(p)
    m = model_cl.make_model(G + q, q, s.basis, backend="opencl", exposure=exposure)
    T, J = m.evaluate(p)
    np.testing.assert_allclose(T, T_ref, rtol=2e-5)
    np.testing.assert_allclose(J, J_ref, rtol=2e-4, atol=2e-5 * np.abs(J_ref).max())
    assert m.evaluate(p, jacobian=False)[1] is None


def _points(n=400, counts=1e4):
    rng = np.random.default_rng(1)
    G = np.array([[0.0, 1.58, 0.0], [2.53, 0.0, 2.19]])
    spot = rng.integers(0, 2, n)
    q = rng.normal(size=(n, 3)) * 0.1
    return Points.from_harvest(G[spot] + q, np.full(n, counts), spot, G)


def test_auto_integrates_only_when_it_changes_the_model_by_more_than_the_noise(caplog):
    make, values, _ = ARAGONITE
    C = make().full_voigt([values[n] for n in make().free])
    with caplog.at_level(logging.INFO, logger="difframe.tds.fit"):
        assert choose_exposure(_points(), C, FitSettings(), GEOMETRY) is not None
        assert choose_exposure(_points(counts=1e-2), C, FitSettings(), GEOMETRY) is None  # drowned in noise
        assert choose_exposure(_points(), C, FitSettings(), None) is None
    assert "less than the noise" in caplog.text and "no geometry" in caplog.text
    fixed = choose_exposure(_points(), C, FitSettings(exposure="on", substeps=3), GEOMETRY)
    assert np.all(fixed.substeps == 3) and fixed.width == 1.0
    assert choose_exposure(_points(), C, FitSettings(exposure="off"), GEOMETRY) is None


def test_bad_exposure_settings_are_named(caplog):
    C = np.eye(6) * 100
    with pytest.raises(UsageError, match="exposure_substeps = 0"):
        choose_exposure(_points(), C, FitSettings(substeps=0), GEOMETRY)
    with pytest.raises(UsageError, match="exposure = 'on' needs the experiment geometry"):
        choose_exposure(_points(), C, FitSettings(exposure="on"), None)
    with pytest.raises(UsageError, match="'sometimes'"):
        choose_exposure(_points(), C, FitSettings(exposure="sometimes"), GEOMETRY)
    with pytest.raises(UsageError, match="exposure_width = -1"):
        choose_exposure(_points(), C, FitSettings(exposure_width=-1.0), GEOMETRY)
    with pytest.raises(UsageError, match="at least 1, got 0"):
        model.Exposure(np.array([0, 0, 1.0]), 1.0, np.array([1, 0])).nodes(np.ones((2, 3)), np.ones((2, 3)))
    with caplog.at_level(logging.WARNING, logger="difframe.tds.fit"):
        choose_exposure(_points(), C, FitSettings(exposure="on"), GEOMETRY, header_increment=0.5)
    assert "angular_step = 1 deg disagrees with Angle_increment = 0.5 deg" in caplog.text


def test_without_opencl_the_average_runs_in_numpy(monkeypatch):
    def no_device():
        raise RuntimeError("no platforms found")

    monkeypatch.setattr(model_cl, "_program", no_device)
    make, values, _ = MG
    s = make()
    q = np.array([[0.1, 0.05, 0.0], [0.0, -0.08, 0.03]])
    G = np.array([2.0, 1.0, 0.5])
    exposure = model.Exposure(np.array([0.0, 0.0, 1.0]), 2.0, np.array([4, 1]))
    m = model_cl.make_model(G + q, q, s.basis, backend="auto", exposure=exposure)
    assert isinstance(m, model.ExposureModel)
    p = [values[n] for n in s.free]
    T = m.evaluate(p, jacobian=False)[0]
    assert T[1] == pytest.approx(model.NumpyModel(G + q, q, s.basis).evaluate(p, False)[0][1])  # one node: centre
    assert T[0] != pytest.approx(model.NumpyModel(G + q, q, s.basis).evaluate(p, False)[0][0], rel=1e-6)


def test_fused_pass_matches_the_numpy_statement():
    """The threaded numba pass (T, dT/dp and their average over nodes) against the vectorised numpy statement
    (model.classical on every node, averaged with np.add.reduceat), for a triclinic tensor (21 constants)."""
    from difframe.crystal.symmetry import elastic_structure

    s = elastic_structure("1~")
    rng = np.random.default_rng(11)
    a = rng.normal(size=(6, 6))
    C = 20.0 * (a @ a.T) + 100.0 * np.eye(6)
    p = np.array([C[int(n[1]) - 1, int(n[2]) - 1] for n in s.free])
    G = np.array([2.0, -1.5, 3.0])
    q = rng.normal(size=(500, 3)) * 0.1
    T, J = model.NumpyModel(G + q, q, s.basis).evaluate(p)
    T_ref, J_ref = model.classical(G + q, q, C, s.basis)
    np.testing.assert_allclose(T, T_ref, rtol=1e-12)
    np.testing.assert_allclose(J, J_ref, rtol=1e-10, atol=1e-12 * np.abs(J_ref).max())
    exposure = model.Exposure(GEOMETRY.scan_axis_crystal, 1.0, rng.integers(1, 7, 500))
    Qe, qe, w, starts = exposure.nodes(G + q, q)
    T_ref, J_ref = model.classical(Qe, qe, C, s.basis)
    T, J = model.ExposureModel(G + q, q, s.basis, exposure).evaluate(p)
    np.testing.assert_allclose(T, np.add.reduceat(w * T_ref, starts), rtol=1e-12)
    np.testing.assert_allclose(J, np.add.reduceat(w[:, None] * J_ref, starts, axis=0), rtol=1e-10,
                               atol=1e-12 * np.abs(J_ref).max())
    q[7] = 0.0  # a point on the Bragg peak: named
    with pytest.raises(DataError, match="point 7 has a singular Christoffel matrix"):
        model.NumpyModel(G + q, q, s.basis).evaluate(p)
