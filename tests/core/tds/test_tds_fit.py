"""Recovery of known crystals from synthetic TDS points, the scale convention and bad input."""

import numpy as np
import pytest

from difframe.errors import DataError, UsageError
from difframe.plugins.minimisers import lbfgsb, trust_region
from difframe.tds import fit
from difframe.tds.model import NumpyModel
from tdsfit_support import ARAGONITE, MG, MGO, synthetic_harvest


def _cguess(values, spread=1.15):
    """Start 15 % off the truth (except the first, which sets the scale), wide bounds."""
    return {n.replace("C", "A"): [v if k == 0 else v * spread, 1.0, 1000.0] for k, (n, v) in enumerate(values.items())}


def _truth(result, values):
    return np.array([values[n] for n in result.names])


@pytest.mark.parametrize("crystal", [MGO, MG, ARAGONITE], ids=["MgO", "Mg", "aragonite"])
def test_recovers_known_crystals_within_half_a_percent(crystal):
    data, structure, values = synthetic_harvest(crystal, 20000, np.random.default_rng(11))
    result = fit.fit(data, structure, _cguess(values), fit.FitSettings(), trust_region.minimise)
    truth = _truth(result, values)
    assert result.converged
    assert result.fixed == ["C11"] and result.sigma[0] == 0.0
    np.testing.assert_allclose(result.values, truth, rtol=5e-3)
    # the uncertainties are honest: errors within 4 sigma, reduced chi^2 of Poisson data near 1
    assert np.all(np.abs(result.values - truth)[1:] < 4 * result.sigma[1:])
    assert 0.95 < result.reduced_chi2 < 1.05
    ratios = result.ratios
    for name in result.names[1:]:
        assert ratios[f"{name}/C11"] == pytest.approx(values[name] / values["C11"], rel=5e-3)


def test_lbfgsb_reaches_the_same_answer():
    data, structure, values = synthetic_harvest(MGO, 8000, np.random.default_rng(12))
    settings = fit.FitSettings(ftol=1e-10)
    a = fit.fit(data, structure, _cguess(values), settings, trust_region.minimise)
    b = fit.fit(data, structure, _cguess(values), settings, lbfgsb.minimise)
    np.testing.assert_allclose(b.values, a.values, rtol=2e-4)
    np.testing.assert_allclose(b.values, _truth(b, values), rtol=5e-3)


def test_variable_projection_gives_exact_scales_and_baselines_on_clean_data():
    rng = np.random.default_rng(13)
    data, structure, values = synthetic_harvest(MG, 3000, rng)
    p = np.array([values[n] for n in structure.free])
    q = data["Q"] - data["G"][data["spot"]]
    T = NumpyModel(data["Q"], q, structure.basis).evaluate(p, jacobian=False)[0]
    A_true, B_true = rng.uniform(1, 5, len(data["G"])) * 1e4, rng.uniform(0, 50, len(data["G"]))
    data["intensity"] = A_true[data["spot"]] * T + B_true[data["spot"]]
    problem, _ = fit.build_problem(data, structure, _cguess(values, 1.0), fit.FitSettings(backend="numpy"))
    x = problem.x0
    assert np.abs(problem.residuals(x)).max() < 1e-9
    A, B = problem.linear(x)
    np.testing.assert_allclose(A, A_true, rtol=1e-10)
    np.testing.assert_allclose(B, B_true, rtol=1e-8, atol=1e-8)
    # at zero residual the projected (Kaufman) Jacobian is the exact derivative of the projected residuals
    J = problem.jacobian(x)
    for k in range(len(x)):
        h = 1e-5 * x[k]
        up, down = x.copy(), x.copy()
        up[k] += h
        down[k] -= h
        fd = (problem.residuals(up) - problem.residuals(down)) / (2 * h)
        np.testing.assert_allclose(J[:, k], fd, rtol=1e-5, atol=1e-6 * np.abs(fd).max())


