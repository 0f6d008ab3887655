"""Elastic-tensor structure from generators, against the Laue-class table of TDS.md (the oracle)."""

import numpy as np
import pytest

from difframe.crystal.symmetry import (
    close_group,
    elastic_structure,
    parse_generators,
    tensor_to_voigt,
    voigt_to_tensor,
)
from difframe.errors import UsageError

# Laue class -> (generators, free constants, some relations) as TDS.md section 3 tabulates them
ORACLE = {
    "-1": ("1~", 21, None, {}),
    "2/m": ("1~,2(y)", 13, None, {}),
    "mmm": ("1~,2(z),2(y)", 9, ["C11", "C12", "C13", "C22", "C23", "C33", "C44", "C55", "C66"], {}),
    "4/m": ("1~,4(z)", 7, ["C11", "C12", "C13", "C16", "C33", "C44", "C66"], {"C26": "-C16"}),
    "4/mmm": ("1~,4(z),2(x)", 6, ["C11", "C12", "C13", "C33", "C44", "C66"], {}),
    "-3": ("1~,3(z)", 7, ["C11", "C12", "C13", "C14", "C15", "C33", "C44"], {}),
    "-3m": ("1~,3(z),2(x)", 6, ["C11", "C12", "C13", "C14", "C33", "C44"],
            {"C24": "-C14", "C56": "C14", "C66": "(C11 - C12)/2"}),
    "6/m": ("1~,6(z)", 5, ["C11", "C12", "C13", "C33", "C44"], {"C66": "(C11 - C12)/2"}),
    "6/mmm": ("1~,6(z),2(x)", 5, ["C11", "C12", "C13", "C33", "C44"], {"C66": "(C11 - C12)/2"}),
    "m-3": ("1~,2(z),3(111)", 3, ["C11", "C12", "C44"], {"C22": "C11", "C13": "C12", "C66": "C44"}),
    "m-3m": ("1~,4(z),3(111)", 3, ["C11", "C12", "C44"], {"C33": "C11", "C23": "C12", "C55": "C44"}),
}
GROUP_ORDERS = {"1~": 2, "1~,2(y)": 4, "1~,2(z),2(y)": 8, "1~,4(z)": 8, "1~,4(z),2(x)": 16, "1~,3(z)": 6,
                "1~,3(z),2(x)": 12, "1~,6(z)": 12, "1~,6(z),2(x)": 24, "1~,2(z),3(111)": 24, "1~,4(z),3(111)": 48}


def _invariant(c, group):
    t = voigt_to_tensor(c)
    for r in group:
        rotated = np.einsum("ia,jb,kc,ld,abcd->ijkl", r, r, r, r, t)
        if not np.allclose(rotated, t, atol=1e-9):
            return False
    return True


@pytest.mark.parametrize("laue", sorted(ORACLE))
def test_laue_class_free_constants(laue):
    generators, n_free, free, relations = ORACLE[laue]
    s = elastic_structure(generators)
    assert len(s.free) == n_free
    if free is not None:
        assert s.free == free
    for name, expr in relations.items():
        assert s.relations[name] == expr
    assert s.order == GROUP_ORDERS[generators]
    group = close_group(parse_generators(generators))
    # every basis matrix is symmetric and invariant under the whole group (independent check)
    for b in s.basis:
        assert np.allclose(b, b.T)
        assert _invariant(b, group)


def test_projection_of_random_tensor_matches_basis_span():
    """A random tensor averaged over the cubic group lies in the span of the basis."""
    rng = np.random.default_rng(0)
    c = rng.normal(size=(6, 6))
    c = c + c.T
    group = close_group(parse_generators("1~,4(z),3(111)"))
    t = voigt_to_tensor(c)
    avg = np.mean([np.einsum("ia,jb,kc,ld,abcd->ijkl", r, r, r, r, t) for r in group], axis=0)
    avg_voigt = tensor_to_voigt(avg)
    s = elastic_structure("1~,4(z),3(111)")
    values = {"C11": avg_voigt[0, 0], "C12": avg_voigt[0, 1], "C44": avg_voigt[3, 3]}
    assert np.allclose(s.full_voigt(values), avg_voigt, atol=1e-12)


def test_full_voigt_mgo_and_relations_evaluate():
    s = elastic_structure("1~,4(z),3(111)")
    c = s.full_voigt({"A11": 297.0, "A12": 95.2, "A44": 155.7})
    expected = np.zeros((6, 6))
    expected[:3, :3] = 95.2
    np.fill_diagonal(expected[:3, :3], 297.0)
    expected[3, 3] = expected[4, 4] = expected[5, 5] = 155.7
    assert np.array_equal(c, expected)
    hexa = elastic_structure("1~,6(z),2(x)")
    c = hexa.full_voigt({"C11": 59.4, "C12": 25.61, "C13": 21.44, "C33": 61.6, "C44": 16.4})
    assert c[5, 5] == pytest.approx((59.4 - 25.61) / 2)
    assert c[1, 1] == 59.4 and c[1, 2] == 21.44 and c[4, 4] == 16.4


