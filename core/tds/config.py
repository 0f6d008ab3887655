"""Read tds2el's input.par and the conf_file it names into one ``tds`` subtree mapping.

Both files go through the whitelisting interpreter :mod:`difframe.tds.parfile`.
The conf_file is read first and input.par overrides it.  Relative paths are taken
relative to the folder of input.par (where tds2el was run).  Geometry names go to
``geometry``; ``minimiser.Variable`` values become ``[value, min, max]`` lists;
tds2el's 0/1 flags become the booleans or integers the tree expects.  Names the
tree does not know (alignment-only settings, helper variables) are logged and
dropped, except a name in input.par close to an option's (a typo), which is an error
with a did-you-mean.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from difframe.crystal.geometry import A_VARIABLE_NAMES, GEOMETRY_FIELDS, Geometry
from difframe.crystal.lattice import Lattice
from difframe.crystal.symmetry import elastic_structure
from difframe.errors import UsageError
from difframe.tds.parfile import Variable, read_parfile, short_repr
from difframe.tds.tree import NODES

__all__ = ["read_tds_config", "to_tds_mapping", "geometry_of", "PATH_OPTIONS"]

log = logging.getLogger("difframe.tds.config")

#: options holding file names, resolved relative to input.par
PATH_OPTIONS = ("conf_file", "filter_file", "images_prefix", "normalisation_file", "load_from_file", "save_to_file",
                "centering_file", "file_maxima", "output_directory")


def read_tds_config(input_par: str | Path) -> dict[str, Any]:
    """The ``tds`` subtree (a plain mapping, not yet validated) described by ``input_par``."""
    input_par = Path(input_par)
    base = input_par.resolve().parent
    main = read_parfile(input_par)
    _refuse_near_misses(main, input_par)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    conf = main.get("conf_file")
    if conf is not None:
        if not isinstance(conf, str):
            raise UsageError(f"{input_par}: conf_file = {short_repr(conf)} must be a file name")
        values.update(read_parfile(base / conf))
        sources = dict.fromkeys(values, str(input_par.parent / conf))  # as the user would name it
    for key, value in main.items():
        if key in values and values[key] != value:
            log.warning("%s sets %s = %s over %s from %s", input_par, key, short_repr(value), short_repr(values[key]),
                        sources[key])
        values[key] = value
        sources[key] = str(input_par)
    mapping = to_tds_mapping(values, sources)
    for key in PATH_OPTIONS:
        if isinstance(mapping.get(key), str):
            mapping[key] = str(base / mapping[key])
    mapping.setdefault("output_directory", str(base))
    return mapping


def _allowed_edits(option: str) -> int:
    """Edits a typo of ``option`` may have: two for long names, one for 3-5 letters, none (case only) below."""
    return 2 if len(option) >= 6 else 1 if len(option) >= 3 else 0


def _edits(a: str, b: str, limit: int) -> int:
    """Levenshtein distance of ``a`` and ``b``, or ``limit + 1`` once it is certain to exceed ``limit``."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        row = [i]
        for j, cb in enumerate(b, 1):
            row.append(min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (ca != cb)))
        if min(row) > limit:
            return limit + 1
        previous = row
    return previous[-1]


def known_names() -> set[str]:
    """Every name input.par may set: the tds options and the geometry names."""
    return set(GEOMETRY_FIELDS) | {key[4:] for key in NODES if key.startswith("tds.") and key.count(".") == 1}


def did_you_mean(name: str, known: set[str]) -> str | None:
    """The option ``name`` is a typo of (case ignored, see :func:`_allowed_edits`), or None."""
    best = None, 3
    for option in sorted(known):
        limit = _allowed_edits(option)
        distance = _edits(name.lower(), option.lower(), limit)
        if distance <= limit and distance < best[1]:
            best = option, distance
    return best[0]


def _refuse_near_misses(main, input_par: Path) -> None:
    """An unknown name of input.par close to an option is a typo: an error naming the line and the option.

    Other unknown names stay warnings (tds2el files use helper variables).
    """
    known = known_names()
    for name in main:
        if name in known:
            continue
        option = did_you_mean(name, known)
        if option is not None:
            raise UsageError(f"{input_par}, line {main.lines.get(name, '?')}: {short_repr(name)} is not a tds option; "
                             f"did you mean {option!r}?")


