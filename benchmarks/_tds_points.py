"""Synthetic harvests for the TDS benchmarks: Poisson counts A_s T + B_s around Bragg spots."""

import numpy as np

from difframe.crystal.symmetry import elastic_structure
from difframe.tds.model import tds_intensity

#: name -> (generators, constants [GPa], direct-lattice rows [Angstrom])
CRYSTALS = {
    "MgO": ("1~,4(z),3(111)", {"C11": 297.0, "C12": 95.2, "C44": 155.7}, np.diag([4.212] * 3)),
    "Mg": ("1~,6(z),2(x)", {"C11": 59.40, "C12": 25.61, "C13": 21.44, "C33": 61.60, "C44": 16.40},
           np.array([[3.209, 0, 0], [-3.209 / 2, 3.209 * np.sqrt(3) / 2, 0], [0, 0, 5.211]])),
    "aragonite": ("1~,2(z),2(y)", {"C11": 171.1, "C12": 60.3, "C13": 27.8, "C22": 110.1, "C23": 41.9, "C33": 98.4,
                                   "C44": 39.3, "C55": 24.2, "C66": 40.2}, np.diag([4.96, 7.97, 5.74])),
    "rutile": ("1~,4(z),2(x)", {"C11": 269.0, "C12": 177.0, "C13": 146.0, "C33": 480.0, "C44": 124.0, "C66": 192.0},
               np.diag([4.594, 4.594, 2.959])),
}


def harvest(name, n_points, seed=0, counts=3000.0):
    """(harvest dict, structure, true constants, CGUESS 10 % off with the first constant exact)."""
    generators, values, lattice = CRYSTALS[name]
    rng = np.random.default_rng(seed)
    structure = elastic_structure(generators)
    hkl = np.array([[2, 0, 0], [0, 2, 0], [0, 0, 2], [2, 2, 0], [1, 1, 1], [2, 0, 2], [0, 2, 2], [1, 3, 1],
                    [3, 1, 1], [2, 2, 2], [1, 1, 3], [4, 0, 0], [0, 4, 0], [0, 0, 4], [3, 3, 1], [1, 3, 3]])
    G = hkl @ (2 * np.pi * np.linalg.inv(lattice).T)
    spot = rng.integers(0, len(G), n_points)
    d = rng.normal(size=(n_points, 3))
    radius = rng.uniform(0.02, 0.12, n_points) * np.linalg.norm(G, axis=1).min()
    Q = G[spot] + d / np.linalg.norm(d, axis=1)[:, None] * radius[:, None]
    T = tds_intensity(Q, G[spot], structure.full_voigt(values))
    mean = counts * T / np.median(T) * rng.uniform(0.5, 2.0, len(G))[spot] + rng.uniform(1, 20, len(G))[spot]
    data = {"Q": Q, "intensity": rng.poisson(mean).astype(float), "spot": spot, "G": G, "hkl": hkl}
    cguess = {n: [v if k == 0 else 1.1 * v, 1.0, 2000.0] for k, (n, v) in enumerate(values.items())}
    return data, structure, values, cguess
