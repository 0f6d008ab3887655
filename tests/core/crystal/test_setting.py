"""Elastic tensors between difframe's (Giacovazzo) frame and the IEEE setting: the Bond transformation against
the rank-4 rotation, invariants, analytic rotations and the axes of each kind of cell."""

import numpy as np
import pytest

from difframe.crystal.lattice import Lattice
from difframe.crystal.setting import (bond_matrix, giacovazzo_to_ieee, ieee_axes, ieee_to_giacovazzo, rotate_tensor,
                                      rotate_voigt)
from difframe.crystal.symmetry import elastic_structure, tensor_to_voigt, voigt_to_tensor
from difframe.errors import UsageError

CELLS = {
    "cubic": [4.2, 4.2, 4.2, 90, 90, 90],
    "hexagonal": [4.99, 4.99, 17.06, 90, 90, 120],
    "monoclinic b": [5.0, 7.0, 6.0, 90, 104, 90],
    "monoclinic c": [5.0, 7.0, 6.0, 90, 90, 104],
    "monoclinic a": [5.0, 7.0, 6.0, 104, 90, 90],
    "triclinic": [5.0, 6.0, 6.5, 84, 97, 106],
    "rhombohedral": [6.4, 6.4, 6.4, 46, 46, 46],
}


def random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def random_stiffness(rng):
    """A positive-definite Voigt matrix with every component non-zero."""
    a = rng.normal(size=(6, 6))
    return 20.0 * (a @ a.T) + 100.0 * np.eye(6)


def mandel(c):
    """Kelvin-Mandel form: the Voigt matrix in an orthonormal basis of symmetric tensors (rotations act on it
    as orthogonal 6x6 matrices, so its eigenvalues are invariants)."""
    w = np.array([1, 1, 1, np.sqrt(2), np.sqrt(2), np.sqrt(2)])
    return w[:, None] * c * w[None, :]


def voigt_bulk(c):
    return (c[0, 0] + c[1, 1] + c[2, 2] + 2 * (c[0, 1] + c[0, 2] + c[1, 2])) / 9


def test_bond_matrix_turns_the_voigt_matrix_as_the_rank4_tensor():
    rng = np.random.default_rng(1)
    for _ in range(5):
        r, c = random_rotation(rng), random_stiffness(rng)
        expected = tensor_to_voigt(np.einsum("ip,jq,kr,ls,pqrs->ijkl", r, r, r, r, voigt_to_tensor(c)))
        np.testing.assert_allclose(rotate_voigt(c, r), expected, rtol=1e-12, atol=1e-10)
        np.testing.assert_allclose(tensor_to_voigt(rotate_tensor(voigt_to_tensor(c), r)), expected, atol=1e-10)
        # Bond matrices compose as the rotations do
        s = random_rotation(rng)
        np.testing.assert_allclose(bond_matrix(s @ r), bond_matrix(s) @ bond_matrix(r), atol=1e-12)


