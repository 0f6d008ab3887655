"""Rotations of the kappa goniometer and the crystal orientation.

All rotations are **active and right-handed** (a positive angle turns a vector
counter-clockwise seen from the tip of the axis), angles in degrees, axes in the
lab frame of :mod:`difframe.crystal.geometry` (x along the beam, z up).

* omega about z;
* kappa about the kappa axis, z tilted by alpha about y: R_y(alpha) R_z(kappa) R_y(-alpha);
* phi (the scan axis) about z tilted by beta about y: R_y(beta) R_z(phi) R_y(-beta);
* R_gonio = R_z(omega) . R_kappa . R_phi (phi innermost, it carries the crystal);
* U = R_z(r3) R_y(r2) R_x(r1) turns the crystal Cartesian frame into the lab frame
  at zero goniometer angles.

A vector fixed in the crystal, Q_c, is Q_lab = R_gonio U Q_c in the lab.
"""

from __future__ import annotations

import numpy as np

__all__ = ["axis_rotation", "gonio_rotation", "orientation_matrix"]


def axis_rotation(axis: int, angle_deg) -> np.ndarray:
    """Active rotation about lab axis 0 (x), 1 (y) or 2 (z); vectorised: (..., 3, 3) for array angles."""
    t = np.radians(np.asarray(angle_deg, dtype=float))
    c, s = np.cos(t), np.sin(t)
    r = np.zeros(t.shape + (3, 3))
    i, j = (axis + 1) % 3, (axis + 2) % 3
    r[..., axis, axis] = 1.0
    r[..., i, i] = c
    r[..., j, j] = c
    r[..., i, j] = -s
    r[..., j, i] = s
    return r


def gonio_rotation(omega: float, alpha: float, beta: float, kappa: float, phi) -> np.ndarray:
    """R_gonio for one or many phi values: (3, 3) or (N, 3, 3)."""
    fixed = axis_rotation(2, omega) @ axis_rotation(1, alpha) @ axis_rotation(2, kappa) @ axis_rotation(1, -alpha)
    return fixed @ axis_rotation(1, beta) @ axis_rotation(2, phi) @ axis_rotation(1, -beta)


def orientation_matrix(r1: float, r2: float, r3: float) -> np.ndarray:
    """U = R_z(r3) R_y(r2) R_x(r1): crystal Cartesian frame -> lab frame at zero angles."""
    return axis_rotation(2, r3) @ axis_rotation(1, r2) @ axis_rotation(0, r1)
