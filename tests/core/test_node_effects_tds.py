"""TDS nodes' EFFECT against independent truth: the geometry nodes against numpy statements of
docs/tds-geometry.md, the tds_fit engine's exposure, iteration and weighting nodes on a small simulated rutile
stack (difframe tds simulate, 20 frames of 1 deg), tds.REPLICA and tds.exposure_clear_peak through a run."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "tds"))

from difframe import Run  # noqa: E402
from difframe.crystal.symmetry import elastic_structure  # noqa: E402
from difframe.manager import PluginManager  # noqa: E402
from difframe.tds.config import geometry_of, read_tds_config  # noqa: E402
from difframe.tds.harvest import HarvestOptions, harvest, write_harvest  # noqa: E402
from difframe.tds.simulate import simulate  # noqa: E402

from test_tds_exposure_fit import RUTILE, SPEC  # noqa: E402

# -- geometry: docs/tds-geometry.md, written again in numpy --------------------------------------------------


def rot(axis: int, deg: float) -> np.ndarray:
    """Active right-handed rotation about lab axis 0 (x), 1 (y) or 2 (z)."""
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    m = np.eye(3)
    m[i, i] = m[j, j] = c
    m[j, i], m[i, j] = s, -s
    return m


GEOMETRY = {"lmbda": 0.7, "dist": 80.0, "pixel_size": 0.172, "det_origin_X": 50.0, "det_origin_Y": 40.0,
            "AA": 5.1, "BB": 6.3, "CC": 7.2, "aAA": 78.0, "aBB": 101.0, "aCC": 95.0, "angular_step": 0.5,
            "phi": 12.0, "omega": 10.0, "omega_offset": 4.0, "alpha": 50.0, "beta": 3.0, "kappa": 25.0,
            "r1": 17.0, "r2": -31.0, "r3": 8.0, "d1": 1.5, "d2": -2.0, "theta": 14.0, "theta_offset": -6.0,
            "beam_tilt_angle": 0.3}


def test_tds_geometry_cell_angles_aAA_aBB_make_the_cell():
    """tds.geometry.aAA / aBB (with aCC): the direct vectors have the given lengths and the angles
    alpha = (b, c), beta = (a, c), gamma = (a, b); a* lies along x and c along z, and B is reciprocal to them."""
    lattice = geometry_of({"geometry": GEOMETRY}).lattice
    a, b, c = np.asarray(lattice.direct).T

    def angle(u, v):
        return np.degrees(np.arccos(u @ v / np.linalg.norm(u) / np.linalg.norm(v)))

    np.testing.assert_allclose([np.linalg.norm(a), np.linalg.norm(b), np.linalg.norm(c)], [5.1, 6.3, 7.2])
    np.testing.assert_allclose([angle(b, c), angle(a, c), angle(a, b)], [78.0, 101.0, 95.0])
    astar = lattice.q(np.array([[1.0, 0, 0]]))[0]
    assert abs(astar[1]) < 1e-12 and abs(astar[2]) < 1e-12 and abs(c[0]) < 1e-12 and abs(c[1]) < 1e-12
    B = lattice.q(np.eye(3)).T  # columns a*, b*, c*
    np.testing.assert_allclose(np.column_stack([a, b, c]).T @ B, 2 * np.pi * np.eye(3), atol=1e-12)
    right = geometry_of({"geometry": {**GEOMETRY, "aAA": 90.0, "aBB": 90.0, "aCC": 90.0}}).lattice
    np.testing.assert_allclose(np.asarray(right.direct), np.diag([5.1, 6.3, 7.2]), atol=1e-12)


def test_tds_geometry_omega_offset_turns_the_goniometer():
    """tds.geometry.omega_offset: Q_c = (R_gonio U)^T Q_lab with R_gonio = R_z(omega + omega_offset)
    [R_y(alpha) R_z(kappa) R_y(-alpha)] [R_y(beta) R_z(phi_n) R_y(-beta)], U = R_z(r3) R_y(r2) R_x(r1)."""
    g = GEOMETRY
    geometry = geometry_of({"geometry": g})
    U = rot(2, g["r3"]) @ rot(1, g["r2"]) @ rot(0, g["r1"])
    for n in (0, 7):
        phi = g["phi"] + n * g["angular_step"]
        gonio = (rot(2, g["omega"] + g["omega_offset"]) @ rot(1, g["alpha"]) @ rot(2, g["kappa"]) @
                 rot(1, -g["alpha"]) @ rot(1, g["beta"]) @ rot(2, phi) @ rot(1, -g["beta"]))
        np.testing.assert_allclose(geometry.lab_to_crystal(n), (gonio @ U).T, atol=1e-12)
    unset = geometry_of({"geometry": {**g, "omega_offset": 0.0}})
    assert np.abs(unset.lab_to_crystal(0) - geometry.lab_to_crystal(0)).max() > 0.05


def test_tds_geometry_theta_offset_turns_the_detector_arm():
    """tds.geometry.theta_offset: pixel (row, col) is at P = R_z(theta + theta_offset) R_y(d2) R_x(d1) p with
    p = (dist, -(col - X) ps, -(row - Y) ps); Q_lab = |k| P/|P| - |k| R_y(beam_tilt) x."""
    g = GEOMETRY
    geometry = geometry_of({"geometry": g})
    rows, cols = np.array([0.0, 12.0, 99.0]), np.array([3.0, 70.0, 41.0])
    p = np.stack([np.full(3, g["dist"]), -(cols - g["det_origin_X"]) * g["pixel_size"],
                  -(rows - g["det_origin_Y"]) * g["pixel_size"]], axis=1)
    P = p @ (rot(2, g["theta"] + g["theta_offset"]) @ rot(1, g["d2"]) @ rot(0, g["d1"])).T
    k = 2 * np.pi / g["lmbda"]
    want = k * P / np.linalg.norm(P, axis=1, keepdims=True) - k * rot(1, g["beam_tilt_angle"])[:, 0]
    np.testing.assert_allclose(geometry.q_lab(rows, cols), want, atol=1e-12)
    unset = geometry_of({"geometry": {**g, "theta_offset": 0.0}})
    assert np.abs(unset.q_lab(rows, cols) - want).max() > 0.01


# -- the fit's nodes on a simulated stack ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A noise-free rutile stack of 20 frames of 1 deg (integrated over each exposure), harvested."""
    spec = copy.deepcopy(SPEC)
    spec["scan"]["frames"] = 20
    folder = tmp_path_factory.mktemp("node_effects") / "run"
    truth = simulate(spec, folder)
    tds = read_tds_config(folder / "input.par")
    geometry = geometry_of(tds)
    options = HarvestOptions(delta_q_min=0.04, delta_q_max=0.15, threshold=1e7, spots=np.array(tds["collectSpots"]),
                             mask_file=str(folder / "filter.edf"), normalisation_file=str(folder / "normalisation.dat"))
    result = harvest(geometry, [folder / f for f in truth["frames"]], options)
    structure = elastic_structure(spec["crystal"]["generators"], geometry.lattice.direct)
    context = {"Q": result.Q, "intensity": result.intensity, "spot": result.spot, "G": result.G, "hkl": result.hkl,
               "frame": result.frame, "pixel": result.pixel, "geometry": geometry, "structure": structure,
               "angle_increment": result.attrs["angle_increment_deg"], "delta_q": result.attrs["delta_q"]}
    cguess = {n: [v if n == "C11" else 1.1 * v, 1.0, 2000.0] for n, v in RUTILE.items()}
    return {"folder": folder, "tds": tds, "result": result, "context": context, "cguess": cguess,
            "geometry": geometry}


