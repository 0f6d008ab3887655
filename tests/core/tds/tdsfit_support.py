"""Elastic structures and synthetic harvests for the TDS model/fit tests.

The bases are written by hand from the symmetry table of TDS.md (an oracle
independent of difframe.crystal.symmetry); the points are synthesised with the
model plus Poisson noise, so a fit must give back the constants we put in.
"""

import numpy as np

from difframe.tds.model import tds_intensity


class Structure:
    """Free constant names and their Voigt basis, C = sum p_i basis[i]."""

    def __init__(self, entries):
        self.free = list(entries)
        self.basis = np.zeros((len(entries), 6, 6))
        for k, cells in enumerate(entries.values()):
            for (i, j), w in cells:
                self.basis[k, i, j] += w
                if i != j:
                    self.basis[k, j, i] += w

    def full_voigt(self, values):
        return np.tensordot(np.asarray(values, float), self.basis, axes=1)


def cubic():
    return Structure({
        "C11": [((0, 0), 1), ((1, 1), 1), ((2, 2), 1)],
        "C12": [((0, 1), 1), ((0, 2), 1), ((1, 2), 1)],
        "C44": [((3, 3), 1), ((4, 4), 1), ((5, 5), 1)],
    })


def hexagonal():
    return Structure({
        "C11": [((0, 0), 1), ((1, 1), 1), ((5, 5), 0.5)],
        "C12": [((0, 1), 1), ((5, 5), -0.5)],
        "C13": [((0, 2), 1), ((1, 2), 1)],
        "C33": [((2, 2), 1)],
        "C44": [((3, 3), 1), ((4, 4), 1)],
    })


def orthorhombic():
    cells = {"C11": (0, 0), "C12": (0, 1), "C13": (0, 2), "C22": (1, 1), "C23": (1, 2),
             "C33": (2, 2), "C44": (3, 3), "C55": (4, 4), "C66": (5, 5)}
    return Structure({name: [(ij, 1)] for name, ij in cells.items()})


MGO = (cubic, {"C11": 297.0, "C12": 95.2, "C44": 155.7}, (4.212, 4.212, 4.212))
MG = (hexagonal, {"C11": 59.40, "C12": 25.61, "C13": 21.44, "C33": 61.60, "C44": 16.40}, None)
ARAGONITE = (orthorhombic, {"C11": 171.1, "C12": 60.3, "C13": 27.8, "C22": 110.1, "C23": 41.9,
                            "C33": 98.4, "C44": 39.3, "C55": 24.2, "C66": 40.2}, (4.96, 7.97, 5.74))


def reciprocal_basis(crystal):
    """Reciprocal basis rows (1/Angstrom, with 2 pi) for the test crystals."""
    if crystal is MG:
        a, c = 3.209, 5.211
        A = np.array([[a, 0, 0], [-a / 2, a * np.sqrt(3) / 2, 0], [0, 0, c]])
    else:
        A = np.diag(crystal[2])
    return 2 * np.pi * np.linalg.inv(A).T


def synthetic_harvest(crystal, n_points, rng, hkls=None, counts=2000.0, dq=(0.02, 0.12)):
    """Points around a few Bragg spots with Poisson counts A_s T + B_s (A_s, B_s random per spot)."""
    make, values, _ = crystal
    structure = make()
    C = structure.full_voigt([values[n] for n in structure.free])
    if hkls is None:
        hkls = np.array([[2, 0, 0], [0, 2, 0], [0, 0, 2], [2, 2, 0], [1, 1, 1], [2, 0, 2], [0, 2, 2], [1, 3, 1],
                         [3, 1, 1], [2, 2, 2], [1, 1, 3], [4, 0, 0]])
    hkls = np.asarray(hkls)
    G = hkls @ reciprocal_basis(crystal)
    spot = rng.integers(0, len(hkls), n_points)
    direction = rng.normal(size=(n_points, 3))
    direction /= np.linalg.norm(direction, axis=1)[:, None]
    radius = rng.uniform(*dq, n_points) * np.linalg.norm(G, axis=1).max() / 4
    Q = G[spot] + direction * radius[:, None]
    T = tds_intensity(Q, G[spot], C)
    scale = counts / np.median(T) * rng.uniform(0.5, 2.0, len(hkls))
    base = rng.uniform(1.0, 20.0, len(hkls))
    intensity = rng.poisson(scale[spot] * T + base[spot]).astype(float)
    return dict(Q=Q, intensity=intensity, spot=spot, G=G, hkl=hkls), structure, values
