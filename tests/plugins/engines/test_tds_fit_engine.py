"""The tds_fit engine through the plugin manager, with the symmetry of difframe.crystal, to result files."""

import json

import h5py
import numpy as np
import pytest

from difframe.crystal.symmetry import elastic_structure
from difframe.errors import UsageError
from difframe.manager import PluginManager
from difframe.tds.model import tds_intensity

MG = {"C11": 59.40, "C12": 25.61, "C13": 21.44, "C33": 61.60, "C44": 16.40}


@pytest.fixture(scope="module")
def harvest():
    """Poisson counts around 8 spots of Mg (6/mmm), the model of TDS.md with one scale and baseline per spot."""
    rng = np.random.default_rng(21)
    structure = elastic_structure("1~,6(z),2(x)")
    a, c = 3.209, 5.211
    B = 2 * np.pi * np.linalg.inv(np.array([[a, 0, 0], [-a / 2, a * np.sqrt(3) / 2, 0], [0, 0, c]])).T
    hkl = np.array([[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 2], [2, 0, 1], [1, 0, 2], [1, 1, 2], [2, -1, 0]])
    G = hkl @ B
    n = 12000
    spot = rng.integers(0, len(G), n)
    d = rng.normal(size=(n, 3))
    Q = G[spot] + d / np.linalg.norm(d, axis=1)[:, None] * rng.uniform(0.03, 0.2, n)[:, None]
    T = tds_intensity(Q, G[spot], structure.full_voigt(MG))
    y = rng.poisson(3000 * T / np.median(T) * rng.uniform(0.5, 2, len(G))[spot] + 10).astype(float)
    return {"Q": Q, "intensity": y, "spot": spot, "G": G, "hkl": hkl, "structure": structure}


CGUESS = {"A11": [59.4, 1, 500], "A12": [30, 1, 500], "A13": [25, 1, 500], "A33": [70, 1, 500], "A44": [20, 1, 500]}


def test_engine_fits_and_writes_results(harvest, tmp_path):
    manager = PluginManager()
    spec = manager.get("engine", "tds_fit")
    assert spec.family == "tds"
    engine = spec.factory({"cguess": CGUESS, "minimiser": "trust_region"},
                          dict(harvest, manager=manager, output_dir=tmp_path,
                               threshold={"threshold_rule": "spot", "threshold_spot_rule_points": 12000}))
    engine.initialize()
    first = engine.iterate(3)
    assert first and all(set(m) == {"cost"} for m in first)
    costs = [m["cost"] for m in first]
    while not engine.outcome.converged:
        more = engine.iterate(50)
        assert more, "the engine stopped making progress without converging"
        costs += [m["cost"] for m in more]
    assert costs[-1] < costs[0]
    assert engine.iterate(10) == []  # converged: nothing more to do
    summary = engine.finalize()
    doc = json.loads((tmp_path / "fit_results.json").read_text())
    assert sorted(doc["constants"]) == sorted(f"C{i}{j}" for i in range(1, 7) for j in range(i, 7))
    k = doc["constants"]
    for name, value in MG.items():
        assert k[name]["value"] == pytest.approx(value, rel=5e-3)
    # relations of 6/mmm applied to the fitted values
    assert k["C22"]["value"] == pytest.approx(k["C11"]["value"])
    assert k["C66"]["value"] == pytest.approx((k["C11"]["value"] - k["C12"]["value"]) / 2)
    assert k["C55"]["sigma"] == pytest.approx(k["C44"]["sigma"]) and k["C44"]["sigma"] > 0
    assert k["C16"] == {"value": 0.0, "sigma": 0.0, "free": False}
    assert doc["fixed"] == ["C11"] and not k["C11"]["free"] and k["C33"]["free"]
    assert doc["ratios"]["C33/C11"] == pytest.approx(61.60 / 59.40, rel=5e-3)
    assert doc["points"] == 12000 and doc["spots"] == 8 and doc["converged"] is True
    assert doc["exposure"] == {"averaged": False}  # no geometry: frame centres
    assert doc["threshold"] == {"threshold_rule": "spot", "threshold_spot_rule_points": 12000}
    text = (tmp_path / "parametri.txt").read_text()
    assert "C33" in text and "fixed" in text and summary["text"].startswith(text.strip())
    assert "spot diagnostics" in summary["text"] and len(doc["spot_diagnostics"]) == 8
    assert sum(row["points"] for row in doc["spot_diagnostics"]) == 12000 and not any(r["bragg_tail"] for r in doc["spot_diagnostics"])
    assert (tmp_path / "spot_profiles.png").read_bytes()[:4] == b"\x89PNG"
    with h5py.File(tmp_path / "fit_results.h5") as f:
        np.testing.assert_allclose(f["voigt"][()], summary["result"].voigt)
        np.testing.assert_array_equal(f["spots/hkl"][()], harvest["hkl"])
        assert np.all(f["spots/scale"][()] > 0)


def test_engine_with_lbfgsb_and_nred(harvest):
    engine = PluginManager().get("engine", "tds_fit").factory(
        {"cguess": CGUESS, "minimiser": "lbfgsb", "nred": 2, "backend": "numpy"}, harvest)
    engine.initialize()
    engine.iterate(500)
    result = engine.finalize()["result"]
    assert result.n_points == 6000 and result.backend == "numpy"
    np.testing.assert_allclose(result.values, [MG[n] for n in result.names], rtol=1e-2)


def test_engine_refuses_missing_cguess_and_unknown_names(harvest):
    factory = PluginManager().get("engine", "tds_fit").factory
    with pytest.raises(UsageError, match="CGUESS is missing.*C11, C12, C13, C33, C44"):
        factory({}, harvest).initialize()
    with pytest.raises(UsageError, match="C66"):
        factory({"cguess": dict(CGUESS, A66=[10, 1, 100])}, harvest).initialize()
    with pytest.raises(UsageError, match="simplex"):
        factory({"cguess": CGUESS, "minimiser": "simplex"}, harvest).initialize()