def tds_fit(stack, **params):
    """The tds_fit engine (the plugin, as a run makes it) on the stack, initialised."""
    manager = PluginManager()
    engine = manager.get("engine", "tds_fit").factory({"cguess": stack["cguess"], "backend": "numpy", **params},
                                                      dict(stack["context"], manager=manager))
    engine.initialize()
    return engine


def test_tds_fit_exposure_substeps_and_width_set_the_average(stack):
    """engine.tds_fit.exposure_substeps / exposure_width: one sub-step is the frame centre (the model of
    exposure 'off'); several average over the width, which at 1e-5 deg is the centre again and at the frame's
    1 deg is not."""
    problem = lambda **p: tds_fit(stack, exposure_clear_peak=False, **p).problem  # noqa: E731
    centre = problem(exposure="off")
    x = centre.x0
    r_centre = centre.residuals(x)
    one = problem(exposure="on", exposure_substeps=1)
    np.testing.assert_allclose(one.residuals(x), r_centre, rtol=1e-10, atol=1e-12)
    narrow = problem(exposure="on", exposure_substeps=6, exposure_width=1e-5)
    np.testing.assert_allclose(narrow.residuals(x), r_centre, rtol=1e-6, atol=1e-8)
    wide = problem(exposure="on", exposure_substeps=6, exposure_width=1.0)
    exposure = wide.model.exposure
    assert exposure.width == 1.0 and (np.asarray(exposure.substeps) == 6).all()
    assert np.abs(wide.residuals(x) - r_centre).max() > 1e-3 * np.abs(r_centre).max()
    chosen = problem(exposure="on").model.exposure  # unset: per point, at most 12, more than 1 somewhere
    assert chosen.width == 1.0 and 1 <= np.min(chosen.substeps) and 1 < np.max(chosen.substeps) <= 12


