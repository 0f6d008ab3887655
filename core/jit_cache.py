"""numba's on-disk cache of difframe's kernels, made stale by a change to any of difframe's numba sources.

Why: numba keys a cached kernel on the file that defines it.  A kernel that
calls or inlines numba functions of another file (the engines' kernels
inline the row helpers of difframe.ptycho.kernels and projection, vlog, the
FFT calls of frame_fft) keeps their old compiled code after that file
changes, until its own file changes too: after a ``git pull`` of an
editable install an engine could run yesterday's maths without a word.
Here every kernel defined in difframe's packages (core and built-in
plugins) is stamped with its own file and with all of the core's source
files that use numba (what any kernel may call or inline), so that a change
to one of those recompiles every kernel once, while a change to a plugin's
own kernel file recompiles that file's kernels only, as numba does (a
plugin's kernels call the core's, never another plugin's).  Kernels of
third-party packages keep numba's own rule.

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
def roots() -> tuple[Path, Path]:
    """(core, built-in plugins): the directories of difframe's two packages (the plugins' inside the core's when
    installed, beside it in a source checkout)."""
    import difframe
    import difframe.plugins

    return Path(difframe.__file__).resolve().parent, Path(difframe.plugins.__file__).resolve().parent


@functools.cache
def sources_stamp(core: Path, plugins: Path) -> str:
    """A hash of the names and contents of the Python files under ``core`` (not under ``plugins``) that use
    numba."""
    digest = hashlib.sha256()
    for path in sorted(core.rglob("*.py")):
        text = path.read_bytes()
        if b"numba" in text and not path.resolve().is_relative_to(plugins):
            digest.update(str(path.relative_to(core)).encode() + b"\0" + text + b"\0")
    return digest.hexdigest()


class _StampedBySources:
    """A numba cache locator for difframe's files (under :func:`roots`) whose stamp adds :func:`sources_stamp`."""

    @classmethod
    def from_function(cls, py_func, py_file):
        path = Path(py_file).resolve()
        if not any(path.is_relative_to(root) for root in roots()):
            return None
        return super().from_function(py_func, py_file)

    def get_source_stamp(self):
        return super().get_source_stamp(), sources_stamp(*roots())


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
