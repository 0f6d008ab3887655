"""The parameter tree: nodes from the core and the plugins, validation, sources.

The tree is a flat mapping ``dotted.path -> Node``.  Core nodes come from
:mod:`difframe.reftree` (ptychography, the reference contract) and
:mod:`difframe.tds.tree`; each plugin mounts its schema where
:data:`difframe.types.MOUNT_POINTS` says.  Two containers hold labelled copies:

* ``scans.<label>`` is a whole ``scan`` subtree; values come from the defaults,
  then the user's ``scan``, then the user's ``scans.<label>``;
* ``engines.<label>`` holds ``name`` plus ``engine.common`` and the named
  engine's own ``engine.<name>`` parameters, flattened; values come from the
  defaults, the user's ``engine.common`` and ``engine.<name>``, then the label.

Limits are inclusive.  ``None`` is accepted wherever the default is ``None`` or
the node's types include ``NoneType``; there the string ``"None"`` means None too
(TOML has no null), unless the node takes ``"None"`` as a value of its own (free
text such as a run name).  Choices restrict string values.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from difframe.errors import ParameterError, UsageError
from difframe.param import Param, deep_merge
from difframe.types import MOUNT_POINTS, Parameter

SCAN_WILDCARD = "scans.scan_%d"
ENGINE_WILDCARD = "engines.engine_%d"

#: nodes whose allowed string values are the names registered for a kind
DYNAMIC_CHOICES = {
    "scan.xy.type": "scan_pattern",
    "scan.data.source": "recipe",
    "scan.illumination.model": "illumination_model",
    "scan.sample.model": "sample_model",
    "scan.data.simulation.detector": "detector_template",
}

_PY_TYPE_NAMES = {int: "int", float: "float", str: "str", bool: "bool", tuple: "tuple", list: "list",
                  dict: "Param", complex: "complex", type(None): "NoneType"}
_CONTAINER_TYPES = {"Param", "ext", "scan", "engine"}
#: how None is written where the format has no null (TOML files, strings from anywhere)
NONE_TEXT = "None"


@dataclass
class Node:
    """One documented, validated parameter."""

    path: str
    types: tuple[str, ...]
    default: Any = None
    help: str = ""
    doc: str = ""
    lowlim: float | None = None
    uplim: float | None = None
    choices: tuple | None = None
    owner: str = "core"
    kind: str | None = None  # plugin kind whose names (and aliases) are the allowed values
    sparse: bool = False  # an override table: only what is given is kept, no defaults filled in

    @property
    def is_container(self) -> bool:
        return bool(_CONTAINER_TYPES.intersection(self.types))

    @property
    def allows_none(self) -> bool:
        return self.default is None or "NoneType" in self.types

    def as_json(self) -> dict:
        return {
            "type": list(self.types),
            "default": _jsonable(self.default),
            "lowlim": self.lowlim,
            "uplim": self.uplim,
            "choices": None if self.choices is None else [_jsonable(c) for c in self.choices],
            "help": self.help,
            "doc": self.doc,
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, complex):
        return str(value)
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def _type_names(spec_type: Any) -> tuple[str, ...]:
    items = spec_type if isinstance(spec_type, (tuple, list)) else (spec_type,)
    names = []
    for item in items:
        if isinstance(item, str):
            names.append(item)
        elif item in _PY_TYPE_NAMES:
            names.append(_PY_TYPE_NAMES[item])
        elif getattr(item, "__name__", "") == "ndarray":
            names.append("ndarray")
        else:
            raise TypeError(f"unsupported parameter type {item!r}")
    return tuple(names)


def schema_to_nodes(prefix: str, schema: Mapping[str, Any], owner: str) -> list[Node]:
    """Turn a plugin schema (tuples or :class:`Parameter`) into nodes under ``prefix``."""
    nodes = []
    for key, entry in schema.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(entry, Parameter):
            nodes.append(
                Node(path, _type_names(entry.type), entry.default, entry.help, entry.doc,
                     entry.lowlim, entry.uplim, tuple(entry.choices) if entry.choices else None, owner)
            )
        elif isinstance(entry, tuple) and len(entry) == 3:
            type_, default, help_ = entry
            nodes.append(Node(path, _type_names(type_), default, help_, "", owner=owner))
        else:
            raise TypeError(f"parameter {path!r}: expected (type, default, help) or Parameter, got {entry!r}")
    return nodes


class ParamTree:
    """All parameter nodes known to one run, and the rules to resolve a tree."""

    def __init__(self, nodes: Iterable[Node], plugins=None) -> None:
        self.nodes: dict[str, Node] = {}
        self._plugins = plugins  # resolves plugin names (aliases, any case) when given
        for node in nodes:
            self.add(node)

    def add(self, node: Node) -> None:
        if node.path in self.nodes:
            other = self.nodes[node.path]
            raise UsageError(f"parameter {node.path!r} is declared by both {other.owner} and {node.owner}")
        parent = node.path.rpartition(".")[0]
        if parent and parent not in self.nodes:
            self.add(Node(parent, ("Param",), None, f"Parameters of {parent.rpartition('.')[2]}", owner=node.owner))
        self.nodes[node.path] = node

    # -- construction ----------------------------------------------------------

    @classmethod
    def build(cls, plugins=None) -> "ParamTree":
        """The core tree plus every active plugin's subtree (plugins: a PluginManager)."""
        from difframe import reftree
        from difframe.ptycho import terms
        from difframe.tds import tree as tds_tree

        tree = cls(schema_to_nodes("", {**reftree.NODES, **terms.NODES, **tds_tree.NODES}, "core"))
        tree.add(Node(f"{ENGINE_WILDCARD}.name", ("str",), None, "Name of the engine plugin (DM, ML, ...)",
                      "Required. `difframe list-plugins --kind engine` lists the engines installed."))
        if plugins is None:
            return tree
        for kind, mount in MOUNT_POINTS.items():
            for name, spec in plugins.specs(kind).items():
                if not spec.parameters:
                    continue
                owner = plugins.provider(kind, name).plugin
                prefix = mount.format(name=name)
                if prefix in tree.nodes and tree.nodes[prefix].owner != owner:
                    raise UsageError(f"plugin {owner!r} mounts its parameters at {prefix!r}, which "
                                     f"{tree.nodes[prefix].owner} already defines")
                if prefix not in tree.nodes:
                    tree.add(Node(prefix, ("Param",), None, spec.summary, owner=owner))
                for node in schema_to_nodes(prefix, spec.parameters, owner):
                    tree.add(node)
        for path, kind in {**DYNAMIC_CHOICES, f"{ENGINE_WILDCARD}.name": "engine"}.items():
            if path in tree.nodes:
                names = [n for name, spec in plugins.specs(kind).items() for n in (name, *spec.aliases)]
                tree.nodes[path].choices, tree.nodes[path].kind = tuple(names), kind
        tree._add_simulation_overrides()
        tree._plugins = plugins
        return tree

    def _add_simulation_overrides(self) -> None:
        """``scan.data.simulation.{illumination,sample,xy}``: sparse copies of the scan's subtrees.

        The reference says a simulation takes trees of the same form whose items
        take precedence over the scan's, so only the items given are kept.
        """
        for part in ("illumination", "sample", "xy"):
            source = f"scan.{part}"
            for path, node in list(self.subtree(source).items()):
                copy = replace(node, path="scan.data.simulation." + path[len("scan."):], sparse=True)
                if path == source:
                    copy.help = f"Overrides of scan.{part} for the simulated data"
                    copy.doc = (f"Same form as scan.{part}; the items given here take precedence over the scan's "
                                f"own when the data are simulated.")
                self.add(copy)

    # -- queries ----------------------------------------------------------------

    def children(self, path: str) -> dict[str, Node]:
        """Direct children of ``path`` ("" for the root), name -> node."""
        prefix = f"{path}." if path else ""
        out = {}
        for p, node in self.nodes.items():
            if p.startswith(prefix) and "." not in p[len(prefix):]:
                out[p[len(prefix):]] = node
        return out

    def subtree(self, path: str) -> dict[str, Node]:
        """``path`` and everything below it (all nodes for "")."""
        if path and path not in self.nodes:
            close = self.suggest(path)
            raise UsageError(f"no parameter {path!r}" + (f"; did you mean {close!r}?" if close else ""))
        return {p: n for p, n in self.nodes.items() if not path or p == path or p.startswith(path + ".")}

    def find(self, path: str) -> str:
        """The documented node ``path`` names, so that a reader finds it however it was written.

        Itself; the same path in another case (``engine.dm``); the template of
        a labelled copy (``engines.dm`` -> ``engine.DM``, ``scans.a.xy`` ->
        ``scan.xy``); the one node whose path ends with it (``DM`` ->
        ``engine.DM``).  UsageError naming the candidates, or the closest
        spelling, when there is not exactly one.
        """
        if not path or path in self.nodes:
            return path
        lower = {p.lower(): p for p in self.nodes}
        key = path.lower()
        head, _, rest = key.partition(".")
        label, _, tail = rest.partition(".")
        if head == "engines" and label:  # label may be an engine's name (engines.dm) or any label (engines.e1.alpha)
            exact = f"engine.{label}.{tail}" if tail else f"engine.{label}"
            found = [exact] if exact in lower else sorted(
                {p for p in lower if tail and p.startswith("engine.") and p.split(".", 2)[2:] == [tail]})
        elif head == "scans" and label:
            found = [f"scan.{tail}" if tail else "scan"]
        else:
            found = [key] if key in lower else [p for p in lower if p.endswith("." + key)]
        found = [p for p in found if p in lower]
        originals = [p for p in found if not p.startswith("scan.data.simulation.")]
        found = originals or found  # the simulation's copies are documented by their originals
        if len(found) == 1:
            return lower[found[0]]
        if found:
            names = [lower[p] for p in found]
            raise UsageError(f"{path!r} names {len(names)} parameters: " + ", ".join(names[:8]) +
                             (", ..." if len(names) > 8 else "") + "; give more of the dotted path")
        close = self.suggest(path)
        raise UsageError(f"no parameter {path!r}" + (f"; did you mean {close!r}?" if close else ""))

    def suggest(self, path: str) -> str | None:
        """The documented node a wrong ``path`` most likely means, or None.

        Case aside first (``engine.dm``); a labelled copy is documented by its
        template (``engines.dm`` -> ``engine.DM``, ``engines.e1.alpha`` ->
        ``engine.DM.alpha``, ``scans.a.xy`` -> ``scan.xy``); else the closest spelling.
        """
        lower = {p.lower(): p for p in self.nodes}
        wanted = [path.lower()]
        head, _, rest = wanted[0].partition(".")
        label, _, tail = rest.partition(".")
        if head == "engines" and label:
            wanted.append(f"engine.{label}.{tail}" if tail else f"engine.{label}")
            if tail:
                wanted += [f"engine.common.{tail}"] + [p for p in lower if p.startswith("engine.")
                                                       and p.partition(".")[2].partition(".")[2] == tail]
        elif head == "scans" and label:
            wanted.append(f"scan.{tail}" if tail else "scan")
        for candidate in wanted:
            if candidate in lower:
                return lower[candidate]
        close = difflib.get_close_matches(wanted[0], list(lower), n=1)
        return lower[close[0]] if close else None

    def to_json(self, path: str = "") -> dict:
        return {p: n.as_json() for p, n in self.subtree(path).items()}

    def defaults(self, path: str = "") -> Param:
        """The default values below ``path`` as a nested Param."""
        out = Param()
        for name, node in self.children(path).items():
            if node.path in (SCAN_WILDCARD, ENGINE_WILDCARD):
                continue
            if node.sparse:
                out[name] = None
            elif node.is_container:
                if node.default is None and "NoneType" in node.types:
                    out[name] = None
                else:
                    out[name] = self.defaults(node.path)
            else:
                out[name] = node.default
        return out

    # -- resolution ---------------------------------------------------------------

    def resolve(self, user: Mapping[str, Any]) -> Param:
        """Validate ``user`` values and fill defaults; returns the resolved tree."""
        user = dict(user or {})
        scans = user.pop("scans", None) or {}
        engines = user.pop("engines", None) or {}
        resolved = self._resolve_level("", user, self.defaults(""), display="")
        resolved["scans"] = self._resolve_scans(scans, user.get("scan") or {})
        resolved["engines"] = self._resolve_engines(engines, user.get("engine") or {})
        return resolved

    def _resolve_scans(self, scans: Any, scan_base: Mapping) -> Param:
        if not isinstance(scans, Mapping):
            raise ParameterError(f"scans = {scans!r}: expected a table of labelled scans (scans.<label>.*)")
        out = Param()
        for label, values in scans.items():
            if values is None:
                values = {}
            if not isinstance(values, Mapping):
                raise ParameterError(f"scans.{label} = {values!r}: expected a table (a copy of `scan`)")
            merged = deep_merge(scan_base, values)
            out[label] = self._resolve_level("scan", merged, self.defaults("scan"), display=f"scans.{label}")
        return out

    def _resolve_engines(self, engines: Any, engine_base: Mapping) -> Param:
        if not isinstance(engines, Mapping):
            raise ParameterError(f"engines = {engines!r}: expected a table of labelled engines (engines.<label>.*)")
        out = Param()
        for label, values in engines.items():
            where = f"engines.{label}"
            if not isinstance(values, Mapping) or not values.get("name"):
                raise ParameterError(f"{where}.name is missing: every engine needs a name, e.g. name = \"DM\"")
            name = self._engine_name(values["name"], where)
            nodes = {**self.children("engine.common"), **self.children(f"engine.{name}")}
            defaults = {**self.defaults("engine.common"), **self.defaults(f"engine.{name}")}
            base = {**dict(engine_base.get("common") or {}), **dict(engine_base.get(name) or {})}
            given = {**base, **{k: v for k, v in values.items() if k != "name"}}
            resolved = Param(name=name)
            resolved.update(defaults)
            for key, value in given.items():
                if key not in nodes:
                    raise ParameterError(f"{where}.{key} is not a parameter of engine {name!r}"
                                         f"{_did_you_mean(key, nodes)}")
                resolved[key] = self._check(nodes[key], value, f"{where}.{key}", defaults.get(key))
            out[label] = resolved
        return out

    def _engine_name(self, name: Any, where: str) -> str:
        if self._plugins is not None:
            try:
                return self._plugins.resolve("engine", str(name))
            except UsageError as exc:
                raise ParameterError(f"{where}.name = {name!r}: {exc}") from None
        if f"engine.{name}" not in self.nodes:
            raise ParameterError(f"{where}.name = {name!r}: no such engine")
        return str(name)

    def _resolve_level(self, path: str, user: Mapping, defaults: Param, display: str) -> Param:
        children = self.children(path)
        out = Param(defaults)
        for key, value in user.items():
            shown = f"{display}.{key}" if display else key
            if key not in children or children[key].path in (SCAN_WILDCARD, ENGINE_WILDCARD):
                raise ParameterError(f"{shown} is not a known parameter{_did_you_mean(key, children)}")
            node = children[key]
            out[key] = self._check(node, value, shown, defaults.get(key))
        return out

    def _check(self, node: Node, value: Any, shown: str, default: Any) -> Any:
        if node.is_container and isinstance(value, Mapping):
            if not self.children(node.path):  # a free-form table (e.g. a custom detector)
                return Param(value)
            if isinstance(default, Mapping):
                base = default
            else:
                base = Param() if node.sparse else self.defaults(node.path)
            return self._resolve_level(node.path, value, base, shown)
        if node.kind and isinstance(value, str) and self._plugins is not None:
            try:
                self._plugins.resolve(node.kind, value)  # names, aliases, any case
            except UsageError as exc:
                if _means_none(node, value):
                    return None
                raise ParameterError(f"{shown} = {value!r}: {exc}") from None
            return value
        return check_value(node, value, shown)


