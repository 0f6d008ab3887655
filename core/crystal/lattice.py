"""Unit cell -> reciprocal lattice: the B matrix and the crystal Cartesian frame.

Convention (Busing & Levy 1967, with the factor 2 pi; the Giacovazzo alignment
tds2el uses): the crystal Cartesian frame has **a\\* along x**, b\\* in the xy plane
and hence **c along z**.  Q_c = B h for Miller indices h, |Q| in 1/Angstrom with
|Q| = 2 pi / d.  The direct lattice vectors are the columns of
``2 pi (B^-1)^T``.  Elastic constants and symmetry generators live in this frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from difframe.errors import UsageError

__all__ = ["Lattice"]


@dataclass(frozen=True)
class Lattice:
    """A cell: lengths a, b, c [Angstrom] and angles alpha, beta, gamma [deg]."""

    a: float
    b: float
    c: float
    alpha: float = 90.0
    beta: float = 90.0
    gamma: float = 90.0

    def __post_init__(self) -> None:
        for name in ("a", "b", "c"):
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                raise UsageError(f"cell length {name} = {value!r} must be a positive number [Angstrom]")
        angles = np.radians([self.alpha, self.beta, self.gamma])
        cos = np.cos(angles)
        det = 1 - (cos**2).sum() + 2 * cos.prod()
        if not np.all((angles > 0) & (angles < np.pi)) or det <= 0:
            raise UsageError(f"cell angles {self.alpha}, {self.beta}, {self.gamma} deg do not form a cell")

    @property
    def volume(self) -> float:
        """Cell volume [Angstrom^3]."""
        cos = np.cos(np.radians([self.alpha, self.beta, self.gamma]))
        return float(self.a * self.b * self.c * np.sqrt(1 - (cos**2).sum() + 2 * cos.prod()))

    @property
    def B(self) -> np.ndarray:
        """(3, 3) Busing-Levy B with 2 pi: columns a*, b*, c* in the crystal frame (a* along x)."""
        al, be, ga = np.radians([self.alpha, self.beta, self.gamma])
        v = self.volume
        ra = 2 * np.pi * self.b * self.c * np.sin(al) / v
        rb = 2 * np.pi * self.a * self.c * np.sin(be) / v
        rc = 2 * np.pi * self.a * self.b * np.sin(ga) / v
        cos_rb = (np.cos(al) * np.cos(ga) - np.cos(be)) / (np.sin(al) * np.sin(ga))
        cos_rg = (np.cos(al) * np.cos(be) - np.cos(ga)) / (np.sin(al) * np.sin(be))
        sin_rg = np.sqrt(1 - cos_rg**2)
        sin_rb = np.sqrt(1 - cos_rb**2)
        return np.array([
            [ra, rb * cos_rg, rc * cos_rb],
            [0.0, rb * sin_rg, -rc * sin_rb * np.cos(al)],
            [0.0, 0.0, 2 * np.pi / self.c],
        ])

    @property
    def direct(self) -> np.ndarray:
        """(3, 3) columns a, b, c [Angstrom] in the crystal frame (c along z)."""
        return 2 * np.pi * np.linalg.inv(self.B).T

    @property
    def max_reciprocal(self) -> float:
        """Length of the longest of a*, b*, c* [1/Angstrom]: the unit of DeltaQ_max/min."""
        return float(np.linalg.norm(self.B, axis=0).max())

    def q(self, hkl: np.ndarray) -> np.ndarray:
        """Q_c = B h for (..., 3) Miller indices."""
        return np.asarray(hkl, dtype=float) @ self.B.T

    def hkl(self, q_c: np.ndarray) -> np.ndarray:
        """Fractional Miller indices h = B^-1 Q_c for (..., 3) vectors."""
        return np.asarray(q_c, dtype=float) @ np.linalg.inv(self.B).T
