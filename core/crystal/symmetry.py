"""Elastic-tensor structure from point-group generators (tds2el's ``ascii_generators``).

A generator string such as ``"1~,4(z),3(111)"`` names point-group operations:

* ``N(axis)``  an N-fold rotation (N in 1, 2, 3, 4, 6) about ``axis``;
* ``N~(axis)`` the rotoinversion (rotation followed by inversion); ``1~`` is the inversion;
* ``m(axis)``  the mirror normal to ``axis`` (the same as ``2~(axis)``).

``axis`` is ``x``, ``y`` or ``z`` (axes of the crystal Cartesian frame: a* along x,
c along z, as :mod:`difframe.crystal.lattice` builds it) or a direct-lattice
direction ``(uvw)`` such as ``(111)``, ``(1-10)`` or ``(1,-1,0)``.

The group is closed by multiplication, the 21 independent Voigt components are
averaged over it (Reynolds operator P = |G|^-1 sum_R R(x)R(x)R(x)R), and the
invariant subspace is reduced to echelon form over the components in the order
C11, C12, ..., C16, C22, ..., C66: the pivots are the free constants, every other
component is a linear relation in them.  Why echelon form: it picks the
conventional free constants (C66 = (C11 - C12)/2 rather than C11 = C12 + 2 C66).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Iterable, Mapping

import numpy as np

from difframe.errors import UsageError

__all__ = ["ElasticStructure", "elastic_structure", "parse_generators", "close_group", "voigt_to_tensor",
           "tensor_to_voigt", "VOIGT_NAMES", "canonical_name"]

TOLERANCE = 1e-6
MAX_GROUP_ORDER = 48  # the largest crystallographic point group, m-3m

#: Voigt index (0..5) -> tensor index pair
VOIGT_PAIRS = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))
#: the 21 independent components in the order used for the echelon form
VOIGT_INDEX = tuple((i, j) for i in range(6) for j in range(i, 6))
VOIGT_NAMES = tuple(f"C{i + 1}{j + 1}" for i, j in VOIGT_INDEX)

_TOKEN = re.compile(r"^(?:(?P<n>[12346])(?P<bar>~)?|(?P<m>m))(?:\((?P<axis>[^)]*)\))?$")


def canonical_name(name: str) -> str:
    """``"A12"``, ``"c21"`` or ``"C12"`` -> ``"C12"``; raises UsageError for anything else."""
    m = re.fullmatch(r"[AaCc]([1-6])([1-6])", str(name).strip())
    if not m:
        raise UsageError(f"{name!r} is not an elastic constant name (expected C11..C66 or A11..A66)")
    i, j = sorted((int(m.group(1)), int(m.group(2))))
    return f"C{i}{j}"


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Active right-handed rotation by ``angle`` [rad] about unit vector ``axis`` (Rodrigues)."""
    x, y, z = axis
    k = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return np.eye(3) + np.sin(angle) * k + (1.0 - np.cos(angle)) * (k @ k)


def _axis(text: str, lattice: np.ndarray, token: str) -> np.ndarray:
    text = text.strip().lower()
    if text in ("x", "y", "z"):
        return np.eye(3)["xyz".index(text)]
    parts = re.findall(r"-?\d", text) if "," not in text and " " not in text else text.replace(",", " ").split()
    try:
        uvw = np.array([float(p) for p in parts])
    except ValueError:
        uvw = np.zeros(0)
    if uvw.shape != (3,) or not np.any(uvw):
        raise UsageError(f"ascii_generators: cannot read the axis of {token!r} (expected x, y, z or (uvw) like (111))")
    direction = lattice @ uvw
    return direction / np.linalg.norm(direction)


def parse_generators(generators: str, lattice: np.ndarray | None = None) -> list[np.ndarray]:
    """The 3x3 Cartesian matrices of the operations named in ``generators``.

    ``lattice`` holds the direct-lattice vectors a, b, c as columns in the crystal
    Cartesian frame (identity, i.e. a cubic cell, when None); it turns ``(uvw)``
    into a Cartesian axis.
    """
    lattice = np.eye(3) if lattice is None else np.asarray(lattice, dtype=float)
    if not isinstance(generators, str) or not generators.strip():
        raise UsageError("ascii_generators is empty: give generators such as \"1~,2(z),2(y)\"")
    ops = []
    for token in _split(generators):
        m = _TOKEN.match(token.replace(" ", ""))
        if not m:
            raise UsageError(f"ascii_generators: {token!r} is not a generator (expected N(axis), N~(axis), m(axis) "
                             "or 1~, N in 1,2,3,4,6)")
        if m.group("m"):
            order, bar = 2, True
        else:
            order, bar = int(m.group("n")), bool(m.group("bar"))
        if m.group("axis") is None:
            if order != 1:
                raise UsageError(f"ascii_generators: {token!r} needs an axis, e.g. {order}(z)")
            op = np.eye(3)
        else:
            op = _rotation(_axis(m.group("axis"), lattice, token), 2.0 * np.pi / order)
        ops.append(-op if bar else op)
    return ops