def check_value(node: Node, value: Any, shown: str) -> Any:
    """Validate one leaf value against ``node``; returns it converted (lists to tuples ...).

    ``"None"`` is None on a node that allows None, unless the node accepts that
    string as a value of its own: a run may be named "None", a probe support cannot.
    """
    try:
        return _check_leaf(node, value, shown)
    except ParameterError:
        if _means_none(node, value):
            return None
        raise


def _means_none(node: Node, value: Any) -> bool:
    return isinstance(value, str) and value == NONE_TEXT and node.allows_none


def _check_leaf(node: Node, value: Any, shown: str) -> Any:
    if value is None:
        if node.allows_none:
            return None
        raise ParameterError(f"{shown} = None: expected {_expected(node)}; None is not allowed here")
    for type_name in node.types:
        ok, converted = _convert(type_name, value)
        if ok:
            break
    else:
        raise ParameterError(f"{shown} = {value!r}: expected {_expected(node)}, got {type(value).__name__}")
    if isinstance(converted, (int, float)) and not isinstance(converted, bool):
        if node.lowlim is not None and converted < node.lowlim:
            raise ParameterError(f"{shown} = {value!r}: expected {_expected(node)}")
        if node.uplim is not None and converted > node.uplim:
            raise ParameterError(f"{shown} = {value!r}: expected {_expected(node)}")
    if node.choices is not None and isinstance(converted, str) and converted not in node.choices:
        raise ParameterError(f"{shown} = {value!r}: expected one of {', '.join(map(repr, node.choices))}"
                             f"{_did_you_mean(converted, node.choices)}")
    return converted