def test_voigt_tensor_round_trip():
    rng = np.random.default_rng(1)
    c = rng.normal(size=(6, 6))
    c = c + c.T
    t = voigt_to_tensor(c)
    assert np.allclose(t, t.transpose(1, 0, 2, 3)) and np.allclose(t, t.transpose(2, 3, 0, 1))
    assert np.array_equal(tensor_to_voigt(t), c)


def test_hexagonal_lattice_directions():
    """2-fold axes about lattice directions (100) and (1-10) of a hexagonal cell give 6/mmm."""
    a, c = 3.21, 5.21
    lattice = np.array([[a * np.sqrt(3) / 2, 0, 0], [-a / 2, a, 0], [0, 0, c]]).T  # a* along x
    s = elastic_structure("1~,6(z),2(010)", metric=lattice)
    assert s.free == ["C11", "C12", "C13", "C33", "C44"]
    s = elastic_structure("1~,3(001),2(1-10)", metric=lattice)
    assert len(s.free) == 6
    s2 = elastic_structure("1~,3(z),2(1,-1,0)", metric=lattice)
    assert s2.free == s.free and s2.relations == s.relations


def test_mirror_equals_rotoinversion_and_table_format():
    assert elastic_structure("m(z),2(y)").free == elastic_structure("2~(z),2(y)").free
    table = elastic_structure("1~,2(z),2(y)").table().splitlines()
    assert len(table) == 6
    assert table[0].split("|")[0].strip() == "1.000000 A11"
    assert table[1].split("|")[1].strip() == "1.000000 A22"
    assert table[3].split("|")[0].strip() == ""
    hexa = elastic_structure("1~,6(z),2(x)").table().splitlines()
    assert hexa[5].split("|")[5].strip() == "0.500000 A11 -0.500000 A12"
    assert elastic_structure("1~,3(z),2(x)").to_json() == {
        "free": ["C11", "C12", "C13", "C14", "C33", "C44"],
        "relations": {"C22": "C11", "C23": "C13", "C24": "-C14", "C55": "C44", "C56": "C14", "C66": "(C11 - C12)/2"},
    }


def test_cguess_checks_name_the_constant():
    s = elastic_structure("1~,4(z),3(111)")
    assert s.check_constants(["A11", "C21", "c44"]) == ["C11", "C12", "C44"]
    with pytest.raises(UsageError, match="C14.*zero"):
        s.check_constants(["A11", "C14"])
    with pytest.raises(UsageError, match="A22.*not free.*C22 = C11"):
        s.check_constants(["A22"])
    with pytest.raises(UsageError, match="B11"):
        s.check_constants(["B11"])
    with pytest.raises(UsageError, match="C44"):
        s.full_voigt({"C11": 1.0, "C12": 0.5})


@pytest.mark.parametrize("bad, culprit", [("", "empty"), ("1~,5(z)", "5\\(z\\)"), ("2", "needs an axis"),
                                          ("2(q)", "axis of '2\\(q\\)'"), ("1~,,2(z)", "empty entry"),
                                          ("3(x),4(z)", "crystallographic")])
def test_bad_generators(bad, culprit):
    with pytest.raises(UsageError, match=culprit):
        elastic_structure(bad)


@pytest.mark.parametrize("generators, cell, message", [
    ("1~,2(y)", (5, 7, 6, 95, 104, 90), "2\\(y\\) .* needs alpha = 90 deg, the cell has alpha = 95 deg"),
    ("1~,2(y)", (5, 7, 6, 90, 104, 93), "2\\(y\\) .* needs gamma = 90 deg, the cell has gamma = 93 deg"),
    ("1~,6(z),2(x)", (3.2, 3.2, 5.2, 90, 90, 90), "6\\(z\\) .* needs gamma = 120 deg"),
])
def test_cell_contradicting_a_generator_names_both(generators, cell, message):
    from difframe.crystal.symmetry import check_cell

    with pytest.raises(UsageError, match=message):
        check_cell(generators, cell)


def test_cells_that_fit_their_generators_pass():
    from difframe.crystal.symmetry import check_cell

    for generators, cell in (("1~,2(y)", (5, 7, 6, 90, 104, 90)), ("1~,6(z),2(x)", (3.2, 3.2, 5.2, 90, 90, 120)),
                             ("1~,3(z),2(x)", (4.99, 4.99, 17.06, 90, 90, 120)), ("1~", (5, 6, 7, 80, 95, 100)),
                             ("1~,4(z),3(111)", (4.2, 4.2, 4.2, 90, 90, 90))):
        check_cell(generators, cell)