def _maps_lattice(op: np.ndarray, lattice: np.ndarray) -> bool:
    """Whether a Cartesian operation maps the lattice (direct vectors as columns) onto itself."""
    m = np.linalg.solve(lattice, op @ lattice)
    return bool(np.abs(m - np.rint(m)).max() < 1e-4)


def check_cell(generators: str, cell: tuple) -> None:
    """Refuse a cell (a, b, c, alpha, beta, gamma) that a generator does not map onto itself, naming both.

    Why: a monoclinic 2(y) with alpha or gamma off 90 deg gives an elastic tensor for a symmetry the
    crystal lacks, and everything downstream silently follows it.
    """
    from difframe.crystal.lattice import Lattice

    direct = Lattice(*cell).direct
    for token, op in zip(_split(generators), parse_generators(generators, direct)):
        if _maps_lattice(op, direct):
            continue
        culprit = ""
        for k, name in ((3, "alpha"), (4, "beta"), (5, "gamma")):
            for angle in (90.0, 120.0, 60.0):  # the angle that, changed alone, makes the generator fit
                trial = list(cell)
                trial[k] = angle
                try:
                    fixed = Lattice(*trial).direct
                except Exception:  # an impossible cell: not the fix
                    continue
                if _maps_lattice(parse_generators(token, fixed)[0], fixed):
                    culprit = f": it needs {name} = {angle:g} deg, the cell has {name} = {cell[k]:g} deg"
                    break
            if culprit:
                break
        raise UsageError(f"ascii_generators {generators!r}: {token} does not map the cell a, b, c = "
                         f"{cell[0]:g}, {cell[1]:g}, {cell[2]:g} Angstrom, alpha, beta, gamma = {cell[3]:g}, "
                         f"{cell[4]:g}, {cell[5]:g} deg onto itself{culprit} (axes: a* along x, c along z)")


def _split(text: str) -> list[str]:
    """Split at commas that are not inside parentheses."""
    tokens, depth, current = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            tokens.append(current.strip())
            current = ""
        else:
            current += ch
    tokens.append(current.strip())
    if any(not t for t in tokens):
        raise UsageError(f"ascii_generators: empty entry in {text!r}")
    return tokens


def close_group(generators: Iterable[np.ndarray]) -> np.ndarray:
    """All products of ``generators``: (order, 3, 3); UsageError if not a crystallographic point group."""

    def key(m: np.ndarray) -> tuple:
        return tuple(np.round(m, 5).ravel() + 0.0)  # + 0.0 turns -0.0 into 0.0

    gens = [np.asarray(g, dtype=float) for g in generators]
    group = {key(np.eye(3)): np.eye(3)}
    queue = [np.eye(3)]
    while queue:  # breadth-first: every element times every generator
        element = queue.pop()
        for g in gens:
            product = g @ element
            k = key(product)
            if k not in group:
                group[k] = product
                queue.append(product)
        if len(group) > MAX_GROUP_ORDER:
            raise UsageError("ascii_generators do not generate a crystallographic point group (more than "
                             f"{MAX_GROUP_ORDER} operations): check the axes against the cell")
    return np.array(list(group.values()))


def voigt_to_tensor(c: np.ndarray) -> np.ndarray:
    """(..., 6, 6) Voigt matrices -> (..., 3, 3, 3, 3) stiffness tensors."""
    c = np.asarray(c, dtype=float)
    t = np.empty(c.shape[:-2] + (3, 3, 3, 3))
    for a, (i, j) in enumerate(VOIGT_PAIRS):
        for b, (k, l) in enumerate(VOIGT_PAIRS):
            v = c[..., a, b]
            for p, q in {(i, j), (j, i)}:
                for r, s in {(k, l), (l, k)}:
                    t[..., p, q, r, s] = v
    return t


