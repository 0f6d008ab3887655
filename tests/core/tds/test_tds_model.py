"""The TDS model against an eigen-decomposition written from the physics, and finite differences."""

import numpy as np
import pytest

from difframe.errors import DataError, UsageError
from difframe.tds import model
from tdsfit_support import MGO, ARAGONITE, MG, synthetic_harvest


def _points(rng, n=200):
    G = rng.normal(size=3) * 3
    q = rng.normal(size=(n, 3)) * 0.1
    return G + q, q


def _reference_T(Q, q, C_voigt, bose=None):
    """Sum over branches of (Q.e_j)^2 / lambda_j, with Gamma built by explicit index loops."""
    V = [[0, 5, 4], [5, 1, 3], [4, 3, 2]]
    out = []
    for Qn, qn in zip(Q, q):
        gamma = np.zeros((3, 3))
        for i in range(3):
            for j in range(3):
                for k in range(3):
                    for m in range(3):
                        gamma[i, k] += C_voigt[V[i][j], V[k][m]] * qn[j] * qn[m]
        lam, e = np.linalg.eigh(gamma)
        factor = np.ones(3) if bose is None else bose(lam)
        out.append(sum((Qn @ e[:, b]) ** 2 / lam[b] * factor[b] for b in range(3)))
    return np.array(out)


@pytest.mark.parametrize("crystal", [MGO, MG, ARAGONITE], ids=["MgO", "Mg", "aragonite"])
def test_classical_matches_eigen_reference(crystal):
    rng = np.random.default_rng(1)
    make, values, _ = crystal
    s = make()
    C = s.full_voigt([values[n] for n in s.free])
    Q, q = _points(rng, 50)
    T, _ = model.classical(Q, q, C)
    np.testing.assert_allclose(T, _reference_T(Q, q, C), rtol=1e-10)


@pytest.mark.parametrize("quantum", [False, True])
def test_jacobian_matches_finite_differences(quantum):
    rng = np.random.default_rng(2)
    make, values, _ = ARAGONITE
    s = make()
    p = np.array([values[n] for n in s.free])
    Q, q = _points(rng, 100)
    q[:5] = [[0.1, 0, 0], [0, 0.1, 0], [0, 0, 0.1], [0.05, 0.05, 0], [0.1, 0.1, 0.1]]  # symmetric directions
    Q[:5] = Q[5] - q[5] + q[:5]
    m = model.NumpyModel(Q, q, s.basis, quantum_bose=quantum, temperature=20.0, density=2.93)
    _, J = m.evaluate(p)
    for k in range(len(p)):
        h = 1e-4 * p[k]
        up, down = p.copy(), p.copy()
        up[k] += h
        down[k] -= h
        fd = (m.evaluate(up, jacobian=False)[0] - m.evaluate(down, jacobian=False)[0]) / (2 * h)
        np.testing.assert_allclose(J[:, k], fd, rtol=1e-6, atol=1e-9 * np.abs(fd).max())


def test_quantum_jacobian_degenerate_cubic_branches():
    """Along [100] of a cubic crystal the two transverse branches coincide; the Jacobian stays exact."""
    s = MGO[0]()
    p = np.array([297.0, 95.2, 155.7])
    q = np.array([[0.05, 0, 0], [0, 0, 0.08], [0.04, 0.04, 0.04]])
    Q = np.array([2.0, 1.0, 0.5]) + q
    m = model.NumpyModel(Q, q, s.basis, quantum_bose=True, temperature=10.0, density=3.585)
    _, J = m.evaluate(p)
    for k in range(3):
        d = np.zeros(3)
        d[k] = 1e-3
        fd = (m.evaluate(p + d, False)[0] - m.evaluate(p - d, False)[0]) / 2e-3
        np.testing.assert_allclose(J[:, k], fd, rtol=1e-6)


def test_quantum_limits():
    rng = np.random.default_rng(3)
    s = MGO[0]()
    C = s.full_voigt([297.0, 95.2, 155.7])
    Q, q = _points(rng, 40)
    hot = model.quantum(Q, q, C, temperature=1e5, density=3.585)[0]
    np.testing.assert_allclose(hot, model.classical(Q, q, C)[0], rtol=1e-6)
    # 10 K: each branch weighted by x coth x, x = hbar omega / 2 kT, omega = sqrt(lambda / rho)
    def bose(lam):
        omega = np.sqrt(lam * 1e29 / 3585.0)
        x = 1.054571817e-34 * omega / (2 * 1.380649e-23 * 10.0)
        return x / np.tanh(x)
    cold = model.quantum(Q, q, C, temperature=10.0, density=3.585)[0]
    np.testing.assert_allclose(cold, _reference_T(Q, q, C, bose), rtol=1e-10)
    assert np.all(cold > hot * 1.01)  # zero-point motion adds intensity at low temperature


def test_scale_degeneracy_is_exact():
    rng = np.random.default_rng(4)
    C = MGO[0]().full_voigt([297.0, 95.2, 155.7])
    Q, q = _points(rng)
    np.testing.assert_allclose(model.classical(Q, q, 3 * C)[0], model.classical(Q, q, C)[0] / 3, rtol=1e-12)


def test_tds_intensity_for_the_simulator():
    data, structure, values = synthetic_harvest(MG, 300, np.random.default_rng(5))
    C = structure.full_voigt([values[n] for n in structure.free])
    G = data["G"][data["spot"]]
    I = model.tds_intensity(data["Q"], G, C)
    np.testing.assert_allclose(I, _reference_T(data["Q"], data["Q"] - G, C), rtol=1e-10)
    assert np.all(I > 0)


def test_unstable_constants_are_refused():
    C = MGO[0]().full_voigt([100.0, 150.0, 50.0])  # C12 > C11: not positive definite
    with pytest.raises(UsageError, match="Born"):
        model.tds_intensity(np.ones((2, 3)), np.zeros(3), C)
    with pytest.raises(UsageError, match="6x6"):
        model.check_stability(np.eye(3))


def test_point_on_bragg_peak_is_named():
    C = MGO[0]().full_voigt([297.0, 95.2, 155.7])
    Q = np.array([[1.0, 0.0, 0.0], [1.0, 0.1, 0.0]])
    with pytest.raises(DataError, match="point 0"):
        model.tds_intensity(Q, np.array([1.0, 0.0, 0.0]), C)
    with pytest.raises(DataError, match=r"\(N, 3\)"):
        model.classical(np.ones((3, 2)), np.ones((3, 2)), C)
