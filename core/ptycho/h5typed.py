"""ptypy's typed HDF5 tree: nested Python/numpy values, one ``type`` attribute per node.

``.ptyd`` and ``.ptyr`` files are written this way by ptypy, so reading and
writing the same layout lets files move both ways.  Node types: ``dict``,
``param`` and ``ordered_dict`` (groups), ``list``/``tuple`` (groups of
``%05d`` children), ``arraylist``/``arraytuple`` (homogeneous sequences stored
as one array), ``array``, ``scalar``, ``string``/``unicode``, ``None`` (stored
as ``zeros(1)``).  A :class:`difframe.param.Param` is stored as ``param`` and
read back as one, because ptypy reads ``param`` groups as its attribute-access
``Param`` and its loaders use attribute access (``content.pars``).  ptypy
running on numpy >= 2 stores every list as a ``list`` group of ``%05d``
scalars (its test for a list of strings fails there), so numeric arrays are
read through :func:`read_array`, which accepts both forms.  ptypy may also have stored ``pickle`` or ``record_array``
nodes: those are refused, never unpickled, because unpickling runs code the
file chooses.  Keys containing ``/`` are escaped as ``_SLASH_`` with an
``escaped`` attribute, as ptypy does.
"""

from __future__ import annotations

import os
import posixpath
from typing import Any, Mapping

import numpy as np

from difframe import h5safe
from difframe.errors import DataError
from difframe.h5safe import read_dataset
from difframe.limits import array_bytes, check_allocation, human
from difframe.param import Param

SLASH_ESCAPE = "_SLASH_"
REFUSED_TYPES = ("pickle", "record_array")


def _attr_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return _attr_text(value.item()) if value.size == 1 else str(value)
    return str(value)


def node_type(node: Any) -> str | None:
    """The ``type`` attribute of an HDF5 node as text (None when absent)."""
    return _attr_text(node.attrs.get("type"))


# ----------------------------------------------------------------- writing


def write_node(group: Any, name: str, value: Any, *, compress: bool = True) -> Any:
    """Store ``value`` as child ``name`` of h5py ``group`` in ptypy's typed layout."""
    import h5py

    if name in group:
        del group[name]
    escaped = "/" in name
    key = name.replace("/", SLASH_ESCAPE)
    if isinstance(value, Mapping):
        node = group.create_group(key)
        node.attrs["type"] = "param" if isinstance(value, Param) else "dict"
        for k, v in value.items():
            if not isinstance(k, str):
                raise DataError(f"cannot store key {k!r} of {group.name}/{key}: only string keys are supported")
            write_node(node, k, v, compress=compress)
    elif isinstance(value, (list, tuple)):
        node = _write_sequence(group, key, value, compress)
    elif isinstance(value, str):
        node = group.create_dataset(key, data=value, dtype=h5py.string_dtype())
        node.attrs["type"] = "string"
    elif isinstance(value, bytes):
        node = group.create_dataset(key, data=value.decode("utf-8"), dtype=h5py.string_dtype())
        node.attrs["type"] = "string"
    elif value is None:
        node = group.create_dataset(key, data=np.zeros((1,)))
        node.attrs["type"] = "None"
    elif isinstance(value, np.ndarray):
        if value.dtype.kind in "OV":
            raise DataError(f"cannot store {group.name}/{key}: arrays of dtype {value.dtype} are not supported")
        big = compress and value.size > 16
        node = group.create_dataset(key, data=value, compression="gzip" if big else None)
        node.attrs["type"] = "array"
    elif np.isscalar(value):
        node = group.create_dataset(key, data=np.asarray(value))
        node.attrs["type"] = "scalar"
    else:
        raise DataError(f"cannot store {group.name}/{key}: unsupported type {type(value).__name__}")
    if escaped:
        node.attrs["escaped"] = "1"
    return node


def _write_sequence(group: Any, key: str, value: list | tuple, compress: bool) -> Any:
    kind = "tuple" if isinstance(value, tuple) else "list"
    homogeneous = len(value) > 0 and len({type(v) for v in value}) == 1
    if homogeneous and not isinstance(value[0], (str, bytes, Mapping, list, tuple)) and value[0] is not None:
        array = np.asarray(value)
        if array.dtype.kind not in "OUSV":
            node = group.create_dataset(key, data=array)
            node.attrs["type"] = "array" + kind
            return node
    node = group.create_group(key)
    node.attrs["type"] = kind
    for i, item in enumerate(value):
        write_node(node, f"{i:05d}", item, compress=compress)
    return node


def write(path: str | os.PathLike, content: Mapping[str, Any], *, mode: str = "w") -> None:
    """Write the top-level ``content`` mapping to an HDF5 file (``mode`` as h5py's)."""
    import h5py

    with h5py.File(path, mode) as f:
        f.attrs["h5rw_version"] = "0.1"
        for key, value in content.items():
            write_node(f, key, value)


# ----------------------------------------------------------------- reading


