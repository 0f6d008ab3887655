"""The one geometry convention of difframe's rotation images (tds2el conf_file names).

Lab frame: **x along the incident beam** (source -> sample), **z vertical up**,
y = z cross x (horizontal, to the left seen looking downstream); the sample sits at
the origin.  Wave vectors carry 2 pi: |k| = 2 pi / lmbda [1/Angstrom].

* Beam: k_i = (2 pi / lmbda) R_y(beam_tilt_angle) x.
* Detector (untilted): the plane x = dist [mm].  The centre of pixel (row, col),
  0-based, sits at (dist, -(col - det_origin_X) * pixel_size,
  -(row - det_origin_Y) * pixel_size): seen from the sample, columns run to the
  right and rows down, and (det_origin_Y, det_origin_X) is the pixel the
  untilted beam axis hits.  Tilts rotate the whole detector about the sample:
  P = R_z(theta + theta_offset) R_y(d2) R_x(d1) p (d1 turns it about the beam,
  d2 about the horizontal axis y, theta is a detector arm about z).
* Scattering vector of a pixel: Q_lab = k_f - k_i, k_f = |k| P / |P|.
* Goniometer and orientation: :mod:`difframe.crystal.goniometer`; frame n (0-based,
  files in name order) is taken at phi_n = phi + n * angular_step, the **centre**
  of its exposure (the exposure runs from phi_n - step/2 to phi_n + step/2).
* Crystal frame: Q_c = (R_gonio(phi_n) U)^T Q_lab, h = B^-1 Q_c
  (:mod:`difframe.crystal.lattice`: a* along x, B with 2 pi).

All rotations are active and right-handed, angles in degrees.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from difframe.crystal.goniometer import axis_rotation, gonio_rotation, orientation_matrix
from difframe.crystal.lattice import Lattice
from difframe.errors import UsageError

__all__ = ["Geometry", "A_VARIABLE_NAMES", "GEOMETRY_FIELDS"]

#: the order of tds2el's A_variables corrections (added to these parameters)
A_VARIABLE_NAMES = ("r1", "r2", "r3", "AA", "BB", "CC", "omega", "alpha", "beta", "kappa", "d1", "d2",
                    "det_origin_X", "det_origin_Y")


@dataclass(frozen=True, kw_only=True)
class Geometry:
    """Experiment geometry with tds2el's conf_file names (units in the field comments)."""

    lmbda: float  # wavelength [Angstrom]
    dist: float  # sample-detector distance [mm]
    pixel_size: float  # [mm], square pixels
    det_origin_X: float  # column hit by the beam axis [px, 0-based]
    det_origin_Y: float  # row hit by the beam axis [px, 0-based]
    AA: float  # cell a [Angstrom]
    BB: float  # cell b [Angstrom]
    CC: float  # cell c [Angstrom]
    angular_step: float  # phi increment per frame [deg]
    aAA: float = 90.0  # cell alpha [deg]
    aBB: float = 90.0  # cell beta [deg]
    aCC: float = 90.0  # cell gamma [deg]
    phi: float = 0.0  # phi of frame 0 (centre of its exposure) [deg]
    omega: float = 0.0  # [deg]
    omega_offset: float = 0.0  # added to omega [deg]
    alpha: float = 50.0  # kappa-axis tilt from z [deg]
    beta: float = 0.0  # phi-axis tilt from z [deg]
    kappa: float = 0.0  # [deg]
    r1: float = 0.0  # orientation, about x [deg]
    r2: float = 0.0  # orientation, about y [deg]
    r3: float = 0.0  # orientation, about z [deg]
    d1: float = 0.0  # detector tilt about the beam axis x [deg]
    d2: float = 0.0  # detector tilt about y [deg]
    theta: float = 0.0  # detector arm about z [deg]
    theta_offset: float = 0.0  # added to theta [deg]
    beam_tilt_angle: float = 0.0  # incident beam tilt about y [deg]
    dim1: int | None = None  # detector rows, when known
    dim2: int | None = None  # detector columns, when known

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.name in ("dim1", "dim2"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UsageError(f"geometry parameter {f.name} = {value!r} is not a finite number")
        for name in ("lmbda", "dist", "pixel_size"):
            if getattr(self, name) <= 0:
                raise UsageError(f"geometry parameter {name} = {getattr(self, name)!r} must be positive")
        if self.angular_step == 0:
            raise UsageError("geometry parameter angular_step must not be 0")
        self.lattice  # validates the cell  # noqa: B018

    # -- construction --------------------------------------------------------

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], source: str = "conf_file") -> "Geometry":
        """Take the geometry names from a conf_file-like mapping (other keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
        missing = [n for n in required if mapping.get(n) is None]
        if missing:
            raise UsageError(f"{source}: geometry parameter(s) {', '.join(missing)} missing")
        values = {}
        for key, value in mapping.items():
            if key not in names or value is None:
                continue
            if key in ("dim1", "dim2"):
                if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                    raise UsageError(f"{source}: {key} = {value!r} must be a positive integer")
                values[key] = value
                continue
            try:
                values[key] = float(value)
            except (TypeError, ValueError):
                raise UsageError(f"{source}: geometry parameter {key} = {value!r} is not a number") from None
        return cls(**values)

    def to_mapping(self) -> dict[str, Any]:
        """The geometry as conf_file names -> values (dim1/dim2 only when known)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def corrected(self, deltas: Sequence[float]) -> "Geometry":
        """A copy with tds2el's 14 A_variables corrections added (order: :data:`A_VARIABLE_NAMES`)."""
        if len(deltas) != len(A_VARIABLE_NAMES):
            raise UsageError(f"A_variables has {len(deltas)} entries, expected {len(A_VARIABLE_NAMES)} "
                             f"({', '.join(A_VARIABLE_NAMES)})")
        return dataclasses.replace(self, **{n: getattr(self, n) + float(d) for n, d in zip(A_VARIABLE_NAMES, deltas)})

    # -- crystal ---------------------------------------------------------------

    @property
    def lattice(self) -> Lattice:
        return Lattice(self.AA, self.BB, self.CC, self.aAA, self.aBB, self.aCC)

    @property
    def U(self) -> np.ndarray:
        """Orientation matrix: crystal Cartesian frame -> lab at zero goniometer angles."""
        return orientation_matrix(self.r1, self.r2, self.r3)

    @property
    def k(self) -> float:
        """|k| = 2 pi / lmbda [1/Angstrom]."""
        return 2 * np.pi / self.lmbda

    @property
    def k_in(self) -> np.ndarray:
        """Incident wave vector in the lab [1/Angstrom]."""
        return self.k * axis_rotation(1, self.beam_tilt_angle)[:, 0]

    def phi_of_frame(self, n) -> np.ndarray:
        """phi_n = phi + n * angular_step: the centre of frame n's exposure [deg]."""
        return self.phi + np.asarray(n, dtype=float) * self.angular_step

    def gonio(self, n) -> np.ndarray:
        """R_gonio for frame(s) n (fractional allowed): (3, 3) or (N, 3, 3)."""
        return gonio_rotation(self.omega + self.omega_offset, self.alpha, self.beta, self.kappa, self.phi_of_frame(n))

    @property
    def scan_axis_crystal(self) -> np.ndarray:
        """Unit scan axis a in the crystal frame: Q_c at phi_n + delta is Rot(a, delta) Q_c(phi_n).

        Why constant: phi is innermost, so R_gonio(phi + delta) = R_gonio(phi) R_phi-axis(delta)
        and the crystal sees the phi axis R_y(beta) z fixed, turned back by U^T (and reversed:
        a crystal-fixed vector moves against the lab's view of it).
        """
        return -(self.U.T @ axis_rotation(1, self.beta)[:, 2])

    def lab_to_crystal(self, n) -> np.ndarray:
        """(R_gonio(n) U)^T for frame(s) n: Q_c = M Q_lab."""
        return np.swapaxes(self.gonio(n) @ self.U, -1, -2)

    # -- detector --------------------------------------------------------------

    @property
    def detector_rotation(self) -> np.ndarray:
        return axis_rotation(2, self.theta + self.theta_offset) @ axis_rotation(1, self.d2) @ axis_rotation(0, self.d1)

    def pixel_lab(self, rows, cols) -> np.ndarray:
        """Lab positions [mm] of pixel centres (rows, cols broadcast): (..., 3)."""
        rows, cols = np.broadcast_arrays(np.asarray(rows, dtype=float), np.asarray(cols, dtype=float))
        p = np.stack([np.full(rows.shape, self.dist), -(cols - self.det_origin_X) * self.pixel_size,
                      -(rows - self.det_origin_Y) * self.pixel_size], axis=-1)
        return p @ self.detector_rotation.T

    def q_lab(self, rows, cols) -> np.ndarray:
        """Q_lab = k_f - k_i [1/Angstrom] of pixels (rows, cols broadcast): (..., 3)."""
        p = self.pixel_lab(rows, cols)
        return self.k * p / np.linalg.norm(p, axis=-1, keepdims=True) - self.k_in

    def q_lab_image(self, shape: tuple[int, int] | None = None) -> np.ndarray:
        """Q_lab of every pixel of a frame: (rows, cols, 3), computed once per scan."""
        rows, cols = self._shape(shape)
        return self.q_lab(np.arange(rows)[:, None], np.arange(cols)[None, :])

    def _shape(self, shape):
        if shape is None:
            if self.dim1 is None or self.dim2 is None:
                raise UsageError("the detector shape is unknown: give dim1 and dim2 or read it from a frame")
            return self.dim1, self.dim2
        return int(shape[0]), int(shape[1])

    def lab_to_pixel(self, direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, col) where rays from the sample along ``direction`` (..., 3) meet the detector
        (NaN for rays that miss its plane)."""
        d = np.asarray(direction, dtype=float) @ self.detector_rotation  # into the untilted detector frame
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(d[..., 0] > 0, self.dist / d[..., 0], np.nan)
        col = self.det_origin_X - t * d[..., 1] / self.pixel_size
        row = self.det_origin_Y - t * d[..., 2] / self.pixel_size
        return row, col

    # -- Bragg prediction ----------------------------------------------------

    def predict_bragg(self, hkl, n_frames: int, shape: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
        """Where reflections ``hkl`` (M, 3) cross the Ewald sphere during frames 0..n_frames-1.

        Returns arrays ``hkl`` (K, 3), ``frame`` (K,) fractional frame index (integer = exposure
        centre), ``row``, ``col`` (K,) pixel coordinates, for the crossings that fall inside the
        scan and on the detector.  Each reflection crosses the sphere up to twice per turn.
        """
        rows, cols = self._shape(shape)
        hkl = np.atleast_2d(np.asarray(hkl, dtype=float))
        g_c = self.lattice.q(hkl)
        # R_gonio = F R_z(phi) R_y(-beta) with F fixed; Laue condition |k_i + G_lab| = |k_i| reads
        # (F^T k_i) . R_z(phi) v = -|G|^2 / 2 with v = R_y(-beta) U G_c: a cos(phi) + b sin(phi) = d
        fixed = gonio_rotation(self.omega + self.omega_offset, self.alpha, 0.0, self.kappa, 0.0) @ \
            axis_rotation(1, self.beta)
        v = g_c @ (axis_rotation(1, -self.beta) @ self.U).T
        w = fixed.T @ self.k_in
        a = w[0] * v[:, 0] + w[1] * v[:, 1]
        b = w[1] * v[:, 0] - w[0] * v[:, 1]
        d = -0.5 * (g_c**2).sum(axis=1) - w[2] * v[:, 2]
        amp = np.hypot(a, b)
        with np.errstate(invalid="ignore", divide="ignore"):
            half = np.arccos(d / amp)
        out = {"hkl": [], "frame": [], "row": [], "col": []}
        start = np.degrees(np.arctan2(b, a))
        for sign in (1.0, -1.0):
            phi_deg = start + sign * np.degrees(half)
            frame = (phi_deg - self.phi) / self.angular_step
            turn = 360.0 / abs(self.angular_step)
            frame = np.mod(frame + 0.5, turn) - 0.5  # first crossing at or after the scan start
            ok = np.isfinite(frame) & (frame <= n_frames - 0.5) & (amp > 0)
            g_lab = np.einsum("nij,nj->ni", self.gonio(frame[ok]) @ self.U, g_c[ok])
            row, col = self.lab_to_pixel(self.k_in + g_lab)
            on = np.isfinite(row) & (row > -0.5) & (row < rows - 0.5) & (col > -0.5) & (col < cols - 0.5)
            out["hkl"].append(hkl[ok][on])
            out["frame"].append(frame[ok][on])
            out["row"].append(row[on])
            out["col"].append(col[on])
        result = {k: np.concatenate(v) for k, v in out.items()}
        order = np.argsort(result["frame"], kind="stable")
        result = {k: v[order] for k, v in result.items()}
        result["hkl"] = np.rint(result["hkl"]).astype(int)
        return result


GEOMETRY_FIELDS = tuple(f.name for f in dataclasses.fields(Geometry))