@pytest.mark.parametrize("family", sorted(CELLS))
def test_round_trip_and_invariants(family):
    lattice = Lattice(*CELLS[family])
    axes = ieee_axes(lattice)
    np.testing.assert_allclose(axes @ axes.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(axes) == pytest.approx(1.0)  # right-handed
    c = random_stiffness(np.random.default_rng(len(family)))
    ieee = giacovazzo_to_ieee(c, lattice)
    np.testing.assert_allclose(ieee_to_giacovazzo(ieee, lattice), c, rtol=1e-12, atol=1e-10)
    assert voigt_bulk(ieee) == pytest.approx(voigt_bulk(c), rel=1e-12)
    reuss = 1 / np.linalg.inv(c)[:3, :3].sum()
    assert 1 / np.linalg.inv(ieee)[:3, :3].sum() == pytest.approx(reuss, rel=1e-12)
    np.testing.assert_allclose(np.linalg.eigvalsh(mandel(ieee)), np.linalg.eigvalsh(mandel(c)), rtol=1e-12)


def test_quarter_turn_about_z_swaps_x_and_y():
    """New axes x' = y, y' = -x: C11 <-> C22, C13 <-> C23, C44 <-> C55, C16 -> -C26, C14 -> -C25."""
    c = random_stiffness(np.random.default_rng(7))
    r = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    out = rotate_voigt(c, r)
    for (i, j), (k, l), sign in [((0, 0), (1, 1), 1), ((1, 1), (0, 0), 1), ((0, 2), (1, 2), 1), ((3, 3), (4, 4), 1),
                                 ((4, 4), (3, 3), 1), ((2, 2), (2, 2), 1), ((0, 5), (1, 5), -1),
                                 ((0, 3), (1, 4), -1), ((5, 5), (5, 5), 1)]:
        assert out[i, j] == pytest.approx(sign * c[k, l], rel=1e-12), ((i, j), (k, l))


@pytest.mark.parametrize("theta", [10.0, 30.0, 45.0])
def test_trigonal_c14_turns_into_c15_as_sin_3theta(theta):
    """A trigonal (-3m) tensor with its two-fold along x, axes turned by theta about z: C14' = C14 cos 3 theta,
    C15' = C14 sin 3 theta; the transversely isotropic part does not change."""
    structure = elastic_structure("1~,3(z),2(x)")
    c = structure.full_voigt({"C11": 137.0, "C12": 48.2, "C13": 56.8, "C14": -20.0, "C33": 81.1, "C44": 35.0})
    t = np.radians(theta)
    r = np.array([[np.cos(t), np.sin(t), 0.0], [-np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])
    out = rotate_voigt(c, r)
    assert out[0, 3] == pytest.approx(-20.0 * np.cos(3 * t), abs=1e-12)
    assert out[0, 4] == pytest.approx(-20.0 * np.sin(3 * t), abs=1e-12)
    for i, j in [(0, 0), (1, 1), (0, 1), (0, 2), (2, 2), (3, 3), (5, 5)]:
        assert out[i, j] == pytest.approx(c[i, j], rel=1e-12)


def test_axes_of_each_kind_of_cell():
    """Orthogonal and b-unique monoclinic cells: the two settings coincide; hexagonal: X = a, 30 deg from a*;
    c-unique monoclinic: Y along c; triclinic: Z = c and a in the XZ plane; rhombohedral: Z along a+b+c."""
    for family in ("cubic", "monoclinic b"):
        np.testing.assert_allclose(ieee_axes(Lattice(*CELLS[family])), np.eye(3), atol=1e-12)
    hexagonal = Lattice(*CELLS["hexagonal"])
    x = ieee_axes(hexagonal)[0]
    a = hexagonal.direct[:, 0]
    np.testing.assert_allclose(x, a / np.linalg.norm(a), atol=1e-12)
    assert np.degrees(np.arccos(x[0])) == pytest.approx(30.0)
    mono = Lattice(*CELLS["monoclinic c"])
    axes = ieee_axes(mono)
    np.testing.assert_allclose(axes[1], mono.direct[:, 2] / mono.c, atol=1e-12)
    np.testing.assert_allclose(axes[2], mono.direct[:, 0] / mono.a, atol=1e-12)
    tri = Lattice(*CELLS["triclinic"])
    axes = ieee_axes(tri)
    np.testing.assert_allclose(axes[2], [0, 0, 1], atol=1e-12)
    assert abs(axes[1] @ tri.direct[:, 0]) < 1e-12 and axes[0] @ tri.direct[:, 0] > 0
    rho = Lattice(*CELLS["rhombohedral"])
    np.testing.assert_allclose(ieee_axes(rho)[2] * np.linalg.norm(rho.direct.sum(1)), rho.direct.sum(1), atol=1e-9)


def test_structures_in_the_ieee_setting():
    """The same point group stated in each setting: calcite's 2-fold along a gives C14 in IEEE and C15 in
    difframe's frame (tds2el's remark), a c-unique monoclinic cell C15 C25 C35 C46 in IEEE (diad along Y)."""
    hexagonal = Lattice(*CELLS["hexagonal"])
    ieee = elastic_structure("1~,3(z),2(100)", hexagonal.direct, frame=ieee_axes(hexagonal))
    ours = elastic_structure("1~,3(z),2(100)", hexagonal.direct)
    assert "C14" in ieee.free and "C15" in ours.free and "C14" in ours.zero
    values = {"C11": 137.0, "C12": 48.2, "C13": 56.8, "C14": -20.0, "C33": 81.1, "C44": 35.0}
    converted = ours.values_of(ieee_to_giacovazzo(ieee.full_voigt(values), hexagonal))
    assert converted["C15"] == pytest.approx(-20.0) and converted["C11"] == pytest.approx(137.0)
    mono = Lattice(*CELLS["monoclinic c"])
    ieee = elastic_structure("1~,2(z)", mono.direct, frame=ieee_axes(mono))
    assert {"C15", "C25", "C35", "C46"} <= set(ieee.free) and len(ieee.free) == 13
    assert {"C16", "C26", "C36", "C45"} <= set(elastic_structure("1~,2(z)", mono.direct).free)
    with pytest.raises(UsageError, match="breaks the symmetry '1~,2\\(z\\)': C15"):
        elastic_structure("1~,2(z)", mono.direct).values_of(ieee.full_voigt(dict.fromkeys(ieee.free, 1.0)))
    with pytest.raises(UsageError, match="orthogonal"):
        bond_matrix(np.diag([1.0, 2.0, 1.0]))