def read_node(node: Any, *, source: str = "") -> Any:
    """Python value of one typed node; DataError naming the node for refused types, unreadable or oversized data.

    Files opened with :func:`open_file` are free of link cycles; the datasets a
    tree holds are read only while their sum stays within the memory budget.
    """
    return _Reader(source).node(node)


class _Reader:
    """One read of a typed tree, with the bytes read so far (many small arrays may add up)."""

    def __init__(self, source: str):
        self.source = source
        self.read_bytes = 0.0
        self.nodes = 0  # groups shared by hard links are read once per link: a small file can nest 2**30 reads

    def where(self, node: Any) -> str:
        return f"{self.source}:{node.name}" if self.source else node.name

    def data(self, node: Any) -> Any:
        size = array_bytes(node.shape or (), node.dtype.itemsize)
        check_allocation(self.read_bytes + size, f"{self.where(node)} (shape {node.shape}, {node.dtype}, "
                                                 f"after {human(self.read_bytes)} read from the same tree)")
        self.read_bytes += size
        return read_dataset(node, self.source or node.file.filename)

    def node(self, node: Any) -> Any:
        import h5py

        where = self.where(node)
        self.nodes += 1
        if self.nodes > h5safe.MAX_LINKS:
            raise DataError(f"{where}: more than {h5safe.MAX_LINKS} nodes read from one tree (groups shared many "
                            f"times over), refused as unreasonable")
        kind = node_type(node)
        if kind in REFUSED_TYPES:
            raise DataError(f"{where}: node is stored as {kind!r} (a Python pickle); difframe never unpickles data")
        if isinstance(node, h5py.Group):
            if kind in (None, "dict", "param", "ordered_dict"):
                out = {}
                for key in node:
                    child = self.child(node, key)
                    name = key.replace(SLASH_ESCAPE, "/") if child.attrs.get("escaped") is not None else key
                    out[name] = self.node(child)
                return Param(out) if kind == "param" else out
            if kind in ("list", "tuple"):
                items = [self.node(self.child(node, k)) for k in sorted(node)]
                return tuple(items) if kind == "tuple" else items
            raise DataError(f"{where}: unknown group type {kind!r}")
        if kind in (None, "array"):
            return self.data(node)
        if kind == "arraylist":
            return list(self.data(node))
        if kind == "arraytuple":  # a tuple of arrays (ptypy's storage grids) stays arrays, not nested lists
            value = self.data(node)
            return tuple(value.tolist()) if value.ndim == 1 else tuple(value)
        if kind in ("string", "unicode"):
            value = self.data(node)
            if isinstance(value, np.ndarray):
                value = value.item() if value.size == 1 else value
            return value.decode("utf-8") if isinstance(value, bytes) else str(value)
        if kind == "scalar":
            value = self.data(node)
            single = isinstance(value, np.generic) or (isinstance(value, np.ndarray) and value.size == 1)
            return value.item() if single else value
        if kind == "None":
            return None
        raise DataError(f"{where}: unknown node type {kind!r}")

    def child(self, group: Any, key: str) -> Any:
        """``group[key]``; DataError naming it when its link leads nowhere."""
        try:
            child = group.get(key)
        except (KeyError, RuntimeError, OSError, ValueError) as err:
            child, reason = None, str(err)
        else:
            reason = "the linked file is missing"
        if child is None:
            link = group.get(key, getlink=True)
            target = f" to {link.filename}:{link.path}" if hasattr(link, "filename") else (
                f" to {link.path}" if hasattr(link, "path") else "")
            where = f"{self.source}:" if self.source else ""
            raise DataError(f"{where}{posixpath.join(group.name, key)}: dangling link{target} ({reason})")
        return child


def read_array(node: Any, *, source: str = "") -> np.ndarray:
    """A numeric array from a typed node: ``array``, ``arraylist``/``arraytuple``, or a
    ``list``/``tuple`` group of numbers (ptypy on numpy >= 2); DataError naming the node otherwise."""
    where = f"{source}:{node.name}" if source else node.name
    value = read_node(node, source=source)
    try:
        array = np.asarray(value)
    except ValueError:  # ragged nested lists
        array = np.asarray(value, dtype=object)
    if array.dtype.kind not in "biufc":
        raise DataError(f"{where}: expected numbers, found {node_type(node) or 'an untyped node'} "
                        f"holding {array.dtype} data")
    return array


def open_file(path: str | os.PathLike, what: str = "HDF5") -> Any:
    """Open an HDF5 file for reading, its links audited (:func:`difframe.h5safe.open_file`); DataError naming the
    file if it is missing, not HDF5, or links where it must not."""
    return h5safe.open_file(path, what)


def read(path: str | os.PathLike, *keys: str) -> dict[str, Any]:
    """Read a typed HDF5 file (or only the top-level/slash-separated ``keys``) into a dict."""
    with open_file(path) as f:
        out, reader = {}, _Reader(str(path))
        for key in keys or list(f):
            if key not in f:
                raise DataError(f"{path}: no node {key!r}")
            out[key.split("/")[-1]] = reader.node(reader.child(f, key))
        return out