def test_quantum_fit_recovers_constants_at_low_temperature():
    rng = np.random.default_rng(14)
    data, structure, values = synthetic_harvest(MGO, 6000, rng)
    p = np.array([values[n] for n in structure.free])
    q = data["Q"] - data["G"][data["spot"]]
    cold = NumpyModel(data["Q"], q, structure.basis, quantum_bose=True, temperature=15.0, density=3.585)
    T = cold.evaluate(p, jacobian=False)[0]
    data["intensity"] = rng.poisson(3000 * T / np.median(T) + 5).astype(float)
    settings = fit.FitSettings(quantum_bose=True, temperature=15.0, density=3.585)
    result = fit.fit(data, structure, _cguess(values), settings, trust_region.minimise)
    np.testing.assert_allclose(result.values, p, rtol=5e-3)
    classical = fit.fit(data, structure, _cguess(values), fit.FitSettings(), trust_region.minimise)
    assert classical.reduced_chi2 > result.reduced_chi2  # ignoring zero-point motion fits worse


def test_all_free_fit_is_refused_with_the_reason():
    data, structure, values = synthetic_harvest(MGO, 2000, np.random.default_rng(15))
    with pytest.raises(UsageError, match="only their ratios"):
        fit.fit(data, structure, _cguess(values), fit.FitSettings(fix="none"), trust_region.minimise)


def test_bulk_modulus_convention_keeps_ratios():
    data, structure, values = synthetic_harvest(MGO, 6000, np.random.default_rng(16))
    one = fit.fit(data, structure, _cguess(values), fit.FitSettings(), trust_region.minimise)
    bulk = fit.fit(data, structure, _cguess(values), fit.FitSettings(fix="bulk", bulk_modulus=200.0),
                   trust_region.minimise)
    C11, C12 = bulk.values[0], bulk.values[1]
    assert (C11 + 2 * C12) / 3 == pytest.approx(200.0, rel=1e-12)  # cubic Voigt bulk modulus
    for key, value in one.ratios.items():
        assert bulk.ratios[key] == pytest.approx(value, rel=1e-4)
    assert np.all(bulk.sigma > 0)  # after rescaling every constant carries an uncertainty
    assert bulk.cost == pytest.approx(one.cost, rel=1e-4)


def test_closed_interval_and_named_fix():
    data, structure, values = synthetic_harvest(MGO, 3000, np.random.default_rng(17))
    cg = _cguess(values)
    cg["A44"] = [155.7, 155.7, 155.7]
    assert fit.fit(data, structure, cg, fit.FitSettings(), trust_region.minimise).fixed == ["C44"]
    named = fit.fit(data, structure, _cguess(values), fit.FitSettings(fix="A12"), trust_region.minimise)
    assert named.fixed == ["C12"] and named.reference == "C12"


@pytest.mark.parametrize("change, message", [
    (lambda cg: cg.update({"A13": [10, 0, 100]}), "A13"),
    (lambda cg: cg.pop("A44"), "C44"),
    (lambda cg: cg.update({"A12": [500, 0, 400]}), "min <= value <= max"),
    (lambda cg: cg.update({"A12": [400, 0, 1000]}), "Born"),
    (lambda cg: cg.update({"A12": "big"}), "value, min, max"),
])
def test_bad_cguess_names_the_culprit(change, message):
    data, structure, values = synthetic_harvest(MGO, 300, np.random.default_rng(18))
    cg = _cguess(values)
    change(cg)
    with pytest.raises(UsageError, match=message):
        fit.fit(data, structure, cg, fit.FitSettings(), trust_region.minimise)


def test_bad_points_are_named_and_nred_thins():
    data, structure, values = synthetic_harvest(MGO, 3000, np.random.default_rng(19))
    reduced, _ = fit.build_problem(data, structure, _cguess(values), fit.FitSettings(nred=3))
    assert len(reduced.points.y) == 1000
    broken = dict(data, intensity=data["intensity"].copy())
    broken["intensity"][7] = np.nan
    with pytest.raises(DataError, match="points/intensity"):
        fit.build_problem(broken, structure, _cguess(values), fit.FitSettings())
    with pytest.raises(DataError, match="points/spot"):
        fit.build_problem(dict(data, spot=data["spot"] + 100), structure, _cguess(values), fit.FitSettings())
    with pytest.raises(DataError, match=r"\(N, 3\)"):
        fit.build_problem(dict(data, Q=data["Q"][:, :2]), structure, _cguess(values), fit.FitSettings())
