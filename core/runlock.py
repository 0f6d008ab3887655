"""One live run per set of output files: a lock file naming its holder, and stale temporaries cleared.

Two runs writing the same files would interleave their autosaves silently.  A
run takes ``<folder>/.difframe-<name>.lock`` (created exclusively, holding the
pid, host, run name, start time and command); a second run finding the lock of
a live process refuses with a message naming it.  A lock whose process is dead
(same host, pid gone) is taken over.  Once the lock is held, the ``*.part``
temporaries that :func:`difframe.fileio.atomic_path` leaves behind when a run
is killed are removed: no live run can own them any more.
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
    """Hold the run's lock (rank 0 takes it; a refusal is raised on every rank) and clear stale temporaries."""
    lock = RunLock(folder, name)
    failure = None
    if ranks is None or ranks.is_root:
        try:
            lock.acquire()
            if lock.held:  # only the lock's holder may call temporaries stale
                remove_stale_parts(part_patterns)
        except UsageError as err:
            failure = err
    if ranks is not None:
        ranks.raise_first(failure)
    elif failure is not None:
        raise failure
    try:
        yield
    finally:
        lock.release()