def tensor_to_voigt(t: np.ndarray) -> np.ndarray:
    """(..., 3, 3, 3, 3) stiffness tensors -> (..., 6, 6) Voigt matrices."""
    t = np.asarray(t)
    c = np.empty(t.shape[:-4] + (6, 6))
    for a, (i, j) in enumerate(VOIGT_PAIRS):
        for b, (k, l) in enumerate(VOIGT_PAIRS):
            c[..., a, b] = t[..., i, j, k, l]
    return c


def _vector_to_voigt(v: np.ndarray) -> np.ndarray:
    """(..., 21) upper-triangle components -> symmetric (..., 6, 6)."""
    c = np.zeros(v.shape[:-1] + (6, 6))
    for n, (i, j) in enumerate(VOIGT_INDEX):
        c[..., i, j] = c[..., j, i] = v[..., n]
    return c


def _voigt_to_vector(c: np.ndarray) -> np.ndarray:
    return np.stack([c[..., i, j] for i, j in VOIGT_INDEX], axis=-1)


def _echelon(rows: np.ndarray, tol: float) -> tuple[np.ndarray, list[int]]:
    """Reduced row echelon form (partial pivoting); returns (nonzero rows, pivot columns)."""
    m = rows.copy()
    pivots: list[int] = []
    r = 0
    for col in range(m.shape[1]):
        if r == m.shape[0]:
            break
        best = r + int(np.argmax(np.abs(m[r:, col])))
        if abs(m[best, col]) <= tol:
            continue
        m[[r, best]] = m[[best, r]]
        m[r] /= m[r, col]
        others = np.arange(m.shape[0]) != r
        m[others] -= np.outer(m[others, col], m[r])
        pivots.append(col)
        r += 1
    m = m[:r]
    m[np.abs(m) <= tol] = 0.0
    return _snap(m, tol), pivots


def _snap(values: np.ndarray, tol: float) -> np.ndarray:
    """Replace entries within ``tol`` of a fraction with denominator <= 12 by that fraction (exact 1, -1/2 ...)."""
    out = values.copy()
    for idx, v in np.ndenumerate(values):
        f = float(Fraction(float(v)).limit_denominator(12))
        if abs(f - v) <= tol:
            out[idx] = f
    return out


def _format_combination(terms: list[tuple[float, str]]) -> str:
    """``[(0.5, "C11"), (-0.5, "C12")]`` -> ``"(C11 - C12)/2"``; ``[(-1, "C14")]`` -> ``"-C14"``."""
    fracs = [Fraction(c).limit_denominator(12) for c, _ in terms]
    if all(abs(float(f) - c) < TOLERANCE for f, (c, _) in zip(fracs, terms)):
        den = int(np.lcm.reduce([f.denominator for f in fracs]))
        parts = []
        for f, (_, name) in zip(fracs, terms):
            n = int(f * den)
            mag = "" if abs(n) == 1 else f"{abs(n)}*"
            sign = "-" if n < 0 else "+"
            parts.append((sign, mag + name))
        text = ("-" if parts[0][0] == "-" else "") + parts[0][1]
        text += "".join(f" {s} {t}" for s, t in parts[1:])
        return text if den == 1 else f"({text})/{den}"
    text = " + ".join(f"{c:.6g}*{name}" for c, name in terms)
    return text.replace("+ -", "- ")


