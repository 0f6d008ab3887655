"""NeXus default-plot chains, so that silx and PyMca open a difframe file straight onto a picture.

A viewer follows ``/@default`` to an NXentry, its ``@default`` to an NXdata,
and draws that group's ``@signal`` dataset over its ``@axes`` (each with
``units``).  These helpers add such a chain beside a file's own layout;
existing datasets are hard-linked rather than copied, so readers of the
original paths see no change.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def entry(f, name: str = "entry", title: str | None = None):
    """An NXentry ``name`` under the root, made the file's default."""
    f.attrs["NX_class"] = "NXroot"
    f.attrs["default"] = name
    group = f.require_group(name)
    group.attrs["NX_class"] = "NXentry"
    if title:
        group["title"] = title
    return group


def _put(group, name: str, value: Any, units: str | None, long_name: str | None):
    """A dataset of ``group``: a hard link when ``value`` is already an h5py Dataset, else new."""
    import h5py

    if isinstance(value, h5py.Dataset):
        group[name] = value
    else:
        group.create_dataset(name, data=value)
    node = group[name]
    if units is not None and "units" not in node.attrs:
        node.attrs["units"] = units
    if long_name is not None and "long_name" not in node.attrs:
        node.attrs["long_name"] = long_name
    return node


def nxdata(parent, name: str, signal: tuple, axes: Sequence[tuple | None] = (), *, default: bool = False,
           errors: Any = None, auxiliary: Sequence[tuple] = (), title: str | None = None, scatter: bool = False):
    """An NXdata group ``parent/name`` drawing ``signal`` over ``axes``.

    ``signal`` and each of ``auxiliary`` are ``(name, values, units[, long_name])``;
    ``axes`` holds one ``(name, values, units[, long_name])`` per dimension of the
    signal, or None for a dimension without axis values (NeXus ".").  ``errors``
    (same shape as the signal) are stored as ``<signal>_errors``.  ``default``
    makes this group the default of ``parent``.  ``scatter``: the signal is one
    value per point and every axis gives one coordinate per point (silx draws a
    scatter plot).
    """
    group = parent.create_group(name)
    group.attrs["NX_class"] = "NXdata"
    sname, values, units, *label = signal
    _put(group, sname, values, units, label[0] if label else None)
    group.attrs["signal"] = sname
    if errors is not None:
        _put(group, f"{sname}_errors", errors, units, None)
    for aname, avalues, aunits, *alabel in auxiliary:
        _put(group, aname, avalues, aunits, alabel[0] if alabel else None)
    if auxiliary:
        group.attrs["auxiliary_signals"] = [a[0] for a in auxiliary]
    names = []
    for dim, axis in enumerate(axes):
        if axis is None:
            names.append(".")
            continue
        aname, avalues, aunits, *alabel = axis
        _put(group, aname, avalues, aunits, alabel[0] if alabel else None)
        group.attrs[f"{aname}_indices"] = np.int32(0 if scatter else dim)
        names.append(aname)
    if names:
        group.attrs["axes"] = names
    if title:
        group.attrs["title"] = title
    if default:
        parent.attrs["default"] = name
    return group
