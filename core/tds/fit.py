"""Fit of the elastic constants to harvested TDS points, by variable projection.

The model of point k of spot s is ``y_k = A_s T(Q_k; C) + B_s``.  For given
constants the per-spot scale A_s and baseline B_s are a closed-form weighted
linear least squares (five sums per spot), so the minimiser only sees the
elastic constants; its Jacobian is the model Jacobian with the per-spot linear
part projected out (Kaufman), which at the optimum also gives the parameter
covariance with A_s and B_s marginalised.

Scale (TDS.md section 2): with a free A_s per spot, C -> alpha C is compensated
exactly by A_s -> alpha A_s, so only ratios are measured.  A constant whose
CGUESS interval is closed (min == max) is fixed; otherwise ``fix`` decides:
"auto" fixes the first free constant at its CGUESS value, a name fixes that
one, "bulk" fits with the first fixed and rescales so the Voigt bulk modulus
equals ``bulk_modulus``, and "none" leaves everything free, which is refused
with an explanation when the Jacobian is singular (it is, in the classical
model).

Geometry (tds2el's A_variables): corrections to r1, r2, r3, AA, BB, CC, omega,
alpha, beta, kappa, d1, d2, det_origin_X, det_origin_Y, each [value, min, max].
When any is non-zero or open, Q is recomputed from each point's (frame, pixel)
through the corrected geometry and G from its hkl through the corrected cell;
the open ones join the fitted vector within their bounds.  Their Jacobian
columns are central finite differences of T (steps :data:`GEOMETRY_STEPS`):
the corrections move Q and G through goniometer, detector and cell, and two
extra model evaluations per open correction are cheap next to deriving that
chain by hand.  A re-centred harvest (centering_file) shifted its Q to measured
centres, so it cannot be recomputed: open corrections are refused there.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import numpy as np

from difframe.crystal.geometry import A_VARIABLE_NAMES
from difframe.errors import DataError, UsageError
from difframe.tds.model import VOIGT_NAMES, Exposure, ExposureModel, NumpyModel, check_stability, exposure_substeps
from difframe.tds.model_cl import make_model

log = logging.getLogger("difframe.tds.fit")

WEIGHTINGS = ("poisson", "uniform")
EXPOSURE_MODES = ("auto", "on", "off")
#: points of the harvest that exposure = "auto" examines at most
AUTO_SAMPLE = 20000
#: a relative singular value below this means the fit cannot determine the constants
SINGULAR = 1e-7
MIN_POINTS_PER_SPOT = 3
#: finite-difference step of each A_variables correction (deg for angles, Angstrom for cell edges, px)
GEOMETRY_STEPS = {"r1": 1e-3, "r2": 1e-3, "r3": 1e-3, "AA": 1e-4, "BB": 1e-4, "CC": 1e-4, "omega": 1e-3,
                  "alpha": 1e-3, "beta": 1e-3, "kappa": 1e-3, "d1": 1e-3, "d2": 1e-3, "det_origin_X": 1e-2,
                  "det_origin_Y": 1e-2}


@dataclass(frozen=True, kw_only=True)
class FitSettings:
    """How to fit; the defaults are tds2el's (ftol 1e-5, nred 1, 300 K)."""

    fix: str = "auto"
    bulk_modulus: float | None = None
    ftol: float = 1e-5
    max_iterations: int = 200
    nred: int = 1
    weighting: str = "poisson"
    backend: str = "auto"
    quantum_bose: bool = False
    temperature: float = 300.0
    density: float | None = None
    a_variables: object = None  # 14 [value, min, max] (A_VARIABLE_NAMES order) or {name: [value, min, max]}
    exposure: str = "auto"  # average the model over each frame's exposure: "auto", "on" or "off"
    substeps: int | None = None  # sub-steps per point (None: chosen per point)
    exposure_width: float | None = None  # [deg]; None: |angular_step|
    clear_peak: bool = True  # leave out points whose Q passes within DeltaQ_min of G during the exposure


def constant_name(key: str) -> str:
    """'A11', 'a11' or 'C11' -> 'C11' (tds2el writes the free constants as A11, A12, ...)."""
    m = re.fullmatch(r"\s*[AaCc]([1-6])([1-6])\s*", str(key))
    if not m:
        raise UsageError(f"CGUESS key {key!r} is not an elastic constant name like 'A11' or 'C12'")
    i, j = sorted((m.group(1), m.group(2)))
    return f"C{i}{j}"


