"""Opening HDF5 files a user (or anyone who can hand them a file) supplies, without letting the file steer reading.

An HDF5 file can point elsewhere: external links, external raw-data files and
virtual-dataset sources name other files (``/etc/passwd``, ``/proc/self/mem``,
a FIFO), soft and hard links can form cycles that make a tree reader recurse
for ever, and a few kilobytes can declare terabytes.  :func:`open_file`
therefore audits the whole link graph once, each link checked from its link
information (type, target) before it is followed:

- a file another file points to must be a regular file inside the first file's
  folder or a folder listed in ``DIFFRAME_HDF5_LINK_DIRS`` (``os.pathsep``
  separated); it is found the way the HDF5 library finds it
  (``HDF5_EXT_PREFIX``, the linking file's folder, the working folder) and the
  walk goes on into it;
- soft links that never end, and groups that contain themselves or an ancestor
  (through hard, soft or external links), are refused naming the file and node;
- user-defined link types are refused, and at most :data:`MAX_LINKS` links are walked.

:func:`read_dataset` then reads a dataset (or a selection) only after checking
its size against the memory budget (:mod:`difframe.limits`), and turns the
library's errors (a corrupt compressed chunk) into a DataError naming file and
node.
"""

from __future__ import annotations

import logging
import os
import posixpath
from typing import Any

import numpy as np

from difframe.errors import DataError
from difframe.limits import array_bytes, check_allocation

log = logging.getLogger("difframe.hdf5")

ENV_LINK_DIRS = "DIFFRAME_HDF5_LINK_DIRS"
MAX_LINKS = 1_000_000
MAX_SOFT_STEPS = 64


def allowed_dirs(path: str | os.PathLike) -> tuple[str, ...]:
    """Real paths of the folders files linked from ``path`` may be in: its own and ``DIFFRAME_HDF5_LINK_DIRS``."""
    dirs = [os.path.dirname(os.path.abspath(path))]
    dirs += [d for d in os.environ.get(ENV_LINK_DIRS, "").split(os.pathsep) if d.strip()]
    return tuple(dict.fromkeys(os.path.realpath(d) for d in dirs))


def _inside(real: str, dirs: tuple[str, ...]) -> bool:
    return any(real == d or real.startswith(d.rstrip(os.sep) + os.sep) for d in dirs)


def linked_file(name: str, parent: str, env: str = "HDF5_EXT_PREFIX") -> str | None:
    """The file the HDF5 library opens for a link to ``name`` from file ``parent`` (None: it finds none).

    The library's order: an absolute name as it is, then (with only the last
    component of an absolute name) each folder of ``env``, the parent file's
    folder, the working folder.
    """
    candidates = []
    rest = name
    if os.path.isabs(name):
        candidates.append(name)
        rest = os.path.basename(name)
    candidates += [os.path.join(d, rest) for d in os.environ.get(env, "").split(os.pathsep) if d]
    candidates += [os.path.join(os.path.dirname(os.path.abspath(parent)), rest), rest]
    return next((c for c in candidates if os.path.lexists(c)), None)


