"""Memory budget: every allocation whose size a file or parameter decides is checked here before it is made.

A file may declare any shape (a 0.6 MB compressed ``.ptyd`` can declare
frames of 10^4 x 10^4), and sizes derived from its values (the object frame
from positions and pixel size, a resampling ratio) are as unbounded.  Checking
them against a budget first turns what would be a ``MemoryError`` naming
nothing, or the machine swapping, into one message naming the file, node and
size.

The budget is the memory the machine has available now (``MemAvailable`` of
``/proc/meminfo``, else free physical pages), or ``DIFFRAME_MEMORY_LIMIT`` when
set: bytes, or a number with a unit such as ``512M``, ``8G``, ``1.5GiB``
(K, M, G, T are powers of 1024).
"""

from __future__ import annotations

import os
import re
import time

from difframe.errors import DataError, UsageError

ENV_MEMORY = "DIFFRAME_MEMORY_LIMIT"
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str, name: str = ENV_MEMORY) -> int:
    """Bytes from ``'123'``, ``'512M'``, ``'8G'``, ``'1.5GiB'``; UsageError naming ``name`` otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)(?:e(\d+))?\s*([kmgt]?)(?:i?b)?\s*", str(text), re.IGNORECASE)
    if not match:
        raise UsageError(f"{name} = {text!r}: expected bytes or a number with K, M, G or T (e.g. 8G)")
    number, exponent, unit = match.groups()
    value = float(number) * 10 ** int(exponent or 0) * _UNITS[unit.lower()]
    if not 0 < value < 2**63:
        raise UsageError(f"{name} = {text!r}: must be positive and below 8 EiB")
    return int(value)


def available_memory() -> int:
    """Bytes the machine can give now without swapping (MemAvailable; free pages where there is no /proc).

    Read at most once a second: a tree of thousands of small datasets checks each.
    """
    now = time.monotonic()
    if now - _measured[0] > 1.0:
        _measured[:] = [now, _read_available()]
    return _measured[1]


_measured = [-2.0, 0]  # (when, bytes) of the last reading


def _read_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): no measurable budget, only the cap
        return 2**63 - 1


def memory_budget() -> int:
    """Bytes one allocation may take: ``DIFFRAME_MEMORY_LIMIT`` if set, else the available memory."""
    given = os.environ.get(ENV_MEMORY)
    return parse_size(given) if given else available_memory()


def human(nbytes: float) -> str:
    """``nbytes`` as '4.3 TiB', '512 MiB', ..."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(nbytes) < 1024 or unit == "PiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.3g} {unit}"
        nbytes /= 1024
    raise AssertionError("unreachable")


def check_allocation(nbytes: float, what: str, error: type[Exception] = DataError) -> None:
    """Refuse (``error``, DataError by default) an allocation of ``nbytes`` over the budget; ``what`` names it.

    ``nbytes`` may be a float: sizes computed from a hostile shape or ratio can
    exceed any integer type, and NaN or infinity are refused as well.
    """
    budget = memory_budget()
    if not nbytes <= budget:  # also catches NaN
        size, limit = ("an unbounded amount" if not nbytes < float("inf") else human(nbytes)), human(budget)
        if size == limit:  # just over: the rounded forms alike would read as no excess
            size, limit = f"{nbytes:.0f} bytes", f"{budget} bytes"
        origin = ENV_MEMORY if os.environ.get(ENV_MEMORY) else f"the available memory; set {ENV_MEMORY} to change it"
        raise error(f"{what} needs {size} of memory, over the budget of {limit} ({origin})")


def array_bytes(shape, itemsize: int) -> float:
    """Bytes of an array of ``shape``, as a float so that no product overflows."""
    total = float(itemsize)
    for n in shape:
        total *= float(n)
    return total