def to_tds_mapping(values: Mapping[str, Any], sources: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Sort tds2el names into the ``tds`` subtree: options, ``geometry``, conversions and checks."""
    sources = sources or {}
    out: dict[str, Any] = {}
    geometry: dict[str, Any] = {}
    dropped = []
    for key, value in values.items():
        where = sources.get(key, "parameters")
        if key in GEOMETRY_FIELDS:
            geometry[key] = value
        elif f"tds.{key}" in NODES:
            out[key] = _convert(key, value, where)
        else:
            dropped.append(key)
    if dropped:
        shown = ", ".join(name if len(name) <= 40 else name[:40] + "..." for name in dropped[:20])
        more = f" and {len(dropped) - 20} more" if len(dropped) > 20 else ""
        log.warning("ignored (not tds options): %s%s", shown, more)
    if geometry:
        out["geometry"] = geometry
    _check_cguess(out, geometry, sources.get("CGUESS", "parameters"))
    return out


def _convert(key: str, value: Any, where: str) -> Any:
    types = NODES[f"tds.{key}"].type
    types = types if isinstance(types, tuple) else (types,)
    if "bool" in types and isinstance(value, int) and not isinstance(value, bool) and value in (0, 1):
        return bool(value)
    if "int" in types and isinstance(value, bool):
        return int(value)
    if key == "A_variables" and value is not None:
        return _a_variables(value, where)
    if key == "CGUESS" and value is not None:
        return _cguess(value, where)
    return value


def _a_variables(value: Any, where: str) -> list[list[float]]:
    if not isinstance(value, (list, tuple)) or len(value) != len(A_VARIABLE_NAMES):
        n = len(value) if isinstance(value, (list, tuple)) else "no"
        raise UsageError(f"{where}: A_variables has {n} entries, expected {len(A_VARIABLE_NAMES)} "
                         f"minimiser.Variable(value, min, max) for {', '.join(A_VARIABLE_NAMES)}")
    out = []
    for name, item in zip(A_VARIABLE_NAMES, value):
        if isinstance(item, Variable):
            out.append(item.as_list())
        elif _is_triple(item):
            out.append([float(v) for v in item])
        else:
            raise UsageError(f"{where}: A_variables entry for {name} is {short_repr(item)}, not "
                             "minimiser.Variable(value, min, max)")
    return out


def _cguess(value: Any, where: str) -> dict[str, list[float]]:
    if not isinstance(value, Mapping):
        raise UsageError(f"{where}: CGUESS must be a dict {{'A11': [value, min, max], ...}}, got {short_repr(value)}")
    out = {}
    for name, item in value.items():
        if isinstance(item, Variable):
            item = item.as_list()
        if not _is_triple(item):
            raise UsageError(f"{where}: CGUESS[{short_repr(name)}] = {short_repr(item)}: expected [value, min, max]")
        v, lo, hi = (float(x) for x in item)
        if not lo <= v <= hi:
            raise UsageError(f"{where}: CGUESS[{short_repr(name)}]: value {v} lies outside [{lo}, {hi}]")
        out[str(name)] = [v, lo, hi]
    return out


def _is_triple(item: Any) -> bool:
    return isinstance(item, (list, tuple)) and len(item) == 3 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in item)


def _check_cguess(out: Mapping[str, Any], geometry: Mapping[str, Any], where: str) -> None:
    """A CGUESS naming a constant the symmetry does not leave free fails here, naming it."""
    if not out.get("CGUESS") or not out.get("ascii_generators"):
        return
    lattice = None
    if all(geometry.get(n) is not None for n in ("AA", "BB", "CC")):
        cell = [float(geometry.get(n, 90.0)) for n in ("AA", "BB", "CC", "aAA", "aBB", "aCC")]
        lattice = Lattice(*cell).direct
    elastic_structure(out["ascii_generators"], lattice).check_constants(out["CGUESS"], source=f"{where}: CGUESS")


def geometry_of(mapping: Mapping[str, Any], where: str = "tds.geometry") -> Geometry:
    """The :class:`Geometry` of a (resolved or raw) ``tds`` subtree."""
    return Geometry.from_mapping(dict(mapping.get("geometry") or {}), source=where)
