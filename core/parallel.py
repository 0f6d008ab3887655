"""The processes sharing one reconstruction: MPI ranks under ``mpiexec``, one rank otherwise.

Engines split their frames across ranks, keep object and probe replicated and
all-reduce the sums they build from frames (update numerators and
denominators, gradients, metrics), so every rank holds the same object and
probe after each step.  Run without ``mpiexec`` the same code sees one rank,
mpi4py is not even imported and every reduction returns its input.  Arrays
travel as raw buffers (``Allreduce``), never pickled.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Callable, Iterator, NoReturn

import numpy as np

from difframe import errors

log = logging.getLogger("difframe.parallel")

#: variables the common launchers (MPICH/Hydra, Open MPI, PMIx) set in every rank they start
_LAUNCHER_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")

#: attribute :meth:`Ranks.raise_first` sets on what it raises: whether this rank is the one it came from
_RAISED_HERE = "difframe_raised_here"

#: seconds a rank other than 0 waits before reporting its own failure and ending the job: when every rank
#: fails alike (a bad parameter), rank 0's report and abort come first and the message is printed once
ABORT_GRACE_SECONDS = 2.0

#: seconds between a rank's report and its MPI_Abort: the launcher forwards output asynchronously, and an abort it
#: handles first loses what the rank printed last
REPORT_SECONDS = 0.5

_ended_above = False  # True within ending_jobs_here()


class Ranks:
    """A communicator with the few collective operations the engines need.

    ``comm`` is an mpi4py communicator, or None for a single process.
    """

    def __init__(self, comm=None):
        self.comm = comm if comm is not None and comm.Get_size() > 1 else None
        self.rank = self.comm.Get_rank() if self.comm else 0
        self.size = self.comm.Get_size() if self.comm else 1

    @property
    def is_root(self) -> bool:
        """True on the rank that writes files and draws pictures."""
        return self.rank == 0

    def share(self, n: int) -> slice:
        """This rank's contiguous block of ``n`` items; the blocks of all ranks partition range(n)."""
        bounds = [n * r // self.size for r in range(self.size + 1)]
        return slice(bounds[self.rank], bounds[self.rank + 1])

    def sum_arrays(self, *arrays: np.ndarray) -> None:
        """Replace each (contiguous) array by its element-wise sum over all ranks, in place."""
        self._allreduce(arrays, "SUM", "sum_arrays")

    def min_arrays(self, *arrays: np.ndarray) -> None:
        """Replace each (contiguous) array by its element-wise minimum over all ranks, in place."""
        self._allreduce(arrays, "MIN", "min_arrays")

    def _allreduce(self, arrays, op: str, name: str) -> None:
        if self.comm is None:
            return
        from mpi4py import MPI

        for a in arrays:
            if not a.flags.c_contiguous:
                raise ValueError(f"{name} needs C-contiguous arrays")
            self.comm.Allreduce(MPI.IN_PLACE, a, op=getattr(MPI, op))

    def broadcast_arrays(self, *arrays: np.ndarray) -> None:
        """Overwrite each (contiguous) array with rank 0's, in place."""
        if self.comm is None:
            return
        for a in arrays:
            if not a.flags.c_contiguous:
                raise ValueError("broadcast_arrays needs C-contiguous arrays")
            self.comm.Bcast(a, root=0)

    def sum(self, *values: float) -> tuple[float, ...]:
        """The sums over all ranks of a few numbers, in one reduction."""
        buf = np.array(values, dtype=np.float64)
        self.sum_arrays(buf)
        return tuple(float(v) for v in buf)

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on some rank (a stop request seen by one)."""
        return self.sum(float(bool(flag)))[0] > 0

    def broadcast_text(self, text: str | None, root: int = 0) -> str:
        """``root``'s text on every rank (UTF-8 bytes in a raw buffer, never pickled)."""
        if self.comm is None:
            return text or ""
        payload = np.frombuffer((text or "").encode(), np.uint8) if self.rank == root else None
        size = np.array([0 if payload is None else payload.size], np.int64)
        self.comm.Bcast(size, root=root)
        buf = payload.copy() if payload is not None else np.empty(int(size[0]), np.uint8)
        self.comm.Bcast(buf, root=root)
        return buf.tobytes().decode()

    def raise_first(self, error: BaseException | None) -> None:
        """Collective: when some rank holds an ``error``, every rank raises the lowest such rank's.

        A rank that fails alone while the others enter a collective would hang
        them; work that can fail on one rank's frames (reading its share,
        checking it for NaN) ends with this call.  Other ranks raise the same
        :mod:`difframe.errors` class with the same message (a rank with an
        error of its own raises that one).  The job then ends cleanly, every
        rank alike, and only the lowest failing rank reports it
        (:func:`reports`).
        """
        if self.comm is None:
            if error is not None:
                raise error
            return
        from mpi4py import MPI

        first = np.array([self.rank if error is not None else self.size], np.int64)
        self.comm.Allreduce(MPI.IN_PLACE, first, op=MPI.MIN)
        root = int(first[0])
        if root == self.size:
            return
        kinds = (errors.ParameterError, errors.UsageError, errors.DataError, errors.PluginError)
        mine = next((i for i, k in enumerate(kinds) if isinstance(error, k)), len(kinds))
        kind = np.array([mine], np.int64)
        self.comm.Bcast(kind, root=root)
        message = self.broadcast_text(str(error) if error is not None else None, root=root)
        if error is None:
            cls = kinds[int(kind[0])] if int(kind[0]) < len(kinds) else errors.DifframeError
            error = cls(message)
        setattr(error, _RAISED_HERE, root == self.rank)  # every rank leaves with it: no abort; ``root`` reports it
        raise error


def world() -> Ranks:
    """All ranks when started by an MPI launcher with more than one process, else one rank.

    mpi4py is imported only in the first case, so a plain run never
    initialises MPI.
    """
    if not any(k in os.environ for k in _LAUNCHER_VARIABLES):
        return Ranks()
    try:
        from mpi4py import MPI
    except ImportError:  # each process would run the whole job and write the same files
        raise errors.UsageError("started by an MPI launcher but mpi4py is not installed: install difframe[mpi], "
                                "or run without mpiexec") from None

    ranks = Ranks(MPI.COMM_WORLD)
    if ranks.size > 1:
        log.info("rank %d of %d", ranks.rank, ranks.size)
    return ranks


def reports(exc: BaseException) -> bool:
    """False on ranks that :meth:`Ranks.raise_first` gave another rank's failure: that rank reports it."""
    return getattr(exc, _RAISED_HERE, True)


def stranded(exc: BaseException) -> bool:
    """True when ``exc`` ends this rank's work while other MPI ranks may wait for it in a collective for ever:
    several ranks, and not raised on every rank by :meth:`Ranks.raise_first`."""
    if hasattr(exc, _RAISED_HERE) or not any(k in os.environ for k in _LAUNCHER_VARIABLES):
        return False
    try:
        from mpi4py import MPI
    except ImportError:  # then no rank ever started MPI
        return False

    return MPI.Is_initialized() and not MPI.Is_finalized() and MPI.COMM_WORLD.Get_size() > 1


@contextlib.contextmanager
def ending_jobs_here() -> Iterator[None]:
    """Within it, the caller (the CLI's main) words and ends :func:`stranded` failures; ``difframe.Run.run``,
    which ends them itself when embedded, leaves them to it."""
    global _ended_above
    outer, _ended_above = _ended_above, True
    try:
        yield
    finally:
        _ended_above = outer


def ended_above() -> bool:
    """Whether a caller's :func:`ending_jobs_here` will end the job for a stranded failure."""
    return _ended_above


def exit_status(exc: BaseException) -> int:
    """The CLI's exit status for a failure: 2 for a usage error, 130 for an interrupt, 1 for any other."""
    if isinstance(exc, KeyboardInterrupt):
        return 130
    return 2 if isinstance(exc, errors.UsageError) else 1


def end_job(exc: BaseException, report: Callable[[str], None]) -> NoReturn:
    """The last line of defence for a :func:`stranded` failure: report it once, then end every rank.

    ``report(who)`` prints or logs the failure; ``who`` is "rank r of n".
    ``MPI_Abort`` ends all ranks and mpiexec exits with :func:`exit_status`.
    A rank other than 0 waits :data:`ABORT_GRACE_SECONDS` first, so that a
    failure every rank meets (a bad parameter) is reported by rank 0 alone;
    every rank leaves :data:`REPORT_SECONDS` for its report to get out.
    MPICH's ``MPI_Abort`` returns once the launcher is told, so this rank then
    leaves at once (no traceback, no ``MPI_Finalize`` waiting for the others).
    """
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    if rank != 0:
        time.sleep(ABORT_GRACE_SECONDS)
    try:
        report(f"rank {rank} of {comm.Get_size()}")
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # closed or broken: nothing more can reach it
                pass
        time.sleep(REPORT_SECONDS)
        comm.Abort(exit_status(exc))
        os._exit(exit_status(exc))
