"""A monoclinic crystal whose constants are given in the IEEE setting (diad along Y) is simulated in a c-unique
cell, where difframe's frame (a* along x, c along z) differs from IEEE's: harvested and fitted there, the
constants come back equal to the given ones once the fit is turned into the IEEE setting."""

import json

import numpy as np
import pytest

from difframe.crystal.setting import ieee_axes
from difframe.crystal.symmetry import elastic_structure
from difframe.plugins.minimisers import trust_region
from difframe.tds import fit, results
from harvest_support import simulate_and_harvest

IEEE = {"C11": 171.1, "C12": 60.3, "C13": 27.8, "C15": 5.0, "C22": 110.1, "C23": 41.9, "C25": -4.0, "C33": 98.4,
        "C35": 6.0, "C44": 39.3, "C46": 3.0, "C55": 24.2, "C66": 40.2}
SPEC = {
    "crystal": {"name": "monoclinic c unique", "cell": [5.0, 6.0, 7.0, 90, 90, 104], "generators": "1~,2(z)",
                "setting": "ieee", "constants": IEEE, "density": 2.93, "temperature": 300.0},
    "geometry": {"lmbda": 0.4, "dist": 30.0, "pixel_size": 0.172, "det_origin_X": 60.3, "det_origin_Y": 55.6,
                 "angular_step": 0.5, "kappa": 20.0, "r1": 17.0, "r2": 31.0, "r3": 8.0, "phi": -7.5},
    "detector": {"shape": [112, 120], "beamstop_radius": 3.0},
    "scan": {"frames": 30, "prefix": "f_", "max_hkl": 4, "max_spots": 8, "exposure_substeps": 3},
    "intensity": {"noise": False, "tds_scale": 2000.0, "bragg": 2e8, "seed": 1},
    "options": {"DeltaQ_max": 0.15, "DeltaQ_min": 0.04, "threshold": 1e7},
}


def test_monoclinic_given_in_ieee_comes_back_after_the_fit(tmp_path):
    truth, geometry, data = simulate_and_harvest(SPEC, tmp_path / "run")
    axes = ieee_axes(geometry.lattice)
    assert not np.allclose(axes, np.eye(3), atol=0.1)  # the settings differ in this cell
    # the truth states both settings; in difframe's frame the diad is z: C16 C26 C36 C45 instead
    assert truth["setting"] == "ieee" and truth["ieee"]["constants"] == pytest.approx(IEEE)
    assert {"C16", "C26", "C36", "C45"} <= set(truth["free"]) and "C15" not in truth["free"]
    structure = elastic_structure(SPEC["crystal"]["generators"], geometry.lattice.direct)
    values = truth["constants"]
    cguess = {n: [v if n == truth["fixed"] else 1.1 * v, -10 * abs(v) - 1, 10 * abs(v) + 1] for n, v in values.items()}
    fitted = fit.fit(data, structure, cguess, fit.FitSettings(), trust_region.minimise, geometry=geometry)
    ieee = results.ieee_report(fitted, geometry.lattice)
    voigt = np.array(ieee["voigt"])
    given = elastic_structure(SPEC["crystal"]["generators"], geometry.lattice.direct, frame=axes).full_voigt(IEEE)
    assert np.abs(voigt - given).max() < 0.05, np.round(voigt - given, 3)  # GPa; noise-free: measured 0.006
    assert np.all(np.array(ieee["voigt_sigma"]) >= 0)
    text = results.report(fitted.__class__(**{**fitted.__dict__, "extra": {**fitted.extra, "ieee": ieee}}))
    assert "IEEE setting" in text
    json.dumps(ieee)  # fit_results.json can hold it


def test_unknown_setting_is_named():
    from difframe.errors import UsageError
    from difframe.tds.simulate import SimulationSpec

    spec = {**SPEC, "crystal": {**SPEC["crystal"], "setting": "nye"}}
    with pytest.raises(UsageError, match="crystal.setting = 'nye', expected one of giacovazzo, ieee"):
        SimulationSpec.from_mapping(spec, "spec.toml")


def test_calcite_example_in_the_ieee_setting():
    """examples/tds/calcite_ieee.toml: the tables' C14 (IEEE) is C15 = C14, C25 = C46 = -C15 in difframe's frame."""
    from pathlib import Path

    from difframe.crystal.setting import ieee_to_giacovazzo
    from difframe.params import load_source
    from difframe.tds.simulate import SimulationSpec

    path = Path(__file__).resolve().parents[3] / "examples" / "tds" / "calcite_ieee.toml"
    sim = SimulationSpec.from_mapping(load_source(path), path.name)
    lattice = sim.geometry.lattice
    assert sim.setting == "ieee"
    ieee = elastic_structure(sim.generators, lattice.direct, frame=ieee_axes(lattice)).full_voigt(sim.constants)
    ours = elastic_structure(sim.generators, lattice.direct).values_of(ieee_to_giacovazzo(ieee, lattice))
    assert ours["C15"] == pytest.approx(sim.constants["C14"]) and "C14" not in ours
    assert ours["C11"] == pytest.approx(137.0) and ours["C44"] == pytest.approx(35.0)