def _swept(data, geometry, width):
    """Brute force: points whose Q comes within DeltaQ_min of G while the goniometer turns through the frame."""
    q_lab = geometry.q_lab(data["pixel"][:, 0], data["pixel"][:, 1])
    G = data["G"][data["spot"]]
    closest = np.full(len(G), np.inf)
    for t in np.linspace(-0.5, 0.5, 101) * width / abs(geometry.angular_step):
        Q = np.einsum("nij,nj->ni", geometry.lab_to_crystal(data["frame"] + t), q_lab)
        closest = np.minimum(closest, np.linalg.norm(Q - G, axis=1))
    return closest / (data["delta_q"][0] * geometry.lattice.max_reciprocal)


def test_tds_fit_exposure_clear_peak_leaves_out_the_points_that_saw_the_peak(stack):
    """engine.tds_fit.exposure_clear_peak: True fits the points that stay beyond DeltaQ_min of their spot
    during their exposure (the goniometer turned through each frame, brute force), False fits them all."""
    data = stack["context"]
    kept = len(tds_fit(stack, exposure="on", exposure_clear_peak=True).problem.points.y)
    every = len(tds_fit(stack, exposure="on", exposure_clear_peak=False).problem.points.y)
    ratio = _swept(data, stack["geometry"], 1.0)
    assert every == len(data["Q"])
    assert 0 < every - kept < 0.1 * every
    sure_in, sure_out = (ratio < 0.999).sum(), (ratio < 1.001).sum()  # the edge to the arc's straightening
    assert sure_in <= every - kept <= sure_out