@dataclass(frozen=True)
class ElasticStructure:
    """The elastic tensor allowed by a point group.

    ``free`` names the independent constants (C11 ...), ``basis[i]`` is the Voigt
    matrix multiplying ``free[i]`` (C = sum_i p_i basis[i]), ``relations`` maps every
    other non-zero component to an expression in the free ones, ``zero`` lists the
    components the symmetry forces to zero.
    """

    generators: str
    free: list[str]
    basis: np.ndarray
    relations: dict[str, str]
    zero: list[str]
    order: int
    coefficients: np.ndarray = field(repr=False)  # (n_free, 21) echelon rows

    def table(self) -> str:
        """The 6x6 table tds2el prints in its dry run ("1.000000 A11 | ...")."""
        cells = [["" for _ in range(6)] for _ in range(6)]
        for i in range(6):
            for j in range(6):
                n = VOIGT_INDEX.index((min(i, j), max(i, j)))
                terms = [f"{c:f} A{name[1:]}" for c, name in zip(self.coefficients[:, n], self.free) if c != 0.0]
                cells[i][j] = " ".join(terms)
        width = max(12, max(len(c) for row in cells for c in row))
        return "\n".join(" " + " | ".join(c.ljust(width) for c in row).rstrip() for row in cells)

    def to_json(self) -> dict:
        """``{"free": [...], "relations": {...}}`` for ``difframe tds structure --json``."""
        return {"free": list(self.free), "relations": dict(self.relations)}

    def check_constants(self, names: Iterable[str], source: str = "CGUESS") -> list[str]:
        """Canonical names of ``names``; UsageError naming the first that is not free."""
        out = []
        for name in names:
            c = canonical_name(name)
            if c in self.relations:
                raise UsageError(f"{source} names {name}, which is not free under {self.generators!r}: "
                                 f"{c} = {self.relations[c]}; give {', '.join(self.free)}")
            if c in self.zero:
                raise UsageError(f"{source} names {name}, which the symmetry {self.generators!r} forces to zero; "
                                 f"the free constants are {', '.join(self.free)}")
            out.append(c)
        return out

    def full_voigt(self, values: Mapping[str, float]) -> np.ndarray:
        """The (6, 6) Voigt matrix from values of the free constants (names C.. or A..)."""
        given = dict(zip(self.check_constants(values, source="the constants"), values.values()))
        missing = [n for n in self.free if n not in given]
        if missing:
            raise UsageError(f"no value for the free constant(s) {', '.join(missing)} of {self.generators!r}")
        p = np.array([float(given[n]) for n in self.free])
        return np.tensordot(p, self.basis, axes=1)

    def values_of(self, c_voigt: np.ndarray, source: str = "the elastic tensor") -> dict[str, float]:
        """The free constants of a (6, 6) Voigt matrix this symmetry allows (the echelon pivots are its
        components); UsageError naming the worst component when the matrix breaks the symmetry."""
        c = np.asarray(c_voigt, dtype=float)
        values = {name: float(c[int(name[1]) - 1, int(name[2]) - 1]) for name in self.free}
        rebuilt = np.tensordot(np.array(list(values.values())), self.basis, axes=1)
        error = np.abs(rebuilt - c)
        if error.max() > 1e-9 * max(1.0, np.abs(c).max()):
            i, j = np.unravel_index(error.argmax(), error.shape)
            raise UsageError(f"{source} breaks the symmetry {self.generators!r}: C{min(i, j) + 1}{max(i, j) + 1} = "
                             f"{c[i, j]:.6g} where the free constants give {rebuilt[i, j]:.6g}")
        return values


def elastic_structure(generators: str, metric: np.ndarray | None = None,
                      frame: np.ndarray | None = None) -> ElasticStructure:
    """Free constants, basis and relations of the elastic tensor for ``generators``.

    ``metric`` is the (3, 3) matrix whose columns are the direct-lattice vectors
    a, b, c in the crystal Cartesian frame (``Lattice.direct``); it is needed only
    for axes given as lattice directions, and None means a cubic cell.
    ``frame`` (a rotation R, v' = R v) states the structure in another Cartesian
    setting, e.g. IEEE's (:func:`difframe.crystal.setting.ieee_axes`); the generators
    are still read in the crystal frame.
    """
    group = close_group(parse_generators(generators, metric))
    if frame is not None:
        group = np.einsum("ia,gab,jb->gij", frame, group, frame)
    basis_vectors = np.eye(21)
    tensors = voigt_to_tensor(_vector_to_voigt(basis_vectors))  # (21, 3,3,3,3)
    pair = np.einsum("gia,gjb->gijab", group, group).reshape(len(group), 9, 9)  # R (x) R on index pairs
    flat = tensors.reshape(21, 9, 9)
    averaged = np.einsum("gpa,nab,gqb->npq", pair, flat, pair).reshape(21, 3, 3, 3, 3) / len(group)
    projector = _voigt_to_vector(tensor_to_voigt(averaged))  # (21 inputs, 21 components)
    rows, pivots = _echelon(projector, TOLERANCE)
    free = [VOIGT_NAMES[p] for p in pivots]
    relations, zero = {}, []
    for n, name in enumerate(VOIGT_NAMES):
        if n in pivots:
            continue
        terms = [(float(rows[r, n]), free[r]) for r in range(len(free)) if rows[r, n] != 0.0]
        if terms:
            relations[name] = _format_combination(terms)
        else:
            zero.append(name)
    return ElasticStructure(generators=generators, free=free, basis=_vector_to_voigt(rows), relations=relations,
                            zero=zero, order=len(group), coefficients=rows)
