"""Refinement of tds2el's A_variables geometry corrections in the TDS fit.

Ground truth: a rotation stack simulated with the beam centre 0.8 px to the
right of where the conf_file says it is; harvested with the conf_file geometry,
the fit must find the 0.8 px again and give better constants than without it.
"""

import json
import re

import numpy as np
import pytest

from difframe.crystal.geometry import A_VARIABLE_NAMES
from difframe.errors import UsageError
from difframe.plugins.minimisers import trust_region
from difframe.run import Run
from difframe.tds import fit, results
from difframe.tds.config import geometry_of, read_tds_config
from difframe.tds.harvest import harvest
from difframe.tds.simulate import simulate
from difframe.tds.workflow import frame_files, harvest_options

OFFSET = 0.8  # px: true det_origin_X minus the conf_file's
CONF_X = 100.0
TRUTH = {"C11": 297.0, "C12": 95.2, "C44": 155.7}
SPEC = {
    "crystal": {"name": "MgO", "cell": [4.212, 4.212, 4.212, 90.0, 90.0, 90.0], "centering": "F",
                "generators": "1~,4(z),3(111)", "constants": TRUTH, "density": 3.585, "temperature": 300.0},
    "geometry": {"lmbda": 0.4, "dist": 40.0, "pixel_size": 0.172, "det_origin_X": CONF_X + OFFSET,
                 "det_origin_Y": 96.0, "angular_step": 0.5, "phi": 0.0, "alpha": 50.0, "kappa": 10.0,
                 "r1": 12.0, "r2": -7.0, "r3": 25.0, "d1": 0.3, "d2": -0.2},
    "detector": {"shape": [192, 200], "beamstop_radius": 5.0},
    "scan": {"frames": 60, "prefix": "mgo_", "max_hkl": 5, "max_spots": 8},
    "intensity": {"tds_scale": 300.0, "bragg": 2.0e8, "background": 2.0, "debye_waller": 0.3, "seed": 1},
    "options": {"DeltaQ_max": 0.15, "DeltaQ_min": 0.04, "threshold": 500000.0},
}


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    """The simulated folder, its conf_file moved to the wrong beam centre, and the harvest made with it."""
    folder = tmp_path_factory.mktemp("offset")
    simulate(SPEC, folder)
    conf = folder / "tds2el.par"
    text, n = re.subn(r"(?m)^det_origin_X = .*$", f"det_origin_X = {CONF_X}", conf.read_text())
    assert n == 1
    conf.write_text(text)
    tds = read_tds_config(folder / "input.par")
    geometry = geometry_of(tds)
    assert geometry.det_origin_X == CONF_X
    result = harvest(geometry, frame_files(tds), harvest_options(tds))
    data = {"Q": result.Q, "intensity": result.intensity, "spot": result.spot, "G": result.G, "hkl": result.hkl,
            "frame": result.frame, "pixel": result.pixel}
    from difframe.crystal.symmetry import elastic_structure

    structure = elastic_structure(tds["ascii_generators"], geometry.lattice.direct)
    return folder, data, geometry, structure, tds["CGUESS"]


def _fit(scan, a_variables, **data):
    _, harvested, geometry, structure, cguess = scan
    settings = fit.FitSettings(a_variables=a_variables, backend="numpy")
    return fit.fit({**harvested, **data}, structure, cguess, settings, trust_region.minimise, geometry=geometry)


def _worst_error(result):
    return max(abs(v / TRUTH[n] - 1) for n, v in zip(result.names, result.values))


def test_recomputed_q_at_zero_corrections_is_the_harvested_q(scan):
    _, data, geometry, structure, cguess = scan
    points = fit.Points.from_harvest(data["Q"], data["intensity"], data["spot"], data["G"], frame=data["frame"],
                                     pixel=data["pixel"])
    corrections = fit.GeometryCorrections.from_setting({"det_origin_X": [0.0, -2.0, 2.0]})
    constants = fit.Constants.from_cguess(cguess, structure.free)
    problem = fit.GeometryProblem(points, constants, geometry, corrections, data["hkl"][points.spots],
                                  lambda Q, q: None)
    Q, q = problem.points_at(np.zeros(len(A_VARIABLE_NAMES)))
    np.testing.assert_allclose(Q, points.Q, atol=1e-12)
    np.testing.assert_allclose(q, points.q, atol=1e-12)


