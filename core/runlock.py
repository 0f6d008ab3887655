"""One live run per set of output files: a lock file naming its holder, and stale temporaries cleared.

Two runs writing the same files would interleave their autosaves silently.  A
run takes ``<folder>/.difframe-<name>.lock`` (created exclusively, holding the
pid, host, run name, start time and command); a second run finding the lock of
a live process refuses with a message naming it.  A lock whose process is dead
(same host, pid gone) is taken over.  Once the lock is held, the ``*.part``
temporaries that :func:`difframe.fileio.atomic_path` leaves behind when a run
is killed are removed: no live run can own them any more.

A name lock alone lets two differently named runs write the same files when
the path templates leave out ``%(run)s``.  So a run also registers the files
it will write (:class:`WritesLock`): ``.difframe-writes-<host>-<pid>-<n>.lock``
in the fixed folder of each output glob (or the nearest existing one above
it), listing every glob; a run whose globs
can name a file a live registered run's globs can name refuses, naming both.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator

from difframe.errors import UsageError

log = logging.getLogger("difframe.run")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _holder(path: Path) -> dict | None:
    """The lock's record, or None when it is unreadable (being written, or garbage)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _describe(record: dict | None, path: Path) -> str:
    if not record:
        return f"unreadable lock file {path}"
    return (f"pid {record.get('pid')} on {record.get('host')} since {record.get('started')}, "
            f"{record.get('command')!r}; lock file {path}")