@dataclass
class Constants:
    """The free constants of the structure with their CGUESS start values and bounds."""

    names: list[str]
    values: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    fitted: np.ndarray  # bool mask

    @classmethod
    def from_cguess(cls, cguess, free_names) -> "Constants":
        names = [constant_name(n) for n in free_names]
        given: dict[str, tuple[float, float, float]] = {}
        for key, entry in dict(cguess or {}).items():
            name = constant_name(key)
            if name not in names:
                raise UsageError(f"CGUESS names {key!r}, which the crystal symmetry does not leave free "
                                 f"(free constants: {', '.join(names)})")
            try:
                value, low, high = (float(v) for v in entry)
            except (TypeError, ValueError):
                raise UsageError(f"CGUESS[{key!r}] must be [value, min, max] in GPa, got {entry!r}") from None
            if not (np.isfinite([value, low, high]).all() and low <= value <= high):
                raise UsageError(f"CGUESS[{key!r}] = {entry!r}: need finite min <= value <= max")
            given[name] = (value, low, high)
        missing = [n for n in names if n not in given]
        if missing:
            raise UsageError(f"CGUESS gives no [value, min, max] for {', '.join(missing)} "
                             f"(the symmetry leaves free: {', '.join(names)})")
        table = np.array([given[n] for n in names])
        return cls(names, table[:, 0], table[:, 1], table[:, 2], table[:, 1] < table[:, 2])


def choose_fixed(constants: Constants, fix: str) -> None:
    """Apply the scale convention to ``constants.fitted`` (see the module docstring)."""
    if not constants.fitted.all() or fix == "none":
        return
    if fix in ("auto", "bulk"):
        k = 0
    else:
        name = constant_name(fix)
        if name not in constants.names:
            raise UsageError(f"fix = {fix!r}: not a free constant of this symmetry ({', '.join(constants.names)})")
        k = constants.names.index(name)
    constants.fitted[k] = False
    log.info("scale: %s fixed at its CGUESS value %.6g GPa (TDS determines only ratios)",
             constants.names[k], constants.values[k])


@dataclass
class Points:
    """Harvested points sorted by spot, reduced by ``nred``, with their weights."""

    Q: np.ndarray
    q: np.ndarray
    y: np.ndarray
    sqrt_w: np.ndarray
    spot: np.ndarray  # compact index 0..S-1 into ``spots``
    spots: np.ndarray  # original spot index of each compact spot
    starts: np.ndarray  # first point of each compact spot
    frame: np.ndarray | None = None  # per point, when the harvest gives it (geometry refinement)
    pixel: np.ndarray | None = None  # (N, 2) row, col

    @classmethod
    def from_harvest(cls, Q, intensity, spot, G, *, nred: int = 1, weighting: str = "poisson",
                     frame=None, pixel=None) -> "Points":
        Q = np.asarray(Q, dtype=float)
        y = np.asarray(intensity, dtype=float)
        spot = np.asarray(spot)
        G = np.asarray(G, dtype=float)
        n = len(Q)
        if Q.ndim != 2 or Q.shape[1] != 3:
            raise DataError(f"harvest points/Q must have shape (N, 3), got {Q.shape}")
        if y.shape != (n,) or spot.shape != (n,):
            raise DataError(f"harvest points/intensity {y.shape} and points/spot {spot.shape} must both be ({n},) "
                            "like points/Q")
        if G.ndim != 2 or G.shape[1] != 3:
            raise DataError(f"harvest spots/G must have shape (S, 3), got {G.shape}")
        if not np.issubdtype(spot.dtype, np.integer) or (n and (spot.min() < 0 or spot.max() >= len(G))):
            raise DataError(f"harvest points/spot must be integers in 0..{len(G) - 1} (indices into spots/G)")
        for label, arr in (("points/Q", Q), ("points/intensity", y), ("spots/G", G)):
            if not np.all(np.isfinite(arr)):
                raise DataError(f"harvest {label} contains NaN or infinity")
        if weighting not in WEIGHTINGS:
            raise UsageError(f"weighting {weighting!r} is not one of {', '.join(WEIGHTINGS)}")
        if int(nred) < 1:
            raise UsageError(f"nred must be an integer >= 1, got {nred!r}")
        keep = np.arange(0, n, int(nred))
        order = keep[np.argsort(spot[keep], kind="stable")]
        Q, y, spot = Q[order], y[order], spot[order]
        if frame is not None and pixel is not None:
            frame, pixel = np.asarray(frame)[order], np.asarray(pixel)[order]
        counts = np.bincount(spot, minlength=len(G))
        thin = (counts > 0) & (counts < MIN_POINTS_PER_SPOT)
        if thin.any():
            log.warning("%d spot(s) with fewer than %d points are left out of the fit: %s", thin.sum(),
                        MIN_POINTS_PER_SPOT, np.flatnonzero(thin).tolist())
            ok = ~thin[spot]
            Q, y, spot = Q[ok], y[ok], spot[ok]
            if frame is not None and pixel is not None:
                frame, pixel = frame[ok], pixel[ok]
            counts[thin] = 0
        if len(y) == 0:
            raise DataError("the harvest has no points to fit (after nred and dropping spots with too few points)")
        spots = np.flatnonzero(counts)
        compact = np.searchsorted(spots, spot)
        starts = np.concatenate([[0], np.cumsum(counts[spots])[:-1]])
        q = Q - G[spot]
        if weighting == "poisson":
            floor = max(1e-2 * float(np.median(np.abs(y))), np.finfo(float).tiny)
            sqrt_w = 1.0 / np.sqrt(np.maximum(y, floor))
        else:
            sqrt_w = np.ones_like(y)
        return cls(Q, q, y, sqrt_w, compact, spots, starts, frame, pixel)

    def spot_sums(self, x: np.ndarray) -> np.ndarray:
        """Sum of ``x`` (N,) or (N, k) over the points of each spot."""
        return np.add.reduceat(x, self.starts, axis=0)


