"""numba's on-disk cache of difframe's kernels, made stale by a change to any of difframe's numba sources.

Why: numba keys a cached kernel on the file that defines it.  A kernel that
calls or inlines numba functions of another file (the engines' kernels
inline the row helpers of difframe.ptycho.kernels and projection, vlog, the
FFT calls of frame_fft) keeps their old compiled code after that file
changes, until its own file changes too: after a ``git pull`` of an
editable install an engine could run yesterday's maths without a word.
Here every kernel defined in difframe's packages is stamped with its own
file and with all of difframe's source files that use numba, so that a
change to any of them recompiles every kernel once (a kernel's file alone
stays numba's key for everything else).  Kernels of third-party packages
keep numba's own rule.

:func:`install` is called by every difframe module that defines cached
kernels, before its first one; it adds the locators at the front of
numba's list (unless ``NUMBA_CACHE_LOCATOR_CLASSES`` chooses the locators).
"""

from __future__ import annotations

import functools
import hashlib
import logging
from pathlib import Path

import numba
from numba.core import caching

log = logging.getLogger(__name__)


@functools.cache
def roots() -> tuple[Path, ...]:
    """The directories of difframe's packages (core and built-in plugins: one tree when installed, two in a
    source checkout)."""
    import difframe
    import difframe.plugins

    found = []
    for package in (difframe, difframe.plugins):
        path = Path(package.__file__).resolve().parent
        if not any(path.is_relative_to(root) for root in found):
            found.append(path)
    return tuple(found)


@functools.cache
def sources_stamp(directories: tuple[Path, ...]) -> str:
    """A hash of the names and contents of every Python file under ``directories`` that uses numba."""
    digest = hashlib.sha256()
    files = sorted({path.resolve() for root in directories for path in root.rglob("*.py")})
    for path in files:
        text = path.read_bytes()
        if b"numba" in text:
            digest.update(str(path).encode() + b"\0" + text + b"\0")
    return digest.hexdigest()


class _StampedBySources:
    """A numba cache locator for files under :func:`roots` whose stamp adds :func:`sources_stamp`."""

    @classmethod
    def from_function(cls, py_func, py_file):
        path = Path(py_file).resolve()
        if not any(path.is_relative_to(root) for root in roots()):
            return None
        return super().from_function(py_func, py_file)

    def get_source_stamp(self):
        return super().get_source_stamp(), sources_stamp(roots())


def _numba_locator(name: str):
    """numba's locator class ``name`` (numba >= 0.62 spells it without the leading underscore)."""
    return getattr(caching, name, None) or getattr(caching, "_" + name, None)


_BASES = [_numba_locator(name) for name in ("UserProvidedCacheLocator", "InTreeCacheLocator",
                                            "UserWideCacheLocator")]
_IMPL = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
LOCATORS = tuple(type(base.__name__.lstrip("_") + "Stamped", (_StampedBySources, base), {})
                 for base in _BASES if base is not None)


def install() -> None:
    """Put difframe's locators first in numba's list (once per process)."""
    classes = getattr(_IMPL, "_locator_classes", None)
    if classes is None or len(LOCATORS) != len(_BASES):
        log.debug("numba %s: cache locators not found, kernels keep numba's own cache rule", numba.__version__)
        return
    if LOCATORS[0] not in classes:
        classes[:0] = LOCATORS
