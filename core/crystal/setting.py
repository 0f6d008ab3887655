"""Elastic tensors between Cartesian settings: difframe's (Giacovazzo) frame and the IEEE/Nye one.

difframe (like tds2el) states every elastic constant in the crystal frame of
:mod:`difframe.crystal.lattice`: **a\\* along x, c along z** (Busing-Levy B, Giacovazzo).
Tables of elastic constants use the standard setting of the IEEE 1949 / 176
standard on piezoelectric crystals and Nye's book instead.  As difframe applies it,
stated for the cell as given (a, b, c, alpha, beta, gamma):

* **general rule** (triclinic, and every cell whose a is normal to c: cubic,
  tetragonal, orthorhombic, hexagonal and trigonal on hexagonal axes, monoclinic
  with b unique): **Z along c, X along the part of a normal to c, Y = Z x X**.
  For orthogonal cells this is x = a = a\\*: both settings coincide.  On hexagonal
  axes X is a, 30 deg from a\\* (so a trigonal C14 turns into a C15); for a
  b-unique monoclinic cell X = a\\*, Y = b, Z = c, again difframe's frame.
* **monoclinic with a or c unique** (the one angle that is not 90 deg is alpha or
  gamma, and the cell is not hexagonal, a = b with gamma = 120): Y along the unique (two-fold) axis and Z along the next axis in the
  cyclic order a -> b -> c -> a (c unique: Y along c, Z along a), the IEEE b-unique
  convention applied to the relabelled cell.
* **rhombohedral axes** (a = b = c, alpha = beta = gamma != 90): Z along the
  three-fold axis a + b + c, X along a - b (the hexagonal a of the obverse setting).

The tensor turns as a rank-4 tensor, C'_ijkl = R_ip R_jq R_kr R_ls C_pqrs, which on
the 6x6 Voigt matrix is the Bond transformation C' = M C M^T (:func:`bond_matrix`).
"""

from __future__ import annotations

import numpy as np

from difframe.crystal.symmetry import VOIGT_PAIRS
from difframe.errors import UsageError

__all__ = ["bond_matrix", "rotate_voigt", "rotate_tensor", "ieee_axes", "giacovazzo_to_ieee", "ieee_to_giacovazzo",
           "SETTINGS"]

#: the settings a simulation spec or a report can name
SETTINGS = ("giacovazzo", "ieee")
ANGLE_TOLERANCE = 1e-6  # deg: an angle within this of 90 counts as 90
LENGTH_TOLERANCE = 1e-9  # relative: lengths this close count as equal


def _check_rotation(rotation) -> np.ndarray:
    r = np.asarray(rotation, dtype=float)
    if r.shape != (3, 3) or not np.allclose(r @ r.T, np.eye(3), atol=1e-9):
        raise UsageError(f"rotation must be an orthogonal 3x3 matrix, got {np.array2string(r, precision=4)}")
    return r


def bond_matrix(rotation) -> np.ndarray:
    """(6, 6) Bond matrix M of a rotation R: C' = M C M^T turns a stiffness Voigt matrix as the tensor.

    Row (i, j), column (k, l) of Voigt pairs: R_ik R_jl, plus R_il R_jk for a shear column (k != l),
    the stress-vector transformation sigma' = M sigma (Auld's M).
    """
    r = _check_rotation(rotation)
    m = np.empty((6, 6))
    for a, (i, j) in enumerate(VOIGT_PAIRS):
        for b, (k, l) in enumerate(VOIGT_PAIRS):
            m[a, b] = r[i, k] * r[j, l] + (r[i, l] * r[j, k] if k != l else 0.0)
    return m


def rotate_voigt(c_voigt, rotation) -> np.ndarray:
    """Voigt matrix (..., 6, 6) of C in the frame whose components are v' = R v (R: ``rotation``)."""
    m = bond_matrix(rotation)
    return m @ np.asarray(c_voigt, dtype=float) @ m.T


def rotate_tensor(tensor, rotation) -> np.ndarray:
    """Rank-4 (..., 3, 3, 3, 3) tensor in the frame v' = R v: C'_ijkl = R_ip R_jq R_kr R_ls C_pqrs."""
    r = _check_rotation(rotation)
    return np.einsum("ip,jq,kr,ls,...pqrs->...ijkl", r, r, r, r, np.asarray(tensor, dtype=float))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def ieee_axes(lattice) -> np.ndarray:
    """(3, 3) rows X, Y, Z of the IEEE setting as unit vectors in difframe's crystal frame (module doc).

    ``lattice`` is a :class:`difframe.crystal.lattice.Lattice`.  The matrix R turns components:
    v_ieee = R v_difframe.
    """
    direct = lattice.direct  # columns a, b, c in difframe's frame (a* along x, c along z)
    angles = np.array([lattice.alpha, lattice.beta, lattice.gamma], dtype=float)
    lengths = np.array([lattice.a, lattice.b, lattice.c], dtype=float)
    right = np.abs(angles - 90.0) <= ANGLE_TOLERANCE
    rhombohedral = (not right.any() and np.ptp(angles) <= ANGLE_TOLERANCE
                    and np.ptp(lengths) <= LENGTH_TOLERANCE * lengths.max())
    hexagonal = right[0] and right[1] and abs(angles[2] - 120.0) <= ANGLE_TOLERANCE and \
        abs(lengths[0] - lengths[1]) <= LENGTH_TOLERANCE * lengths.max()
    if right.sum() == 2 and right[1] and not hexagonal:
        # monoclinic with a or c unique: Y along the diad, Z along the next axis (cyclic a -> b -> c)
        unique = int(np.flatnonzero(~right)[0])
        y = _unit(direct[:, unique])
        z = _unit(direct[:, (unique + 1) % 3])
        x = np.cross(y, z)
        return np.array([x, y, z])
    if rhombohedral:
        z = _unit(direct.sum(axis=1))
        x = _unit(direct[:, 0] - direct[:, 1])
    else:
        z = _unit(direct[:, 2])
        a = direct[:, 0]
        x = _unit(a - (a @ z) * z)
    return np.array([x, np.cross(z, x), z])


def giacovazzo_to_ieee(c_voigt, lattice) -> np.ndarray:
    """Voigt matrix [GPa] in difframe's (Giacovazzo) frame -> the same tensor in the IEEE setting."""
    return rotate_voigt(c_voigt, ieee_axes(lattice))


def ieee_to_giacovazzo(c_voigt, lattice) -> np.ndarray:
    """Voigt matrix in the IEEE setting -> difframe's (Giacovazzo) frame, the one the fit reports."""
    return rotate_voigt(c_voigt, ieee_axes(lattice).T)