class RunLock:
    """The lock of the run ``name`` on the output folder ``folder``."""

    def __init__(self, folder: str | os.PathLike, name: str):
        self.path = Path(folder) / f".difframe-{name}.lock"
        self.name = name
        self.held = False

    def acquire(self) -> None:
        """Take the lock; UsageError naming the live holder, a dead holder's lock taken over.

        A folder where no lock can be written (read-only) is warned about, not refused: a run that writes
        nothing there (a TDS listing) still runs, and one that writes fails naming the file it could not write.
        """
        record = {"pid": os.getpid(), "host": socket.gethostname(), "run": self.name,
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": " ".join(sys.argv)}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            log.warning("cannot write the run lock %s (%s): running without it", self.path, err.strerror or err)
            return
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _holder(self.path)
                if not self._stale(holder):
                    raise UsageError(f"run {self.name!r} is already running in {str(self.path.parent)!r}: "
                                     f"{_describe(holder, self.path)}. Wait for it to end, give another run name "
                                     f"or io.paths.home, or delete the lock file if that run is dead")
                log.warning("taking over the lock of a run that ended without releasing it: %s",
                            _describe(holder, self.path))
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                continue
            except OSError as err:
                log.warning("cannot write the run lock %s (%s): running without it", self.path,
                            err.strerror or err)
                return
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
            self.held = True
            return
        raise UsageError(f"run {self.name!r}: another run took {self.path} at the same moment")

    @staticmethod
    def _stale(holder: dict | None) -> bool:
        """A lock of a process of this host that no longer exists."""
        if not holder or holder.get("host") != socket.gethostname():
            return False
        pid = holder.get("pid")
        return isinstance(pid, int) and pid != os.getpid() and not _alive(pid)

    def release(self) -> None:
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self.held = False


_WRITES = "difframe-writes-"
_counter = iter(range(1, 1 << 62))


def _tokens(pattern: str) -> list[str]:
    """A glob as tokens: one character each, ``"*"`` a wildcard, ``"?"`` any one character; ``[c]`` (what
    :func:`glob.escape` makes of a literal ``*``, ``?`` or ``[``) is the literal ``c``, written ``"\\c"``."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "[" and i + 2 < len(pattern) and pattern[i + 2] == "]":
            out.append("\\" + pattern[i + 1])
            i += 3
            continue
        out.append(c)
        i += 1
    return out


def globs_overlap(a: str, b: str) -> bool:
    """Whether some path matches both globs (``*`` within one path component, ``?`` one character)."""
    x, y = _tokens(a), _tokens(b)

    def char(t):  # the literal a token stands for, or None for a wildcard
        return t[1:] if t.startswith("\\") else (None if t in ("*", "?") else t)

    def same(p, q):  # one character matched by both tokens (neither a star)
        cp, cq = char(p), char(q)
        if cp is None or cq is None:  # "?" is any one character but "/"
            return "/" not in (cp, cq)
        return cp == cq

    # meet[i][j]: some string matches both x[i:] and y[j:]; filled from the ends (indices only grow)
    meet = [[False] * (len(y) + 1) for _ in range(len(x) + 1)]
    meet[len(x)][len(y)] = True
    for i in range(len(x), -1, -1):
        for j in range(len(y), -1, -1):
            if i == len(x) and j == len(y):
                continue
            if i < len(x) and x[i] == "*":  # x's star takes nothing, or one more character y can give
                meet[i][j] = meet[i + 1][j] or (j < len(y) and char(y[j]) != "/" and meet[i][j + 1])
            elif j < len(y) and y[j] == "*":
                meet[i][j] = meet[i][j + 1] or (i < len(x) and char(x[i]) != "/" and meet[i + 1][j])
            elif i < len(x) and j < len(y):
                meet[i][j] = same(x[i], y[j]) and meet[i + 1][j + 1]
    return meet[0][0]


def _fixed_folder(pattern: str) -> Path:
    """The deepest folder of a glob without wildcards in it (where its files' lock is kept)."""
    parts = Path(pattern).parent.parts
    fixed = []
    for part in parts:
        if any(t in ("*", "?") for t in _tokens(part)):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(os.sep)


def _existing(folder: Path) -> Path:
    """``folder`` or its nearest existing ancestor (registering creates no folder)."""
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    return folder


class WritesLock:
    """Registration of the files a run writes: refused when a live run's registered globs can name one of them.

    The record goes into the fixed folder of each glob (or its nearest existing ancestor: no folder is
    created); the check reads the records in those folders, their ancestors and the existing folders a glob's
    folder part matches, so two runs whose globs meet find each other whichever starts first.
    """

    def __init__(self, patterns: Iterable[Path], name: str):
        self.patterns = sorted({os.path.abspath(os.fspath(p)) for p in patterns})
        self.name = name
        self.paths: list[Path] = []

    def _folders(self) -> list[Path]:
        found = set()
        for pattern in self.patterns:
            fixed = _fixed_folder(pattern)
            found.update([fixed, *fixed.parents])
            found.update(Path(p) for p in glob.glob(os.path.dirname(pattern)) if os.path.isdir(p))
        return sorted(found)

    def _conflict(self) -> str | None:
        """The message naming a live run whose files meet ours, else None; dead runs' records (their files are
        free again) are removed on the way (one walk of the folders)."""
        mine = set(self.paths)
        for folder in self._folders():
            for path in sorted(folder.glob(f".{_WRITES}*.lock")):
                if path in mine:
                    continue
                holder = _holder(path)
                if RunLock._stale(holder):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                    continue
                if holder is None:
                    continue
                for ours in self.patterns:
                    for theirs in holder.get("writes") or ():
                        if isinstance(theirs, str) and globs_overlap(ours, theirs):
                            return (f"run {self.name!r} would write the same files as run {holder.get('run')!r} "
                                    f"({_describe(holder, path)}): {ours} and {theirs} can name the same file. "
                                    f"Wait for that run to end, put %(run)s in the io.paths templates or give "
                                    f"another io.paths.home")
        return None

    def acquire(self) -> None:
        """Register, then look for a live run whose files meet ours (UsageError naming both; registration
        withdrawn).  Stale records (dead pid on this host) are removed on the way."""
        if not self.patterns:
            return
        record = {"pid": os.getpid(), "host": socket.gethostname(), "run": self.name,
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": " ".join(sys.argv),
                  "writes": self.patterns}
        name = f".{_WRITES}{socket.gethostname()}-{os.getpid()}-{next(_counter)}.lock"
        for folder in sorted({_existing(_fixed_folder(p)) for p in self.patterns}):
            try:
                fd = os.open(folder / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except OSError as err:
                log.warning("cannot register the files of run %s in %s (%s): running without that check",
                            self.name, folder, err.strerror or err)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
            self.paths.append(folder / name)
        conflict = self._conflict()
        if conflict:
            self.release()
            raise UsageError(conflict)

    def release(self) -> None:
        for path in self.paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self.paths = []


def stale_parts(folder: str | os.PathLike, pattern: str = "*") -> list[Path]:
    """The temporaries of :func:`difframe.fileio.atomic_path` for files named ``pattern`` in ``folder``."""
    return sorted(Path(p) for p in glob.glob(os.path.join(glob.escape(os.fspath(folder)), f".{pattern}.*.part")))


def remove_stale_parts(patterns: Iterable[Path]) -> list[Path]:
    """Remove the stale temporaries of the files matching each glob ``pattern`` (a path); returns them."""
    removed = []
    for pattern in patterns:
        for part in stale_parts(pattern.parent, pattern.name):
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
                removed.append(part)
    if removed:
        log.warning("removed %d temporary file(s) a killed run left behind: %s", len(removed),
                    ", ".join(str(p) for p in removed[:5]) + (" ..." if len(removed) > 5 else ""))
    return removed


_PLACEHOLDER = re.compile(r"%\((\w+)\)[#0\- +]*\d*(?:\.\d+)?[a-zA-Z]")


def template_glob(template: str, known: dict[str, str]) -> str:
    """A glob of the files a ``%(name)s`` path template can name: ``known`` names filled in, others ``*``."""
    parts, last = [], 0
    for m in _PLACEHOLDER.finditer(template):
        parts.append(glob.escape(template[last:m.start()].replace("%%", "%")))
        name = m.group(1)
        parts.append(glob.escape(known[name]) if name in known else "*")
        last = m.end()
    parts.append(glob.escape(template[last:].replace("%%", "%")))
    return "".join(parts)


@contextlib.contextmanager
def holding(folder: str | os.PathLike, name: str, part_patterns: Iterable[Path] = (), ranks=None) -> Iterator[None]:
    """Hold the run's lock and register the files it writes, the globs ``part_patterns`` (rank 0 does it; a
    refusal is raised on every rank); then clear the stale temporaries of those files."""
    part_patterns = list(part_patterns)
    lock = RunLock(folder, name)
    writes = WritesLock(part_patterns, name)
    failure = None
    if ranks is None or ranks.is_root:
        try:
            lock.acquire()
            writes.acquire()
            if lock.held:  # only the lock's holder may call temporaries stale
                remove_stale_parts(part_patterns)
        except UsageError as err:
            lock.release()
            failure = err
    if ranks is not None:
        ranks.raise_first(failure)
    elif failure is not None:
        raise failure
    try:
        yield
    finally:
        writes.release()
        lock.release()