def _convert(type_name: str, value: Any) -> tuple[bool, Any]:
    if type_name == "int":
        return (isinstance(value, int) and not isinstance(value, bool)), value
    if type_name == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        return False, value
    if type_name == "bool":
        return isinstance(value, bool), value
    if type_name in ("str", "file", "dir"):
        return isinstance(value, (str, os.PathLike)), os.fspath(value) if isinstance(value, os.PathLike) else value
    if type_name == "tuple":
        return isinstance(value, (list, tuple)), tuple(value) if isinstance(value, (list, tuple)) else value
    if type_name == "list":
        return isinstance(value, (list, tuple)), list(value) if isinstance(value, (list, tuple)) else value
    if type_name == "ndarray":
        return isinstance(value, (list, tuple)) or hasattr(value, "__array__"), value
    if type_name == "complex":
        if isinstance(value, (int, float, complex)) and not isinstance(value, bool):
            return True, complex(value)
        if isinstance(value, str):
            try:
                return True, complex(value.replace(" ", ""))
            except ValueError:
                return False, value
        return False, value
    if type_name in _CONTAINER_TYPES:
        return isinstance(value, Mapping), value
    if type_name == "NoneType":
        return value is None, value
    return False, value


def _expected(node: Node) -> str:
    text = " or ".join(t for t in node.types if t != "NoneType")
    limits = []
    if node.lowlim is not None:
        limits.append(f">= {node.lowlim}")
    if node.uplim is not None:
        limits.append(f"<= {node.uplim}")
    text += f" ({', '.join(limits)})" if limits else ""
    return f"{text} or None" if node.allows_none else text