def test_open_beam_centre_is_recovered_and_improves_the_constants(scan, tmp_path):
    closed = _fit(scan, None)
    refined = _fit(scan, {"det_origin_X": [0.0, -2.0, 2.0]})
    row = refined.geometry["det_origin_X"]
    assert refined.converged and list(refined.geometry) == ["det_origin_X"]
    assert abs(row["value"] - OFFSET) < 0.2
    assert 0 < row["sigma"] < 0.2 and row["corrected"] == pytest.approx(CONF_X + row["value"])
    assert _worst_error(refined) < 0.1 < _worst_error(closed)  # biased by Bragg tails: see the re-harvest test
    assert refined.reduced_chi2 < closed.reduced_chi2 / 3
    assert closed.geometry == {}

    files = results.write_all(refined, tmp_path)
    written = json.loads(files["json"].read_text())
    assert written["geometry"]["det_origin_X"]["value"] == pytest.approx(row["value"])
    assert written["geometry"]["det_origin_X"]["sigma"] == pytest.approx(row["sigma"])
    assert "det_origin_X" in files["parametri"].read_text()
    import h5py

    with h5py.File(files["hdf5"]) as f:
        assert f["geometry/names"][()].tolist() == [b"det_origin_X"]
        assert f["geometry/value"][0] == pytest.approx(row["value"])


def test_closed_non_zero_correction_is_applied(scan):
    uncorrected, known = _fit(scan, None), _fit(scan, {"det_origin_X": [OFFSET, OFFSET, OFFSET]})
    assert known.geometry == {}  # nothing refined
    assert known.reduced_chi2 < uncorrected.reduced_chi2 / 3


def test_reharvest_with_the_refined_geometry_converges(scan):
    """Points harvested with the wrong centre reach into the Bragg peak once corrected (DeltaQ_min was
    applied in the wrong place), which biases the first refinement a little; harvesting again with the
    refined geometry and refining once more lands on the true centre with a fit at chi^2 ~ 1."""
    folder, _, geometry, structure, cguess = scan
    first = _fit(scan, {"det_origin_X": [0.0, -2.0, 2.0]})
    deltas = [first.geometry.get(name, {"value": 0.0})["value"] for name in A_VARIABLE_NAMES]
    tds = read_tds_config(folder / "input.par")
    geometry = geometry.corrected(deltas)
    again = harvest(geometry, frame_files(tds), harvest_options(tds))
    data = {"Q": again.Q, "intensity": again.intensity, "spot": again.spot, "G": again.G, "hkl": again.hkl,
            "frame": again.frame, "pixel": again.pixel, "delta_q": again.attrs["delta_q"]}  # as the workflow does
    second = fit.fit(data, structure, cguess, fit.FitSettings(a_variables={"det_origin_X": [0.0, -2.0, 2.0]},
                     backend="numpy"), trust_region.minimise, geometry=geometry)
    assert second.geometry["det_origin_X"]["corrected"] == pytest.approx(CONF_X + OFFSET, abs=0.05)
    assert 0.9 < second.reduced_chi2 < 1.2
    assert _worst_error(second) < 0.015


def test_recentred_harvest_refuses_open_corrections(scan):
    with pytest.raises(UsageError, match="re-centred with centering_file earlier.h5"):
        _fit(scan, {"det_origin_X": [0.0, -2.0, 2.0]}, centering_file="earlier.h5")
    assert _fit(scan, [[0.0, 0.0, 0.0]] * 14, centering_file="earlier.h5").converged  # all closed: fine


@pytest.mark.parametrize("setting, message", [
    ([[0.0, -1.0, 1.0]] * 3, "14 \\[value, min, max\\] entries"),
    ({"det_origin_Z": [0.0, -1.0, 1.0]}, "'det_origin_Z'"),
    ({"kappa": [0.0, 1.0, -1.0]}, "entry for kappa"),
    ({"d1": "wide"}, "entry for d1"),
])
def test_bad_a_variables_name_the_culprit(scan, setting, message):
    with pytest.raises(UsageError, match=message):
        _fit(scan, setting)


def test_missing_geometry_or_pixels_are_named(scan):
    _, data, _, structure, cguess = scan
    settings = fit.FitSettings(a_variables={"r3": [0.0, -1.0, 1.0]}, backend="numpy")
    with pytest.raises(UsageError, match="geometry"):
        fit.build_problem(data, structure, cguess, settings)
    with pytest.raises(Exception, match="points/pixel"):
        _fit(scan, {"r3": [0.0, -1.0, 1.0]}, pixel=None)


def test_conf_file_a_variables_through_the_run(scan, tmp_path):
    folder = scan[0]
    conf = folder / "tds2el.par"
    original = conf.read_text()
    conf.write_text(original + "A_variables = [minimiser.Variable(0.0, 0.0, 0.0) for i in range(12)] + "
                    "[minimiser.Variable(0.0, -2.0, 2.0), minimiser.Variable(0.0, 0.0, 0.0)]\n"
                    "save_to_file = None\n")
    try:
        tds = read_tds_config(folder / "input.par")
    finally:
        conf.write_text(original)
    tds = dict(tds, output_directory=str(tmp_path))
    Run({"tds": tds}).run()
    written = json.loads((tmp_path / "fit_results.json").read_text())
    assert abs(written["geometry"]["det_origin_X"]["value"] - OFFSET) < 0.2
    assert list(written["geometry"]) == ["det_origin_X"]