def scale_and_baseline(Sw, SwT, SwTT, Swy, SwTy):
    """Per-spot A, B minimising sum w (A T + B - y)^2, from the spot sums of w, wT, wT^2, wy, wTy; and det."""
    det = Sw * SwTT - SwT**2
    det = np.where(np.abs(det) > 1e-300, det, 1e-300)
    return (Sw * SwTy - SwT * Swy) / det, (SwTT * Swy - SwT * SwTy) / det, det


class ProjectedProblem:
    """Weighted residuals against A_s T + B_s, with (A_s, B_s) solved in closed form, as a function of x.

    ``x`` holds the fitted constants; the fixed ones keep their values.  Offers
    what a minimiser needs: ``x0``, ``bounds``, ``residuals(x)``, ``jacobian(x)``.
    """

    def __init__(self, points: Points, constants: Constants, model):
        self.points = points
        self.constants = constants
        self.model = model
        self.x0 = constants.values[constants.fitted].copy()
        self.bounds = (constants.lower[constants.fitted].copy(), constants.upper[constants.fitted].copy())
        self.history: list[float] = []
        self._cache_x: np.ndarray | None = None
        self._cache: tuple | None = None

    @property
    def names(self) -> list[str]:
        """What each entry of x is."""
        return [n for n, f in zip(self.constants.names, self.constants.fitted) if f]

    def full(self, x: np.ndarray) -> np.ndarray:
        """All free constants at ``x`` (the fixed ones at their values)."""
        p = self.constants.values.copy()
        p[self.constants.fitted] = x[:int(self.constants.fitted.sum())]
        return p

    def _model(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """T and its exact derivatives by the fitted constants at ``x``."""
        T, J = self.model.evaluate(self.full(x), jacobian=True)
        return T, J[:, self.constants.fitted]

    def _model_jacobian(self, x: np.ndarray, T: np.ndarray, J: np.ndarray) -> np.ndarray:
        """dT/dx from the constants' columns (the geometry refinement appends its own)."""
        return J

    def _evaluate(self, x: np.ndarray):
        x = np.asarray(x, dtype=float)
        if self._cache_x is not None and np.array_equal(x, self._cache_x):
            return self._cache
        T, J = self._model(x)
        pts = self.points
        wT = pts.sqrt_w * T
        sums = pts.spot_sums(np.stack([pts.sqrt_w**2, pts.sqrt_w * wT, wT * wT, pts.sqrt_w**2 * pts.y,
                                       pts.sqrt_w * wT * pts.y], axis=1))
        A, B, det = scale_and_baseline(*sums.T)
        Sw, SwT, SwTT = sums.T[:3]
        r = pts.sqrt_w * (A[pts.spot] * T + B[pts.spot] - pts.y)
        self._cache_x = x.copy()
        self._cache = (r, T, J, A, B, (Sw, SwT, SwTT, det))
        return self._cache

    def residuals(self, x: np.ndarray) -> np.ndarray:
        return self._evaluate(x)[0]

    def fitted(self, x: np.ndarray):
        """(weighted residuals, T, A_s, B_s) at ``x``: what the diagnostics compare."""
        r, T, _, A, B, _ = self._evaluate(x)
        return r, T, A, B

    def linear(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-spot scale A_s and baseline B_s (compact spot order) at ``x``."""
        return self._evaluate(x)[3:5]

    def jacobian(self, x: np.ndarray) -> np.ndarray:
        """d residuals / dx with the per-spot span of (T, 1) projected out (Kaufman's variable projection)."""
        r, T, J, A, _, (Sw, SwT, SwTT, det) = self._evaluate(x)
        J = self._model_jacobian(np.asarray(x, dtype=float), T, J)
        self.history.append(float(0.5 * r @ r))
        pts = self.points
        V = (pts.sqrt_w * A[pts.spot])[:, None] * J  # sqrt(w) A_s dT/dx
        sTV = pts.spot_sums((pts.sqrt_w * T)[:, None] * V)
        sV = pts.spot_sums(pts.sqrt_w[:, None] * V)
        c1 = (Sw[:, None] * sTV - SwT[:, None] * sV) / det[:, None]
        c2 = (SwTT[:, None] * sV - SwT[:, None] * sTV) / det[:, None]
        return V - pts.sqrt_w[:, None] * (c1[pts.spot] * T[:, None] + c2[pts.spot])


@dataclass
class GeometryCorrections:
    """tds2el's A_variables: a [value, min, max] correction per :data:`A_VARIABLE_NAMES` entry."""

    values: np.ndarray  # (14,)
    lower: np.ndarray
    upper: np.ndarray

    @classmethod
    def from_setting(cls, setting) -> "GeometryCorrections | None":
        """A list of 14 triples (conf_file order) or {name: triple} (others closed at 0); None stays None."""
        if setting is None:
            return None
        if hasattr(setting, "items"):
            unknown = [k for k in setting if k not in A_VARIABLE_NAMES]
            if unknown:
                raise UsageError(f"A_variables names {', '.join(map(repr, unknown))}; the corrections are "
                                 f"{', '.join(A_VARIABLE_NAMES)}")
            entries = [setting.get(n, (0.0, 0.0, 0.0)) for n in A_VARIABLE_NAMES]
        elif isinstance(setting, (list, tuple)) and len(setting) == len(A_VARIABLE_NAMES):
            entries = list(setting)
        else:
            raise UsageError(f"A_variables must be {len(A_VARIABLE_NAMES)} [value, min, max] entries "
                             f"({', '.join(A_VARIABLE_NAMES)}) or a mapping of those names, got {setting!r}")
        table = np.zeros((len(entries), 3))
        for i, (name, entry) in enumerate(zip(A_VARIABLE_NAMES, entries)):
            try:
                table[i] = [float(v) for v in entry]
            except (TypeError, ValueError):
                raise UsageError(f"A_variables entry for {name} must be [value, min, max], got {entry!r}") from None
            value, low, high = table[i]
            if not (np.isfinite(table[i]).all() and low <= value <= high):
                raise UsageError(f"A_variables entry for {name} = {entry!r}: need finite min <= value <= max")
        return cls(table[:, 0], table[:, 1], table[:, 2])

    @property
    def open(self) -> np.ndarray:
        return self.lower < self.upper

    @property
    def names(self) -> list[str]:
        """The refined (open) corrections."""
        return [n for n, o in zip(A_VARIABLE_NAMES, self.open) if o]

    @property
    def active(self) -> bool:
        """Whether the geometry differs from the harvest's or is refined."""
        return bool(self.open.any() or np.any(self.values != 0))


class GeometryProblem(ProjectedProblem):
    """The projected problem with the open A_variables corrections appended to x.

    Q is recomputed from each point's (frame, pixel) through the corrected
    geometry and G from its spot's hkl through the corrected cell; ``make(Q, q)``
    builds the model on them.  The corrections' Jacobian columns are central
    finite differences of T (see the module docstring).
    """

    def __init__(self, points: Points, constants: Constants, geometry, corrections: GeometryCorrections,
                 hkl: np.ndarray, make):
        self.geometry, self.corrections, self.make = geometry, corrections, make
        self.hkl = np.asarray(hkl, dtype=float)  # per compact spot
        self.n_constants = int(constants.fitted.sum())
        self._model_key: bytes | None = None
        self.points = points
        super().__init__(points, constants, self._model_at(corrections.values))
        is_open = corrections.open
        self.x0 = np.concatenate([self.x0, corrections.values[is_open]])
        self.bounds = (np.concatenate([self.bounds[0], corrections.lower[is_open]]),
                       np.concatenate([self.bounds[1], corrections.upper[is_open]]))

    @property
    def names(self) -> list[str]:
        return super().names + self.corrections.names

    def deltas(self, x: np.ndarray) -> np.ndarray:
        """All 14 corrections at ``x`` (the closed ones at their values)."""
        d = self.corrections.values.copy()
        d[self.corrections.open] = np.asarray(x, dtype=float)[self.n_constants:]
        return d

    def points_at(self, deltas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(Q, q = Q - G) of every point through the geometry corrected by ``deltas``, vectorised."""
        geometry = self.geometry.corrected(deltas)
        pts = self.points
        rotations = geometry.lab_to_crystal(np.arange(int(pts.frame.max()) + 1))  # (F, 3, 3)
        q_lab = geometry.q_lab(pts.pixel[:, 0], pts.pixel[:, 1])
        Q = np.matmul(rotations[pts.frame], q_lab[:, :, None])[:, :, 0]
        return Q, Q - geometry.lattice.q(self.hkl)[pts.spot]

    def _model_at(self, deltas: np.ndarray):
        key = np.asarray(deltas, dtype=float).tobytes()
        if key != self._model_key:
            self.model = self.make(*self.points_at(deltas))
            self._model_key = key
        return self.model

    def _model(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        T, J = self._model_at(self.deltas(x)).evaluate(self.full(x), jacobian=True)
        return T, J[:, self.constants.fitted]

    def _model_jacobian(self, x: np.ndarray, T: np.ndarray, J: np.ndarray) -> np.ndarray:
        p, d = self.full(x), self.deltas(x)
        columns = [J]
        for i in np.flatnonzero(self.corrections.open):
            step = np.zeros_like(d)
            step[i] = GEOMETRY_STEPS[A_VARIABLE_NAMES[i]]
            plus = self.make(*self.points_at(d + step)).evaluate(p, jacobian=False)[0]
            minus = self.make(*self.points_at(d - step)).evaluate(p, jacobian=False)[0]
            columns.append(((plus - minus) / (2 * step[i]))[:, None])
        return np.hstack(columns)


def geometry_corrections(harvest, geometry, setting) -> GeometryCorrections | None:
    """The A_variables to apply, or None when the harvested Q are used as they are.

    Refuses open corrections on a re-centred harvest and names what else is missing.
    """
    corrections = GeometryCorrections.from_setting(setting)
    if corrections is None or not corrections.active:
        return None
    what = f"A_variables ({', '.join(corrections.names) or 'non-zero closed corrections'})"
    centering = harvest.get("centering_file")
    if centering:
        raise UsageError(f"{what} cannot be refined on a harvest re-centred with centering_file {centering}: "
                         "its Q were shifted to the measured spot centres and cannot be recomputed from the "
                         "geometry. Close every A_variables interval (min == max == 0) or harvest without "
                         "centering_file")
    if geometry is None:
        raise UsageError(f"{what} need the experiment geometry (conf_file) to recompute Q")
    missing = [label for key, label in (("frame", "points/frame"), ("pixel", "points/pixel"), ("hkl", "spots/hkl"))
               if harvest.get(key) is None]
    if missing:
        raise DataError(f"{what} need the harvest's {', '.join(missing)} to recompute Q from the geometry")
    return corrections


def clear_of_peak(harvest, geometry, settings: FitSettings):
    """The harvest without the points whose Q passes within DeltaQ_min of their spot during the exposure.

    Why: DeltaQ_min keeps the Bragg peak out at the frame centre, but over a wide
    frame a pixel's Q sweeps an arc (|axis x Q| x width); where the arc enters
    the DeltaQ_min ball the pixel has counted the peak and its tails, which the
    TDS model has no term for.  Needs the harvest's ``delta_q`` and the geometry;
    off with ``exposure = "off"`` or ``clear_peak = False``.
    """
    delta_q = harvest.get("delta_q")
    if settings.exposure == "off" or not settings.clear_peak or geometry is None or delta_q is None:
        return harvest
    Q = np.asarray(harvest["Q"], dtype=float)
    q = Q - np.asarray(harvest["G"], dtype=float)[np.asarray(harvest["spot"])]
    width = settings.exposure_width if settings.exposure_width is not None else abs(float(geometry.angular_step))
    half = 0.5 * np.radians(width)
    v = np.cross(geometry.scan_axis_crystal, Q)
    vv = np.maximum(np.einsum("ni,ni->n", v, v), np.finfo(float).tiny)
    t = np.clip(-np.einsum("ni,ni->n", q, v) / vv, -half, half)  # closest approach on the (straight) arc
    r_min = float(delta_q[0]) * geometry.lattice.max_reciprocal
    keep = np.linalg.norm(q + t[:, None] * v, axis=1) >= r_min * (1 - 1e-9)
    if keep.all():
        return harvest
    log.info("exposure: %d of %d points pass within DeltaQ_min = %.4g of their spot during their %.4g deg exposure "
             "(they saw the Bragg peak) and are left out", (~keep).sum(), len(keep), float(delta_q[0]), width)
    n = len(Q)
    return {k: (np.asarray(v)[keep] if k in ("Q", "intensity", "spot", "frame", "pixel") and v is not None
                and len(v) == n else v) for k, v in harvest.items()}


def choose_exposure(points: Points, c_start: np.ndarray, settings: FitSettings, geometry, header_increment=None,
                    options=None) -> Exposure | None:
    """The exposure the model averages over, or None for the frame centres (docs/tds-fit.md, Exposure).

    "auto" integrates when it matters: when averaging over the exposure moves the
    model at CGUESS by more than the noise, sum_k (Delta y_k / sigma_k)^2 > 1 with
    Delta y_k = y_k Delta T_k / T_k and Poisson sigma_k (the fit's weights).
    """
    mode = settings.exposure
    if mode not in EXPOSURE_MODES:
        raise UsageError(f"exposure = {mode!r} is not one of {', '.join(EXPOSURE_MODES)}")
    if settings.substeps is not None and (isinstance(settings.substeps, bool) or int(settings.substeps) < 1):
        raise UsageError(f"exposure_substeps = {settings.substeps!r}: need at least 1 sub-step per frame "
                         "(1 evaluates the frame centre); leave it unset to choose them per point")
    width = settings.exposure_width
    if width is not None and not (np.isfinite(width) and width > 0):
        raise UsageError(f"exposure_width = {width!r} must be a positive angle [deg]")
    if mode == "off":
        return None
    if geometry is None:
        if mode == "on":
            raise UsageError("exposure = 'on' needs the experiment geometry (conf_file: the scan axis and "
                             "angular_step) to turn each point through its frame's exposure")
        log.info("exposure: no geometry given, the model is evaluated at the frame centres")
        return None
    source = "exposure_width"
    if width is None:
        width, source = abs(float(geometry.angular_step)), "angular_step"
    if header_increment is not None and np.isfinite(header_increment) and \
            not np.isclose(abs(float(header_increment)), width, rtol=1e-4, atol=1e-6):
        log.warning("the exposure width %s = %.6g deg disagrees with Angle_increment = %.6g deg in the frames' "
                    "headers; the model averages over %.6g deg", source, width, float(header_increment), width)
    axis = geometry.scan_axis_crystal
    if settings.substeps is not None:
        substeps = np.full(len(points.y), int(settings.substeps), dtype=np.int64)
    else:
        substeps = exposure_substeps(points.Q, points.q, axis, width)
    exposure = Exposure(axis, width, substeps)
    if mode == "auto":
        moved = np.flatnonzero(substeps > 1)  # one sub-step is the frame centre: no change there
        stride = -(-len(moved) // AUTO_SAMPLE)  # a sample is enough for a yes/no (and keeps start-up cheap)
        shift = 0.0
        if len(moved):  # T at CGUESS through a one-element basis, C itself
            moved = moved[::stride]
            Q, q, one = points.Q[moved], points.q[moved], np.ones(1)
            centre = NumpyModel(Q, q, c_start[None], **(options or {})).evaluate(one, False)[0]
            spread = ExposureModel(Q, q, c_start[None], Exposure(axis, width, substeps[moved]),
                                   **(options or {})).evaluate(one, False)[0]
            y = points.y[moved]
            floor = max(1e-2 * float(np.median(np.abs(points.y))), np.finfo(float).tiny)
            shift = stride * float(np.sum((y * (spread / centre - 1)) ** 2 / np.maximum(y, floor)))
        if shift <= 1.0:
            log.info("exposure: averaging over the %.4g deg frames changes the model by less than the noise "
                     "(chi^2 shift %.3g): frame centres used", width, shift)
            return None
        log.info("exposure: averaging over the %.4g deg frames changes the model by more than the noise "
                 "(chi^2 shift %.3g)", width, shift)
    log.info("exposure: model averaged over %.4g deg per frame, %.2f sub-steps per point on average (most %d)",
             width, float(substeps.mean()) if len(substeps) else 0.0, int(substeps.max(initial=1)))
    return exposure


def check_scale_determined(problem: ProjectedProblem) -> None:
    """Refuse a fit whose Jacobian is singular at the start, explaining the scale degeneracy."""
    J = problem.jacobian(problem.x0)
    problem.history.clear()
    norms = np.linalg.norm(J, axis=0)
    names = problem.names
    if np.any(norms == 0):
        name = names[int(np.argmin(norms))]
        where = "its A_variables interval" if name in A_VARIABLE_NAMES else "it in CGUESS"
        raise UsageError(f"the data do not depend on {name}: its column of the fit Jacobian is zero; close "
                         f"{where} (min == max) or collect other spots")
    s = np.linalg.svd(J / norms, compute_uv=False)
    if s[-1] < SINGULAR * s[0]:
        all_free = problem.constants.fitted.all()
        why = ("every elastic constant is free, and TDS with a free scale per spot determines only their "
               "ratios: multiplying all constants by a common factor is compensated exactly by the spot scales. "
               "Fix one constant (fix = 'C11', or a CGUESS entry with min == max) or the bulk modulus "
               "(fix = 'bulk' with bulk_modulus)") if all_free else (
               "the harvested points do not separate the fitted constants; collect more or other spots, "
               "or fix some constants")
        raise UsageError(f"the fit Jacobian is singular (condition number {s[0] / max(s[-1], 1e-300):.3g}): {why}")


def voigt_bulk_gradient() -> np.ndarray:
    """(6, 6) weights k with K_Voigt = sum k * C: (C11 + C22 + C33 + 2 (C12 + C13 + C23)) / 9."""
    k = np.zeros((6, 6))
    k[:3, :3] = 1.0 / 9.0
    return k


@dataclass
class FitResult:
    """The fitted constants with uncertainties and everything the reports need."""

    names: list[str]
    values: np.ndarray
    sigma: np.ndarray
    fitted: np.ndarray
    voigt: np.ndarray
    voigt_sigma: np.ndarray
    scale: np.ndarray  # per harvest spot (NaN for spots left out)
    baseline: np.ndarray
    cost: float
    converged: bool
    message: str
    n_points: int
    n_spots: int
    reduced_chi2: float
    reference: str
    backend: str
    history: list[float] = field(default_factory=list)
    hkl: np.ndarray | None = None
    geometry: dict[str, dict] = field(default_factory=dict)  # refined correction -> value, sigma, corrected
    extra: dict = field(default_factory=dict)  # "exposure", "threshold", "spot_diagnostics" for fit_results.json
    basis: np.ndarray | None = None  # (n, 6, 6): voigt = sum values[i] basis[i]
    covariance: np.ndarray | None = None  # (n, n) of values

    def rotated(self, rotation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(voigt, voigt_sigma) in the Cartesian frame v' = R v (e.g. the IEEE setting), the uncertainties
        propagated from the constants' covariance through the rotated basis."""
        from difframe.crystal.setting import rotate_voigt

        if self.basis is None or self.covariance is None:
            raise UsageError("this fit result has no basis and covariance to rotate")
        basis = rotate_voigt(self.basis, rotation)
        flat = basis.reshape(len(self.values), 36)
        sigma = np.sqrt(np.clip(np.einsum("ai,ab,bi->i", flat, self.covariance, flat), 0, None)).reshape(6, 6)
        return np.tensordot(self.values, basis, axes=1), sigma

    @property
    def fixed(self) -> list[str]:
        return [n for n, f in zip(self.names, self.fitted) if not f]

    @property
    def ratios(self) -> dict[str, float]:
        ref = self.values[self.names.index(self.reference)]
        return {f"{n}/{self.reference}": float(v / ref) for n, v in zip(self.names, self.values) if n != self.reference}

    def constants_table(self) -> dict[str, dict]:
        """All 21 Voigt components C11..C66 with symmetry relations applied."""
        out = {}
        for name in VOIGT_NAMES:
            i, j = int(name[1]) - 1, int(name[2]) - 1
            out[name] = {"value": float(self.voigt[i, j]), "sigma": float(self.voigt_sigma[i, j]),
                         "free": name in self.names and bool(self.fitted[self.names.index(name)])}
        return out


def covariance(problem: ProjectedProblem, x: np.ndarray, n_linear: int) -> tuple[np.ndarray, float]:
    """Covariance of the fitted constants (Gauss-Newton, scaled by the reduced chi^2) and that chi^2."""
    r = problem.residuals(x)
    J = problem.jacobian(x)
    problem.history.pop()
    dof = max(len(r) - J.shape[1] - n_linear, 1)
    chi2 = float(r @ r / dof)
    try:
        cov = np.linalg.inv(J.T @ J) * chi2
    except np.linalg.LinAlgError:
        log.warning("the fit Jacobian is singular at the solution: uncertainties are undefined")
        cov = np.full((J.shape[1],) * 2, np.nan)
    return cov, chi2


def fit(harvest, structure, cguess, settings: FitSettings, minimise, minimiser_params=None,
        geometry=None) -> FitResult:
    """Fit the free constants of ``structure`` to ``harvest`` with ``minimise(problem, params)``.

    ``harvest`` maps "Q", "intensity", "spot", "G" (and optionally "hkl",
    "frame", "pixel", "centering_file") to arrays as in the harvest file;
    ``structure`` has ``.free`` and ``.basis``; ``geometry`` (a
    :class:`difframe.crystal.geometry.Geometry`, the harvest's) is needed for
    ``settings.a_variables``.
    """
    problem, points = build_problem(harvest, structure, cguess, settings, geometry,
                                    harvest.get("angle_increment"))
    params = {"ftol": settings.ftol, "max_iterations": settings.max_iterations, **dict(minimiser_params or {})}
    outcome = minimise(problem, params)
    return finish(problem, outcome.x, settings, cost=outcome.cost, converged=outcome.converged,
                  message=outcome.message, hkl=harvest.get("hkl"), n_harvest_spots=len(harvest["G"]))


def build_problem(harvest, structure, cguess, settings: FitSettings, geometry=None,
                  header_increment: float | None = None) -> tuple[ProjectedProblem, Points]:
    """Points, constants and model assembled into the projected least-squares problem (start checked).

    ``header_increment``: the frames' Angle_increment [deg] from their headers, when known (checked
    against the exposure width).
    """
    check = getattr(structure, "check_constants", None)  # names the symmetry relation of a constant not free
    if check is not None:
        check(list(dict(cguess or {})), "CGUESS")
    constants = Constants.from_cguess(cguess, structure.free)
    basis = np.asarray(structure.basis, dtype=float)
    check_stability(np.tensordot(constants.values, basis, axes=1), "the CGUESS start values")
    if settings.fix == "bulk" and settings.quantum_bose:
        raise UsageError("fix = 'bulk' rescales a classical fit; with the quantum Bose model fix one constant")
    choose_fixed(constants, settings.fix)
    corrections = geometry_corrections(harvest, geometry, settings.a_variables)
    if not constants.fitted.any() and not (corrections and corrections.open.any()):
        raise UsageError("every CGUESS interval is closed (min == max): nothing to fit")
    harvest = clear_of_peak(harvest, geometry, settings)
    points = Points.from_harvest(harvest["Q"], harvest["intensity"], harvest["spot"], harvest["G"],
                                 nred=settings.nred, weighting=settings.weighting,
                                 frame=harvest.get("frame"), pixel=harvest.get("pixel"))
    options = dict(quantum_bose=settings.quantum_bose, temperature=settings.temperature, density=settings.density)
    exposure = choose_exposure(points, np.tensordot(constants.values, basis, axes=1), settings, geometry,
                               header_increment, options)
    options["exposure"] = exposure
    model = make_model(points.Q, points.q, basis, backend=settings.backend, **options)

    def numpy_model(Q, q):  # for the float64 check of the start only: the exposure average changes no null space
        return NumpyModel(Q, q, basis)

    if corrections is None:
        problem = ProjectedProblem(points, constants, model)
        exact = problem if model.backend == "numpy" else ProjectedProblem(points, constants,
                                                                          numpy_model(points.Q, points.q))
    else:  # the backend that works (no repeated fall-back warnings), on recomputed points
        hkl = np.asarray(harvest["hkl"])[points.spots]
        problem = GeometryProblem(points, constants, geometry, corrections, hkl,
                                  lambda Q, q: make_model(Q, q, basis, backend=model.backend, **options))
        exact = problem if model.backend == "numpy" else GeometryProblem(
            points, constants, geometry, corrections, hkl, numpy_model)
    check_scale_determined(exact)  # float32 (OpenCL) blurs a null space to ~1e-6: checked once in float64
    log.info("fitting %d parameters (%s) to %d points in %d spots (%s model)", len(problem.x0),
             ", ".join(problem.names), len(points.y), len(points.spots), model.backend)
    return problem, points


def finish(problem: ProjectedProblem, x, settings: FitSettings, *, cost, converged, message, hkl=None,
           n_harvest_spots=None) -> FitResult:
    """Uncertainties, the bulk-modulus rescaling, the Voigt table and the stability check of the result."""
    constants, points = problem.constants, problem.points
    basis = problem.model.basis
    x = np.asarray(x, dtype=float)
    p = problem.full(x)
    A, B = problem.linear(x)
    cov_x, chi2 = covariance(problem, x, 2 * len(points.spots))
    n_fitted = int(constants.fitted.sum())
    geometry = {}
    if isinstance(problem, GeometryProblem):
        corrected = problem.geometry.corrected(problem.deltas(x))
        for k, name in enumerate(problem.corrections.names, start=n_fitted):
            geometry[name] = {"value": float(x[k]), "sigma": float(np.sqrt(max(cov_x[k, k], 0.0))),
                              "corrected": float(getattr(corrected, name))}
    cov_x = cov_x[:n_fitted, :n_fitted]  # the constants' block: the corrections are marginalised
    D = np.zeros((len(p), n_fitted))  # d p / d x
    D[constants.fitted, np.arange(n_fitted)] = 1.0
    reference = constants.names[int(np.flatnonzero(~constants.fitted)[0])] if (~constants.fitted).any() \
        else constants.names[0]
    if settings.fix == "bulk":
        k = np.tensordot(basis, voigt_bulk_gradient(), axes=([1, 2], [0, 1]))  # dK/dp
        K = float(k @ p)
        target = settings.bulk_modulus if settings.bulk_modulus else float(k @ constants.values)
        factor = target / K
        D = factor * (np.eye(len(p)) - np.outer(p, k) / K) @ D
        p, A = p * factor, A / factor
        log.info("scale: constants rescaled by %.6g so the Voigt bulk modulus is %.6g GPa", factor, target)
    cov_p = D @ cov_x @ D.T
    sigma = np.sqrt(np.clip(np.diag(cov_p), 0, None))
    voigt = np.tensordot(p, basis, axes=1)
    flat = basis.reshape(len(p), 36)
    voigt_sigma = np.sqrt(np.clip(np.einsum("ai,ab,bi->i", flat, cov_p, flat), 0, None)).reshape(6, 6)
    try:
        check_stability(voigt, "the fitted elastic constants")
    except UsageError as exc:
        converged, message = False, f"{message}; {exc}"
        log.warning("%s", exc)
    n_spots_total = n_harvest_spots if n_harvest_spots is not None else int(points.spots.max()) + 1
    scale = np.full(n_spots_total, np.nan)
    baseline = np.full(n_spots_total, np.nan)
    scale[points.spots], baseline[points.spots] = A, B
    return FitResult(
        names=list(constants.names), values=p, sigma=sigma, fitted=constants.fitted.copy(), voigt=voigt,
        voigt_sigma=voigt_sigma, scale=scale, baseline=baseline, cost=float(cost), converged=bool(converged),
        message=str(message), n_points=len(points.y), n_spots=len(points.spots), reduced_chi2=chi2,
        reference=reference, backend=problem.model.backend, history=list(problem.history),
        hkl=None if hkl is None else np.asarray(hkl), geometry=geometry,
        extra={"exposure": exposure_summary(getattr(problem.model, "exposure", None))},
        basis=np.asarray(basis, dtype=float), covariance=cov_p,
    )


def exposure_summary(exposure: Exposure | None) -> dict:
    """What fit_results.json says about the exposure average."""
    if exposure is None:
        return {"averaged": False}
    k = np.asarray(exposure.substeps)
    return {"averaged": True, "width_deg": float(exposure.width), "substeps_mean": float(k.mean()) if k.size else 0.0,
            "substeps_max": int(k.max(initial=1)), "axis_crystal": [float(x) for x in exposure.axis]}