def _did_you_mean(key: str, candidates: Iterable[str]) -> str:
    names = [c.rpartition(".")[2] if "." in c else c for c in candidates]
    close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


# -- sources --------------------------------------------------------------------------


def _load_toml(text: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    return tomllib.loads(text)


def load_source(path: str | os.PathLike) -> dict:
    """Read a parameter file: TOML, JSON or YAML, chosen by extension."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"parameter file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            data = _load_toml(text)
        elif suffix == ".json":
            data = json.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            raise UsageError(f"parameter file {str(path)!r}: unknown format {suffix!r} (use .toml, .json or .yaml)")
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"parameter file {str(path)!r} could not be parsed: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"parameter file {str(path)!r}: the top level must be a table of parameters")
    return data


def parse_override(text: str) -> dict:
    """``dotted.path=value`` -> nested dict; the value is a TOML literal.

    A value that is not valid TOML (``raster``, a path) is taken as a string,
    so ``-p scan.xy.type=raster`` works without shell quoting; the bare word
    ``None`` is None (TOML has no null), the quoted ``"None"`` a string.
    """
    path, sep, raw = text.partition("=")
    path, raw = path.strip(), raw.strip()
    if not sep or not path or any(not part for part in path.split(".")):
        raise UsageError(f"-p {text!r}: expected dotted.path=value, e.g. -p engines.e1.numiter=300")
    if raw == NONE_TEXT:
        value = None
    else:
        try:
            value = _load_toml(f"v = {raw}")["v"]
        except Exception:
            value = raw
    nested: Any = value
    for part in reversed(path.split(".")):
        nested = {part: nested}
    return nested


def merge_sources(sources: Iterable[Any]) -> dict:
    """Merge mappings and parameter files in order; later ones win."""
    merged: dict = {}
    for source in sources:
        if isinstance(source, Mapping):
            data = source
        else:
            data = load_source(source)
        merged = deep_merge(merged, data)
    return merged