def test_tds_fit_weighting(stack):
    """engine.tds_fit.weighting: 'poisson' weights each residual by 1/intensity (sqrt weights 1/sqrt(y)),
    'uniform' weighs all alike; the two give different fits of the same points."""
    y = np.asarray(stack["context"]["intensity"], dtype=float)
    poisson = tds_fit(stack, exposure="off", weighting="poisson").problem
    uniform = tds_fit(stack, exposure="off", weighting="uniform").problem
    floor = 1e-2 * np.median(np.abs(y))
    np.testing.assert_allclose(poisson.points.sqrt_w ** 2 * np.maximum(poisson.points.y, floor), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(uniform.points.sqrt_w, 1.0)
    x = poisson.x0 * 1.05
    assert not np.allclose(poisson.residuals(x), uniform.residuals(x))


def test_tds_fit_max_iterations_caps_each_iterate_call(stack):
    """engine.tds_fit.max_iterations: an iterate call makes at most that many model evaluations (one cost per
    evaluation), whatever it is asked for; the default lets the same call run on."""
    capped = tds_fit(stack, exposure="off", max_iterations=3)
    costs = capped.iterate(50)
    assert 1 <= len(costs) <= 3 and not capped.outcome.converged
    free = tds_fit(stack, exposure="off")
    assert len(free.iterate(50)) > 3


# -- through a run ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def harvest_file(stack, tmp_path_factory):
    """The stack's harvest with spot (0 2 0) turned by the 4-fold axis into (-2 0 0) added: its symmetry image
    (rutile's TDS has the crystal's point symmetry, so the turned points are a valid measurement)."""
    from dataclasses import replace

    r = stack["result"]
    i = next(k for k, h in enumerate(r.hkl.tolist()) if h == [0, 2, 0])
    four = rot(2, 90.0)  # (h, k, l) -> (-k, h, l) in the tetragonal Cartesian frame
    sel = r.spot == i
    extra = len(r.G)
    turned = replace(r, Q=np.concatenate([r.Q, r.Q[sel] @ four.T]),
                     intensity=np.concatenate([r.intensity, r.intensity[sel]]),
                     spot=np.concatenate([r.spot, np.full(sel.sum(), extra)]),
                     frame=np.concatenate([r.frame, r.frame[sel]]), pixel=np.concatenate([r.pixel, r.pixel[sel]]),
                     hkl=np.concatenate([r.hkl, [[-2, 0, 0]]]), G=np.concatenate([r.G, [r.G[i] @ four.T]]),
                     centroid=np.concatenate([r.centroid, r.centroid[i:i + 1]]))
    path = tmp_path_factory.mktemp("replica") / "harvest.h5"
    write_harvest(turned, path)
    return path, len(turned.Q)


def _fit_inputs(stack, harvest_file, tmp_path, monkeypatch, **tds):
    """Run ``difframe tds`` on the saved harvest up to the fit's start: (engine parameters, fitted hkl, points)."""
    from difframe.plugins.engines import tds_fit as plugin

    seen = {}
    start = getattr(plugin.TDSFit.initialize, "original", plugin.TDSFit.initialize)

    class Stop(Exception):
        pass

    def initialize(self):
        start(self)
        seen.update(params=dict(self.p), hkl=np.asarray(self.harvest["hkl"]).tolist(),
                    points=len(self.problem.points.y))
        raise Stop

    initialize.original = start
    monkeypatch.setattr(plugin.TDSFit, "initialize", initialize)
    params = dict(stack["tds"])
    params.update(load_from_file=str(harvest_file[0]), save_to_file=None, fitSpots=True, CGUESS=stack["cguess"],
                  output_directory=str(tmp_path), visSim=0, **tds)
    with pytest.raises(Stop):
        Run({"tds": params}).run()
    return seen


def test_tds_replica_fits_the_symmetry_images_of_collect_spots(stack, harvest_file, tmp_path, monkeypatch):
    """tds.REPLICA: 1 adds to collectSpots their images under the point group that the harvest holds,
    0 fits the listed spots only."""
    listed = _fit_inputs(stack, harvest_file, tmp_path, monkeypatch, collectSpots=[[0, 2, 0]], REPLICA=0,
                          exposure="off")
    assert listed["hkl"] == [[0, 2, 0]]
    images = _fit_inputs(stack, harvest_file, tmp_path, monkeypatch, collectSpots=[[0, 2, 0]], REPLICA=1,
                          exposure="off")
    assert sorted(images["hkl"]) == [[-2, 0, 0], [0, 2, 0]]
    assert images["points"] == 2 * listed["points"]


def test_tds_exposure_clear_peak_reaches_the_fit(stack, harvest_file, tmp_path, monkeypatch):
    """tds.exposure_clear_peak (input.par) is the engine's: True leaves the points that saw the peak out of the
    fit, False keeps every harvested point."""
    on = _fit_inputs(stack, harvest_file, tmp_path, monkeypatch, exposure="on", exposure_clear_peak=True)
    off = _fit_inputs(stack, harvest_file, tmp_path, monkeypatch, exposure="on", exposure_clear_peak=False)
    assert on["params"]["exposure_clear_peak"] is True and off["params"]["exposure_clear_peak"] is False
    assert off["points"] == len(stack["result"].Q)  # every point of collectSpots (the simulated spots)
    assert on["points"] < off["points"]
