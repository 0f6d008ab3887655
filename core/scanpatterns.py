"""Geometry of the built-in scan patterns, shared by the pattern plugins.

All functions return (N, 2) float64 arrays of positions in metres, ordered
(y, x), centred on the origin, in a fixed (deterministic) order.
"""

from __future__ import annotations

import numpy as np


def raster(ny: int, nx: int, dy: float, dx: float) -> np.ndarray:
    """Grid of ny rows by nx columns, row by row: y_i = (i - (ny-1)/2) dy, x_j = (j - (nx-1)/2) dx."""
    y = (np.arange(ny) - (ny - 1) / 2.0) * dy
    x = (np.arange(nx) - (nx - 1) / 2.0) * dx
    yy, xx = np.meshgrid(y, x, indexing="ij")
    return np.stack([yy.ravel(), xx.ravel()], axis=1)


def rings(dr: float, nr: int, nth: int) -> np.ndarray:
    """Concentric circles: the centre, then ring k = 1..nr of radius k dr with k nth points.

    Point j of ring k sits at angle 2 pi j / (k nth), so the spacing along every
    ring is about 2 pi dr / nth.  Total 1 + nth nr (nr + 1) / 2 points.
    """
    k = np.repeat(np.arange(1, nr + 1), nth * np.arange(1, nr + 1))
    start = np.concatenate([[0], np.cumsum(nth * np.arange(1, nr + 1))[:-1]])
    j = np.arange(k.size) - np.repeat(start, nth * np.arange(1, nr + 1))
    theta = 2.0 * np.pi * j / (k * nth)
    r = k * dr
    return np.concatenate([[[0.0, 0.0]], np.stack([r * np.sin(theta), r * np.cos(theta)], axis=1)])


def spiral(dr: float, r_out: float) -> np.ndarray:
    """Archimedean spiral r = dr theta / (2 pi), sampled every dr of arc length.

    Point n sits at theta_n = sqrt(4 pi n), r_n = dr sqrt(n / pi): arms and
    neighbours along an arm are both about dr apart, one point per dr^2 of area.
    Points with r_n <= r_out are kept: floor(pi (r_out / dr)^2) + 1 of them.
    """
    n = np.arange(int(np.floor(np.pi * (r_out / dr) ** 2 * (1 + 1e-12))) + 1)
    theta = np.sqrt(4.0 * np.pi * n)
    r = dr * np.sqrt(n / np.pi)
    return np.stack([r * np.sin(theta), r * np.cos(theta)], axis=1)


def crop_to_roi(positions: np.ndarray, ly: float, lx: float) -> np.ndarray:
    """Keep the positions inside the centred ly x lx rectangle (edges included)."""
    tol = 1e-9 * max(ly, lx)
    inside = (np.abs(positions[:, 0]) <= ly / 2 + tol) & (np.abs(positions[:, 1]) <= lx / 2 + tol)
    return positions[inside]


def rings_covering(ly: float, lx: float, dr: float) -> int:
    """Number of rings needed for circles of spacing dr to cover an ly x lx rectangle."""
    return int(np.ceil(np.hypot(ly, lx) / 2.0 / dr))