class _Audit:
    """One depth-first walk over every link reachable from a file's root, into linked files too.

    Each group is entered once; a link to a group still being walked (an
    ancestor, however the link reaches it) is a cycle.
    """

    def __init__(self, dirs: tuple[str, ...]):
        self.dirs = dirs
        self.links = 0

    def check_target(self, where: str, kind: str, name: str, parent: str, env: str) -> str | None:
        """Real path of a linked file if allowed (None when it does not exist); DataError otherwise."""
        found = linked_file(name, parent, env)
        if found is None:
            return None
        real = os.path.realpath(found)
        if not _inside(real, self.dirs):
            raise DataError(f"{where}: {kind} to {name!r} ({real}) leaves the allowed folders "
                            f"{', '.join(self.dirs)}; add its folder to {ENV_LINK_DIRS} to follow it")
        if not os.path.isfile(real):
            raise DataError(f"{where}: {kind} to {name!r} ({real}) is not a regular file")
        return real

    def walk(self, f: Any, source: str) -> None:
        """Audit the open h5py file ``f`` (named ``source`` in messages) and what its links reach.

        Low-level calls (link info, ``h5o.open``) keep it to a few microseconds per link.
        """
        from h5py import h5d, h5f, h5g, h5l, h5o

        top = f.filename
        root = h5o.open(f.id, b"/")
        walking = {root: "/"}  # groups on the current path -> their name
        done = set()
        stack = [(root, "/", top, iter(root))]
        while stack:
            gid, path, filename, keys = stack[-1]
            key = next(keys, None)
            if key is None:
                stack.pop()
                done.add(gid)
                del walking[gid]
                continue
            self.links += 1
            if self.links > MAX_LINKS:
                raise DataError(f"{source}: more than {MAX_LINKS} links, refused as unreasonable")
            name = posixpath.join(path, key.decode("utf-8", "replace"))
            where = f"{source if filename == top else filename}:{name}"
            try:
                kind = gid.links.get_info(key).type
                value = None if kind == h5l.TYPE_HARD else gid.links.get_val(key)
            except (KeyError, RuntimeError, OSError, ValueError) as err:
                raise DataError(f"{where}: unreadable link ({err})") from None
            if kind == h5l.TYPE_SOFT:
                target = value.decode("utf-8", "replace")
                self.soft(f if filename == top else None, path, target, where, gid)
                described = f"soft link to {target}"
            elif kind == h5l.TYPE_EXTERNAL:
                link_file, link_path = (v.decode("utf-8", "replace") for v in value)
                self.check_target(where, "external link", link_file, filename, "HDF5_EXT_PREFIX")
                described = f"link to {link_file}:{link_path}"
            elif kind == h5l.TYPE_HARD:
                described = "hard link"
            else:
                raise DataError(f"{where}: user-defined link type {kind}, not followed")
            try:
                node = h5o.open(gid, key)
            except (KeyError, RuntimeError, OSError, ValueError):
                continue  # a dangling link: reading it fails later, naming it
            if isinstance(node, h5g.GroupID):
                if node in walking:
                    raise DataError(f"{where}: link cycle, a {described} back to {walking[node]}, a group holding "
                                    f"the link")
                if node not in done:
                    inside = link_path if kind == h5l.TYPE_EXTERNAL else name  # its name in its own file
                    walking[node] = name
                    stack.append((node, inside, h5f.get_name(node).decode("utf-8", "replace"), iter(node)))
            elif isinstance(node, h5d.DatasetID):
                self.dataset(node, where, filename)

    def soft(self, f: Any, base: str, target: str, where: str, gid: Any) -> None:
        """Follow a soft link's path component by component (in the file ``f``, or the one of group ``gid``);
        DataError when it loops."""
        import h5py

        if f is None:
            f = h5py.Group(gid).file  # a file reached through an external link
        pending = [c for c in posixpath.join(base, target).split("/") if c]
        current = "/"
        steps = 0
        while pending:
            part = pending.pop(0)
            if part == ".":
                continue
            if part == "..":
                current = posixpath.dirname(current.rstrip("/")) or "/"
                continue
            group = f.get(current)
            if not isinstance(group, h5py.Group) or part not in group:
                return  # dangling, or through an external link the walk checks where it meets it
            link = group.get(part, getlink=True)
            if isinstance(link, h5py.SoftLink):
                steps += 1
                if steps > MAX_SOFT_STEPS:
                    raise DataError(f"{where}: soft link to {target!r} never ends (a cycle of soft links)")
                pending = [c for c in posixpath.join(current, link.path).split("/") if c] + pending
                current = "/"
            elif isinstance(link, h5py.ExternalLink):
                return
            else:
                current = posixpath.join(current, part)

    def dataset(self, dataset: Any, where: str, filename: str) -> None:
        """Raw data kept in other files (external storage, virtual sources) must be allowed files too."""
        from h5py import h5d

        plist = dataset.get_create_plist()
        for i in range(plist.get_external_count()):
            name = plist.get_external(i)[0]
            name = name.decode() if isinstance(name, bytes) else name
            real = self.check_target(where, "external raw data", name, os.path.join(os.getcwd(), "x"),
                                     "HDF5_EXTFILE_PREFIX")
            if real is None:
                raise DataError(f"{where}: its external raw data file {name!r} does not exist")
        if plist.get_layout() == h5d.VIRTUAL:
            for i in range(plist.get_virtual_count()):
                source = plist.get_virtual_filename(i)
                if source != ".":
                    self.check_target(where, "virtual dataset source", source, filename, "HDF5_VDS_PREFIX")


def open_file(path: str | os.PathLike, what: str = "HDF5") -> Any:
    """An audited h5py file open for reading; DataError naming the file (and node) on any refusal."""
    import h5py

    if not os.path.isfile(path):
        raise DataError(f"{path}: no such {what} file (or not a regular file)")
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not an HDF5 file, so not {what} ({err})") from None
    audit = _Audit(allowed_dirs(path))
    try:
        audit.walk(f, str(path))
    except BaseException:
        f.close()
        raise
    log.debug("%s: %d links audited", path, audit.links)
    return f


def read_dataset(node: Any, source: str, selection: Any = (), rows: int | None = None) -> np.ndarray:
    """``node[selection]`` after checking its size against the memory budget; DataError naming file and node.

    ``rows``: the number of first-axis rows the selection reads (the whole
    dataset when None and ``selection`` is ``()``).
    """
    shape = node.shape if rows is None else (rows, *node.shape[1:])
    where = f"{source}:{node.name}"
    check_allocation(array_bytes(shape, node.dtype.itemsize), f"{where} (shape {tuple(shape)}, {node.dtype})")
    try:
        return node[selection]
    except (OSError, RuntimeError, ValueError, TypeError) as err:
        raise DataError(f"{where}: cannot read ({err})") from None
