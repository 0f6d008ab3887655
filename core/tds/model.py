"""The long-wavelength TDS model T(Q; C) = Q^T Gamma(q)^-1 Q and its exact Jacobian.

Near a Bragg peak G, with q = Q - G, the one-phonon intensity is proportional to
``T = Q^T Gamma(q)^-1 Q`` where ``Gamma_ik = C_ijkl q_j q_l`` is the Christoffel
matrix (see ``../shared/TDS.md`` section 1).  Everything here is vectorised over
points: Gamma is one (N, 9) x (9, 9) product, the 3x3 solve is the closed-form
adjugate, and the Jacobian with respect to the free constants p (``C = sum_a
p_a basis[a]``) is ``dT/dp_a = -a^T basis[a] a`` with ``a`` the Voigt vector of
the symmetrised ``u (x) q``, ``u = Gamma^-1 Q``: it costs one more matrix product.

Units: C in GPa, Q and q in 1/Angstrom (with 2 pi), so T is in 1/GPa.  The
absolute prefactor |F|^2 exp(-2M) k_B T / V_c is left out: the fit absorbs it in
the per-spot scale.  The quantum option multiplies each branch by
``x coth x`` with ``x = hbar omega / (2 k_B T)``, which tends to 1 in the
classical limit, so classical and quantum T agree at high temperature.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numba
import numpy as np

from difframe import jit_cache
from difframe.errors import DataError, UsageError

jit_cache.install()

#: Voigt index of the symmetric pair (i, j)
VOIGT = np.array([[0, 5, 4], [5, 1, 3], [4, 3, 2]])
#: Voigt names C11..C66, upper triangle, row by row
VOIGT_NAMES = tuple(f"C{i + 1}{j + 1}" for i in range(6) for j in range(i, 6))
_UPPER = np.triu_indices(6)
#: numba fast-math flags without nnan/ninf (a NaN still comes out as a NaN)
_FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}
if "NUMBA_THREADING_LAYER" not in os.environ:  # the sleeping pool, as the ptychography kernels choose
    numba.config.THREADING_LAYER = "workqueue"

HBAR = 1.054571817e-34  # J s
K_B = 1.380649e-23  # J / K
#: lambda [GPa / Angstrom^2] -> [Pa / m^2]
_LAMBDA_SI = 1e9 * 1e20


def voigt_to_tensor(C_voigt: np.ndarray) -> np.ndarray:
    """The (3, 3, 3, 3) stiffness tensor of a (6, 6) Voigt matrix."""
    C_voigt = np.asarray(C_voigt, dtype=float)
    return C_voigt[VOIGT[:, :, None, None], VOIGT[None, None, :, :]]


def christoffel_matrix(C_voigt: np.ndarray) -> np.ndarray:
    """(9, 9) matrix M with Gamma(q).ravel() = M @ (q (x) q).ravel()."""
    C = voigt_to_tensor(C_voigt)  # C[i, j, k, l]; Gamma_ik = C_ijkl q_j q_l
    return C.transpose(0, 2, 1, 3).reshape(9, 9)


def check_stability(C_voigt: np.ndarray, what: str = "elastic constants") -> None:
    """Raise UsageError unless C is symmetric positive definite (Born criterion)."""
    C_voigt = np.asarray(C_voigt, dtype=float)
    if C_voigt.shape != (6, 6):
        raise UsageError(f"{what}: expected a 6x6 Voigt matrix, got shape {C_voigt.shape}")
    if not np.all(np.isfinite(C_voigt)):
        raise UsageError(f"{what}: the Voigt matrix contains NaN or infinity")
    eig = np.linalg.eigvalsh(0.5 * (C_voigt + C_voigt.T))
    if eig[0] <= 1e-9 * max(abs(eig[-1]), 1e-300):
        raise UsageError(
            f"{what} are not mechanically stable (Born criterion): the 6x6 Voigt matrix is not positive "
            f"definite (smallest eigenvalue {eig[0]:.4g} GPa); check the values and signs, e.g. C11 > |C12|, C44 > 0"
        )


def _cofactors(g00, g11, g22, g12, g02, g01):
    """Cofactors (00, 11, 22, 01, 02, 12) and determinant of a symmetric 3x3 matrix (scalars or arrays)."""
    c00 = g11 * g22 - g12 * g12
    c11 = g00 * g22 - g02 * g02
    c22 = g00 * g11 - g01 * g01
    c01 = g02 * g12 - g01 * g22
    c02 = g01 * g12 - g02 * g11
    c12 = g01 * g02 - g00 * g12
    return c00, c11, c22, c01, c02, c12, g00 * c00 + g01 * c01 + g02 * c02


_cofactors_jit = numba.njit(inline="always")(_cofactors)


def _solve_sym3(g: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Solve Gamma u = b for stacks of symmetric 3x3 matrices given flat (N, 9); returns (u, det)."""
    g00, g01, g02, g11, g12, g22 = g[:, 0], g[:, 1], g[:, 2], g[:, 4], g[:, 5], g[:, 8]
    c00, c11, c22, c01, c02, c12, det = _cofactors(g00, g11, g22, g12, g02, g01)
    b0, b1, b2 = b[:, 0], b[:, 1], b[:, 2]
    u = np.stack([c00 * b0 + c01 * b1 + c02 * b2, c01 * b0 + c11 * b1 + c12 * b2, c02 * b0 + c12 * b1 + c22 * b2], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        u /= det[:, None]
    return u, det


def voigt_pairs(u: np.ndarray, q: np.ndarray) -> np.ndarray:
    """(N, 6) Voigt vector a of sym(u (x) q), so that u^T Gamma(q) u = a^T C_voigt a."""
    return np.stack(
        [
            u[:, 0] * q[:, 0],
            u[:, 1] * q[:, 1],
            u[:, 2] * q[:, 2],
            u[:, 1] * q[:, 2] + u[:, 2] * q[:, 1],
            u[:, 0] * q[:, 2] + u[:, 2] * q[:, 0],
            u[:, 0] * q[:, 1] + u[:, 1] * q[:, 0],
        ],
        axis=1,
    )


def quadratic_form_matrix(basis: np.ndarray) -> np.ndarray:
    """(21, n) matrix B with a^T basis[k] a = (a_i a_j, i <= j) @ B[:, k] (off-diagonals doubled)."""
    basis = np.asarray(basis, dtype=float)
    sym = basis + basis.transpose(0, 2, 1)
    sym[:, np.arange(6), np.arange(6)] *= 0.5
    return sym[:, _UPPER[0], _UPPER[1]].T.copy()


def _check_points(Q: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    Q = np.asarray(Q, dtype=float)
    q = np.asarray(q, dtype=float)
    if Q.ndim != 2 or Q.shape[1] != 3 or q.shape != Q.shape:
        raise DataError(f"TDS model: Q and q must both have shape (N, 3); got {Q.shape} and {q.shape}")
    return Q, q


def classical(Q: np.ndarray, q: np.ndarray, C_voigt: np.ndarray, basis: np.ndarray | None = None):
    """T = Q^T Gamma(q)^-1 Q per point, and (with ``basis``) dT/dp as (N, n_free).

    Points with q = 0 (exactly on the Bragg peak) have no finite T: DataError.
    """
    Q, q = _check_points(Q, q)
    qq = (q[:, :, None] * q[:, None, :]).reshape(-1, 9)
    gamma = qq @ christoffel_matrix(C_voigt).T
    u, det = _solve_sym3(gamma, Q)
    if not np.all(det != 0):
        bad = int(np.flatnonzero(det == 0)[0])
        raise DataError(f"TDS model: point {bad} has a singular Christoffel matrix (q = {q[bad].tolist()}); "
                        "points exactly on a Bragg peak must be excluded (DeltaQ_min > 0)")
    T = np.einsum("ni,ni->n", Q, u)
    if basis is None:
        return T, None
    a = voigt_pairs(u, q)
    aa = a[:, _UPPER[0]] * a[:, _UPPER[1]]
    return T, -(aa @ quadratic_form_matrix(basis))


def bose_ratio(lam: np.ndarray, temperature: float, density: float) -> tuple[np.ndarray, np.ndarray]:
    """x coth x and its derivative d/dlambda, x = hbar omega / 2 k_B T, omega = sqrt(lambda / rho).

    ``lam`` in GPa/Angstrom^2 (an eigenvalue of Gamma), ``density`` in g/cm^3.
    """
    kappa = HBAR * np.sqrt(_LAMBDA_SI / (density * 1e3)) / (2 * K_B * temperature)
    x = kappa * np.sqrt(lam)
    with np.errstate(divide="ignore", invalid="ignore"):
        small = x < 1e-4
        xs = np.where(small, 1.0, x)
        f = np.where(small, 1 + x * x / 3, xs / np.tanh(xs))
        df_dx = np.where(small, 2 * x / 3, 1 / np.tanh(xs) - xs / np.sinh(xs) ** 2)
        df_dlam = df_dx * x / (2 * lam)
    return f, df_dlam


def quantum(Q, q, C_voigt, basis=None, *, temperature: float, density: float):
    """T with the Bose factor of each acoustic branch, and (with ``basis``) dT/dp.

    T = sum_j (Q.e_j)^2 h(lambda_j), h = x coth x / lambda.  The Jacobian is the
    derivative of the matrix function h(Gamma) (Daleckii-Krein divided
    differences), exact also for degenerate branches.
    """
    if not temperature > 0 or not (density and density > 0):
        raise UsageError(f"quantum TDS model needs Temperature > 0 K and density > 0 g/cm^3 "
                         f"(got Temperature={temperature}, density={density})")
    Q, q = _check_points(Q, q)
    qq = (q[:, :, None] * q[:, None, :]).reshape(-1, 9)
    gamma = (qq @ christoffel_matrix(C_voigt).T).reshape(-1, 3, 3)
    lam, e = np.linalg.eigh(gamma)  # e[n, :, j] is branch j
    if not np.all(lam > 0):
        bad = int(np.flatnonzero(~np.all(lam > 0, axis=1))[0])
        raise DataError(f"TDS model: point {bad} has a non-positive phonon eigenvalue (q = {q[bad].tolist()}); "
                        "the elastic constants are unstable or the point sits on a Bragg peak")
    f, df = bose_ratio(lam, temperature, density)
    h = f / lam
    c = np.einsum("ni,nij->nj", Q, e)
    T = np.einsum("nj,nj->n", c * c, h)
    if basis is None:
        return T, None
    dh = df / lam - f / lam**2
    dl = lam[:, :, None] - lam[:, None, :]
    close = np.abs(dl) <= 1e-7 * lam[:, -1:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        h1 = np.where(close, 0.5 * (dh[:, :, None] + dh[:, None, :]), (h[:, :, None] - h[:, None, :]) / dl)
    weight = c[:, :, None] * c[:, None, :] * h1  # (N, 3, 3) over branch pairs
    v = np.stack([voigt_pairs(e[:, :, j], q) for j in range(3)], axis=1)  # (N, 3 branches, 6)
    basis = np.asarray(basis, dtype=float)
    vb = np.einsum("nji,aik->najk", v, basis)
    return T, np.einsum("najk,nlk,njl->na", vb, v, weight)


def tds_intensity(Q, G, C_voigt, *, temperature: float = 300.0, density: float | None = None,
                  quantum_bose: bool = False) -> np.ndarray:
    """TDS intensity (up to the per-spot prefactor) at points Q near Bragg vectors G.

    ``Q`` (N, 3) and ``G`` (N, 3) or (3,) in 1/Angstrom, ``C_voigt`` (6, 6) in
    GPa.  This is what the simulator multiplies by its own scale.
    """
    check_stability(C_voigt)
    Q = np.asarray(Q, dtype=float)
    q = Q - np.broadcast_to(np.asarray(G, dtype=float), Q.shape)
    if quantum_bose:
        return quantum(Q, q, C_voigt, temperature=temperature, density=density)[0]
    return classical(Q, q, C_voigt)[0]


# -- the fit's CPU path: one fused, threaded pass (numba) -------------------------------------


_VOIGT_PAIRS = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


def christoffel_pairs(C_voigt: np.ndarray) -> np.ndarray:
    """(6, 6) K with Gamma's entries (00, 11, 22, 12, 02, 01) = K @ (q_j q_l for the Voigt pairs jl)."""
    M = christoffel_matrix(C_voigt)
    K = np.empty((6, 6))
    for g, (i, k) in enumerate(_VOIGT_PAIRS):
        for p, (j, l) in enumerate(_VOIGT_PAIRS):
            K[g, p] = M[3 * i + k, 3 * j + l] + (M[3 * i + k, 3 * l + j] if j != l else 0.0)
    return K


#: points per task of the fused pass (each task keeps its 21 accumulators on its own)
_CHUNK = 512


@numba.njit(parallel=True, cache=True, nogil=True, fastmath=_FAST)
def _fused_classical(Q, q, weights, starts, K, quadratic, jacobian, T, J, singular):
    """For each point n: T[n] = sum over its nodes m (starts[n] <= m < starts[n+1]) of weights[m] T(Q[m], q[m])
    and, with ``jacobian``, J[n] = -AA @ quadratic, AA the same sum of a_i a_j (i <= j), a the Voigt vector of
    sym(u (x) q), u = Gamma^-1 Q; singular[n] = a node with det Gamma = 0."""
    n_points = starts.shape[0] - 1
    n_free = quadratic.shape[1]
    for chunk in numba.prange((n_points + _CHUNK - 1) // _CHUNK):
        aa = np.empty(21)
        for n in range(chunk * _CHUNK, min(n_points, (chunk + 1) * _CHUNK)):
            t = 0.0
            aa[:] = 0.0
            for m in range(starts[n], starts[n + 1]):
                q0, q1, q2 = q[m, 0], q[m, 1], q[m, 2]
                p0, p1, p2, p3, p4, p5 = q0 * q0, q1 * q1, q2 * q2, q1 * q2, q0 * q2, q0 * q1
                g00 = K[0, 0] * p0 + K[0, 1] * p1 + K[0, 2] * p2 + K[0, 3] * p3 + K[0, 4] * p4 + K[0, 5] * p5
                g11 = K[1, 0] * p0 + K[1, 1] * p1 + K[1, 2] * p2 + K[1, 3] * p3 + K[1, 4] * p4 + K[1, 5] * p5
                g22 = K[2, 0] * p0 + K[2, 1] * p1 + K[2, 2] * p2 + K[2, 3] * p3 + K[2, 4] * p4 + K[2, 5] * p5
                g12 = K[3, 0] * p0 + K[3, 1] * p1 + K[3, 2] * p2 + K[3, 3] * p3 + K[3, 4] * p4 + K[3, 5] * p5
                g02 = K[4, 0] * p0 + K[4, 1] * p1 + K[4, 2] * p2 + K[4, 3] * p3 + K[4, 4] * p4 + K[4, 5] * p5
                g01 = K[5, 0] * p0 + K[5, 1] * p1 + K[5, 2] * p2 + K[5, 3] * p3 + K[5, 4] * p4 + K[5, 5] * p5
                c00, c11, c22, c01, c02, c12, det = _cofactors_jit(g00, g11, g22, g12, g02, g01)
                if det == 0.0:
                    singular[n] = True
                    continue
                b0, b1, b2 = Q[m, 0], Q[m, 1], Q[m, 2]
                u0 = (c00 * b0 + c01 * b1 + c02 * b2) / det
                u1 = (c01 * b0 + c11 * b1 + c12 * b2) / det
                u2 = (c02 * b0 + c12 * b1 + c22 * b2) / det
                w = weights[m]
                t += w * (b0 * u0 + b1 * u1 + b2 * u2)
                if jacobian:
                    a = (u0 * q0, u1 * q1, u2 * q2, u1 * q2 + u2 * q1, u0 * q2 + u2 * q0, u0 * q1 + u1 * q0)
                    c = 0
                    for i in range(6):
                        wa = w * a[i]
                        for j in range(i, 6):
                            aa[c] += wa * a[j]
                            c += 1
            T[n] = t
            if jacobian:
                for k in range(n_free):
                    total = 0.0
                    for c in range(21):
                        total += aa[c] * quadratic[c, k]
                    J[n, k] = -total


def fused_classical(Q, q, C_voigt, quadratic=None, weights=None, starts=None):
    """The classical model in one threaded pass: T (N,) and, with ``quadratic`` (21, n_free) from
    :func:`quadratic_form_matrix`, dT/dp (N, n_free); optionally averaged over nodes (``weights`` (M,),
    ``starts`` (N + 1,): point n owns nodes starts[n] .. starts[n+1] - 1).  Same numbers as :func:`classical`
    (to rounding), without its (N, 9) and (N, 21) temporaries."""
    if starts is None:
        starts = np.arange(len(Q) + 1, dtype=np.int64)
        weights = np.ones(len(Q))
    n = len(starts) - 1
    jacobian = quadratic is not None
    quadratic = np.ascontiguousarray(quadratic if jacobian else np.zeros((21, 0)), dtype=float)
    T = np.empty(n)
    J = np.empty((n if jacobian else 0, quadratic.shape[1]))
    singular = np.zeros(n, dtype=np.bool_)
    _fused_classical(Q, q, weights, starts, christoffel_pairs(C_voigt), quadratic, jacobian, T, J, singular)
    if singular.any():
        bad = int(np.flatnonzero(singular)[0])
        raise DataError(f"TDS model: point {bad} has a singular Christoffel matrix (q near {q[starts[bad]].tolist()}); "
                        "points exactly on a Bragg peak must be excluded (DeltaQ_min > 0)")
    return T, (J if jacobian else None)


class NumpyModel:
    """T and dT/dp for fixed points and a fixed elastic structure (the fit's inner loop).

    The classical model runs as one fused, threaded numba pass (:func:`fused_classical`); the quantum one in numpy.
    """

    backend = "numpy"

    def __init__(self, Q, q, basis, *, quantum_bose=False, temperature=300.0, density=None):
        self.Q, self.q = _check_points(Q, q)
        self.Q, self.q = np.ascontiguousarray(self.Q), np.ascontiguousarray(self.q)
        self.basis = np.asarray(basis, dtype=float)
        self.quadratic = quadratic_form_matrix(self.basis)
        self.quantum = bool(quantum_bose)
        self.temperature = temperature
        self.density = density

    def voigt(self, p: np.ndarray) -> np.ndarray:
        return np.tensordot(np.asarray(p, dtype=float), self.basis, axes=1)

    def evaluate(self, p: np.ndarray, jacobian: bool = True):
        """(T (N,), J (N, n_free) or None) at free constants ``p``."""
        C = self.voigt(p)
        if self.quantum:
            return quantum(self.Q, self.q, C, self.basis if jacobian else None, temperature=self.temperature,
                           density=self.density)
        return fused_classical(self.Q, self.q, C, self.quadratic if jacobian else None)


# -- exposure integration -------------------------------------------------------------------

#: quadrature error allowed per point when the sub-steps are chosen per point (relative to T)
EXPOSURE_TOL = 1e-4
#: most sub-steps a point gets when they are chosen per point (a path through the Bragg peak needs more)
MAX_SUBSTEPS = 12


def rotate_about(vectors: np.ndarray, axis: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rodrigues: ``vectors`` (N, 3) turned by ``angle`` [rad] (N,) or scalar about unit ``axis`` (3,)."""
    angle = np.asarray(angle, dtype=float)
    c, s = np.cos(angle)[..., None], np.sin(angle)[..., None]
    return vectors * c + np.cross(axis, vectors) * s + np.outer(vectors @ axis, axis) * (1 - c)


def exposure_substeps(Q: np.ndarray, q: np.ndarray, axis: np.ndarray, width: float,
                      tol: float | None = None, most: int = MAX_SUBSTEPS) -> np.ndarray:
    """Gauss-Legendre sub-steps each point needs so that its exposure average is good to ``tol``.

    Why per point: during the exposure Q moves by about |axis x Q| * width, and
    T ~ 1/|q|^2 is as smooth as its complex poles are far from the path:
    linearising q(t) = q + t (axis x Q), the poles sit at t0 +- i beta/|v| (t0
    the closest approach, beta the distance there).  Gauss-Legendre with K
    nodes then errs by about rho^(-2K), rho the Bernstein ellipse through the
    pole; points far from the peak or slow need one node, the few near it more.
    """
    Q, q = _check_points(Q, q)
    tol = EXPOSURE_TOL if tol is None else tol
    half = 0.5 * np.radians(abs(float(width)))
    v = np.cross(axis, Q)
    vv = np.einsum("ni,ni->n", v, v)
    with np.errstate(divide="ignore", invalid="ignore"):
        t0 = np.where(vv > 0, -np.einsum("ni,ni->n", q, v) / vv, 0.0)
        beta = np.linalg.norm(q + t0[:, None] * v, axis=1)
        z = (t0 + 1j * beta / np.sqrt(vv)) / half
    root = np.sqrt(z * z - 1)
    rho = np.maximum(np.abs(z + root), np.abs(z - root))
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.ceil(np.log(4.0 / tol) / (2 * np.log(rho)))
    return np.where(np.isfinite(k), k, 1).clip(1, most).astype(np.int64)


@dataclass(frozen=True)
class Exposure:
    """A frame's angular exposure, as the model averages over it.

    ``axis``: unit scan axis in the crystal frame, so that Q_c at phi_n + delta is
    Rot(axis, delta) Q_c(phi_n) (:meth:`difframe.crystal.geometry.Geometry.scan_axis_crystal`);
    ``width``: the exposure [deg] (angular_step); ``substeps``: Gauss-Legendre nodes per point (N,).
    """

    axis: np.ndarray
    width: float
    substeps: np.ndarray

    def nodes(self, Q: np.ndarray, q: np.ndarray):
        """Points at every sub-step: Q (M, 3), q (M, 3), weights (M,) summing to 1 per point, and the
        first node of each point (N,) (nodes of one point are consecutive)."""
        Q, q = _check_points(Q, q)
        k = np.broadcast_to(np.asarray(self.substeps, dtype=np.int64), (len(Q),))
        if len(k) and k.min() < 1:
            raise UsageError(f"exposure sub-steps must be at least 1, got {int(k.min())}")
        starts = np.concatenate([[0], np.cumsum(k)[:-1]]).astype(np.int64)
        total = int(k.sum())
        Qe, qe, we = np.empty((total, 3)), np.empty((total, 3)), np.empty(total)
        half = 0.5 * np.radians(float(self.width))
        for count in np.unique(k):
            idx = np.flatnonzero(k == count)
            x, w = np.polynomial.legendre.leggauss(int(count))
            for j in range(int(count)):
                turned = rotate_about(Q[idx], self.axis, half * x[j])
                Qe[starts[idx] + j] = turned
                qe[starts[idx] + j] = q[idx] + (turned - Q[idx])
                we[starts[idx] + j] = 0.5 * w[j]
        return Qe, qe, we, starts


class ExposureModel:
    """The numpy model averaged over each point's exposure (Gauss-Legendre sub-steps along the scan)."""

    backend = "numpy"

    def __init__(self, Q, q, basis, exposure: Exposure, **options):
        Qe, qe, self.weights, self.starts = exposure.nodes(Q, q)
        self.inner = NumpyModel(Qe, qe, basis, **options)
        self.basis = self.inner.basis
        self.exposure = exposure
        self.bounds = np.append(self.starts, len(self.weights)).astype(np.int64)

    def voigt(self, p: np.ndarray) -> np.ndarray:
        return self.inner.voigt(p)

    def evaluate(self, p: np.ndarray, jacobian: bool = True):
        """Exposure-averaged (T (N,), J (N, n_free) or None): the classical model averages T and the Voigt
        products a_i a_j over each point's nodes in one fused pass and forms J once per point."""
        inner = self.inner
        if not inner.quantum:
            return fused_classical(inner.Q, inner.q, inner.voigt(p), inner.quadratic if jacobian else None,
                                   self.weights, self.bounds)
        T, J = inner.evaluate(p, jacobian)
        T = np.add.reduceat(self.weights * T, self.starts)
        if J is not None:
            J = np.add.reduceat(self.weights[:, None] * J, self.starts, axis=0)
        return T, J
