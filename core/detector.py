"""Detector frames: one in-memory record for every reader, and the choice of reader.

A reader plugin (``difframe.plugins.detectors.cbf``, ``.edf`` or a third party's)
turns a file into a :class:`Frame`.  :func:`open_frame` picks the reader from the
file's first (decompressed) bytes, then from its extension, so a mis-named file
is still read by the right reader.

Metadata are typed and in SI units whatever the file wrote: the keys are always
those of :data:`METADATA_FIELDS`, with ``None`` for what the file does not say.

Files may be hostile (docs/security.md, "Detector files"): readers open them with
:class:`FrameFile` (regular files only, decompressed on the fly, read no further
than asked) and check the shape a header declares with :func:`check_frame_size`
before reading it.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import logging
import os
import re
import stat
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from difframe.errors import DataError, UsageError
from difframe.limits import check_allocation

log = logging.getLogger("difframe.detector")

#: typed metadata keys, in the order ``difframe inspect`` prints them
METADATA_FIELDS = (
    "wavelength_m",
    "distance_m",
    "beam_center_px",  # [x, y]: x along the fast (column) axis, y along the slow (row) axis
    "pixel_size_m",  # [x, y]
    "start_angle_deg",
    "angle_increment_deg",
    "exposure_s",
    "detector",
)

#: compression suffixes fabio reads transparently
COMPRESSION_SUFFIXES = (".gz", ".bz2")

HEAD_BYTES = 4096


@dataclass
class Frame:
    """One detector frame: ``data`` (rows, cols) and typed ``metadata``.

    ``header`` keeps the file's own header entries (strings) for what the typed
    metadata do not cover.
    """

    data: np.ndarray
    metadata: dict = field(default_factory=lambda: empty_metadata())
    header: dict = field(default_factory=dict)


@contextlib.contextmanager
def quiet_fabio():
    """Silence fabio's own log lines around code that may call fabio (the harvest wraps its loop in it).

    The built-in readers no longer use fabio; third-party readers may.  Cheap when
    already quiet, since every level change clears the logging caches.
    """
    logger = logging.getLogger("fabio")
    level = logger.level
    if level >= logging.CRITICAL:
        yield
        return
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def empty_metadata() -> dict:
    return {key: None for key in METADATA_FIELDS}


# -- guarded reading (docs/security.md, "Detector files") ------------------------------------

#: default cap on the decoded size of one frame; ``DIFFRAME_MAX_FRAME_BYTES`` changes it
DEFAULT_MAX_FRAME_BYTES = 512 * 2**20
#: the longest (decompressed) header a reader looks through for the start of the data
MAX_HEADER_BYTES = 2**20
#: what a CBF whose binary section fails its Content-MD5 does (``DIFFRAME_BAD_CHECKSUM``)
CHECKSUM_POLICIES = ("error", "drop")


def max_frame_bytes() -> int:
    """The decoded-size cap of one frame: ``DIFFRAME_MAX_FRAME_BYTES`` (bytes) or the default."""
    text = os.environ.get("DIFFRAME_MAX_FRAME_BYTES", "").strip()
    if not text:
        return DEFAULT_MAX_FRAME_BYTES
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"DIFFRAME_MAX_FRAME_BYTES={text!r} must be a positive number of bytes")
    return int(text)


def checksum_policy() -> str:
    """``error`` (default) or ``drop``, from ``DIFFRAME_BAD_CHECKSUM``."""
    policy = os.environ.get("DIFFRAME_BAD_CHECKSUM", "error").strip().lower() or "error"
    if policy not in CHECKSUM_POLICIES:
        raise UsageError(f"DIFFRAME_BAD_CHECKSUM={policy!r} must be one of {', '.join(CHECKSUM_POLICIES)}")
    return policy


def shown(text: str, chars: int = 32) -> str:
    """A header value for a message: quoted, cut to ``chars`` (headers may hold anything)."""
    return repr(text[:chars]) + ("..." if len(text) > chars else "")


def check_frame_size(path, shape: tuple[int, ...], dtype, keys: str) -> None:
    """Refuse a declared frame shape that is empty, decodes beyond :func:`max_frame_bytes` or does not fit
    the memory budget (:mod:`difframe.limits`).

    Called before anything of that size is read or allocated; ``keys`` names the
    header entries that declared it.
    """
    if len(shape) != 2 or min(shape) < 1:
        raise DataError(f"detector frame {path}: its header ({keys}) declares a frame of shape "
                        f"{' x '.join(map(str, shape))}, not a 2-D image")
    size = shape[0] * shape[1] * np.dtype(dtype).itemsize
    limit = max_frame_bytes()
    declared = f"its header ({keys}) declares {shape[0]} x {shape[1]} {np.dtype(dtype).name}"
    if size > limit:
        raise DataError(f"detector frame {path}: {declared} = {size} bytes, more than the {limit} bytes allowed "
                        "per frame (DIFFRAME_MAX_FRAME_BYTES)")
    check_allocation(size, f"detector frame {path} ({declared})")


def open_regular(path: str | Path):
    """``path`` opened for binary reading if it is a regular file, else one DataError naming it.

    FIFOs, devices and sockets (or links to them, such as ``/dev/zero``) are refused
    before they are opened; the file is opened non-blocking and checked again, so
    swapping it for a FIFO in between cannot block the reader either.
    """
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise DataError(f"detector frame {path} does not exist") from None
    except OSError as exc:
        raise DataError(f"cannot open detector frame {path}: {exc.strerror or exc}") from None
    _require_regular(path, info.st_mode)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise DataError(f"cannot open detector frame {path}: {exc.strerror or exc}") from None
    try:
        _require_regular(path, os.fstat(fd).st_mode)
    except DataError:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def _require_regular(path: Path, mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a character device" if stat.S_ISCHR(mode)
            else "a block device" if stat.S_ISBLK(mode) else "a directory" if stat.S_ISDIR(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
    target = os.path.realpath(path)
    via = f" (a link to {target})" if target != os.path.abspath(path) else ""
    raise DataError(f"detector frame {path}{via} is {kind}; frames are read from regular files only")


class FrameFile:
    """A detector file for bounded reading: a regular file, gzip/bzip2 decompressed on the fly.

    Readers ask for what the header declares (``read``) or search a marker within a
    limit (``read_until``), so a decompression bomb or a file without end is never
    read beyond what the frame needs.  Decompression errors become DataErrors.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._raw = open_regular(self.path)
        try:
            magic = self._raw.read(3)
            self._raw.seek(0)
        except OSError as exc:
            self._raw.close()
            raise DataError(f"cannot read detector frame {self.path}: {exc.strerror or exc}") from None
        if magic[:2] == b"\x1f\x8b":
            self._stream = gzip.GzipFile(fileobj=self._raw, mode="rb")
        elif magic == b"BZh":
            self._stream = bz2.BZ2File(self._raw, mode="rb")
        else:
            self._stream = self._raw
        self._pending = b""
        self.offset = 0  # decompressed bytes handed out so far

    def __enter__(self) -> "FrameFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stream.close()
        self._raw.close()

    def _chunk(self, size: int) -> bytes:
        try:
            return self._stream.read(size)
        except (OSError, EOFError, ValueError, zlib.error) as exc:
            raise DataError(f"detector frame {self.path} is truncated or corrupt ({exc})") from None

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes (fewer only at the end of the data)."""
        parts, have = [self._pending[:size]], min(size, len(self._pending))
        self._pending = self._pending[size:]
        while have < size:
            chunk = self._chunk(min(size - have, 2**22))
            if not chunk:
                break
            parts.append(chunk)
            have += len(chunk)
        data = b"".join(parts)
        self.offset += len(data)
        return data

    def read_until(self, marker: bytes, limit: int, what: str) -> bytes:
        """The bytes up to and including ``marker``, looked for in the next ``limit`` bytes."""
        buffer = bytearray(self._pending)
        self._pending = b""
        start = 0
        while True:
            found = buffer.find(marker, start)
            if found >= 0:
                end = found + len(marker)
                self._pending = bytes(buffer[end:])
                self.offset += end
                return bytes(buffer[:end])
            if len(buffer) >= limit:
                raise DataError(f"detector frame {self.path}: no {what} within its first {limit} bytes")
            start = max(0, len(buffer) - len(marker) + 1)
            chunk = self._chunk(min(65536, limit - len(buffer) + len(marker)))
            if not chunk:
                raise DataError(f"detector frame {self.path} is truncated inside its header "
                                f"({len(buffer) + self.offset} bytes, no {what})")
            buffer += chunk


def read_head(path: str | Path, size: int = HEAD_BYTES) -> bytes:
    """The first ``size`` bytes of ``path`` after gzip/bzip2 decompression (regular files only)."""
    with FrameFile(path) as stream:
        return stream.read(size)


def format_suffix(path: str | Path) -> str:
    """The format extension of ``path`` without a compression suffix (``a.cbf.gz`` -> ``.cbf``)."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    while suffixes and suffixes[-1] in COMPRESSION_SUFFIXES:
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def choose_reader(path: str | Path, plugins) -> Any:
    """The reader spec for ``path``: first whose ``sniff`` accepts the head, else by extension."""
    readers = plugins.specs("detector_reader")
    if not readers:
        raise DataError("no detector reader plugin is registered (see `difframe list-plugins --kind detector_reader`)")
    head = read_head(path)
    for spec in readers.values():
        if spec.sniff(head):
            return spec
    suffix = format_suffix(path)
    for spec in readers.values():
        if suffix in spec.extensions:
            return spec
    known = ", ".join(f"{name} ({' '.join(spec.extensions)})" for name, spec in readers.items())
    raise DataError(f"{path} is not a detector frame any reader recognises (readers: {known})")


def open_frame(path: str | Path, plugins=None) -> Frame:
    """Read one frame with the reader its content (or name) calls for.

    ``plugins`` is a :class:`difframe.manager.PluginManager`; a fresh one is made
    when omitted.
    """
    if plugins is None:
        from difframe.manager import PluginManager

        plugins = PluginManager()
    spec = choose_reader(path, plugins)
    log.debug("reading %s with reader %s", path, spec.name)
    return spec.read(path)


# -- header parsing ------------------------------------------------------------

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_LENGTH_UNITS = {"m": 1.0, "mm": 1e-3, "um": 1e-6, "nm": 1e-9, "a": 1e-10, "angstrom": 1e-10}


def _line_value(text: str, key: str) -> str | None:
    match = re.search(rf"^#\s*{re.escape(key)}\b[:=]?\s*(.*?)\s*$", text, flags=re.MULTILINE | re.IGNORECASE)
    return match.group(1) if match else None


def _numbers(text: str | None) -> list[float]:
    return [float(x) for x in re.findall(_NUMBER, text)] if text else []


def _length(text: str | None, default_unit: str = "m") -> float | None:
    """``'0.351 m'`` -> 0.351; ``'0.96859 A'`` -> 9.6859e-11."""
    numbers = _numbers(text)
    if not numbers:
        return None
    unit = re.search(rf"{_NUMBER}\s*([A-Za-z]+)", text)
    scale = _LENGTH_UNITS.get(unit.group(1).lower(), None) if unit else None
    value = numbers[0] * (scale if scale is not None else _LENGTH_UNITS[default_unit])
    return float(f"{value:.12g}")  # 0.96859 A -> 9.6859e-11, not 9.685899999999999e-11


def parse_pilatus_header(text: str) -> dict:
    """Typed metadata from a Pilatus/Dectris mini-CBF header (``# Key value unit`` lines)."""
    meta = empty_metadata()
    detector = _line_value(text, "Detector")
    if detector:
        meta["detector"] = re.split(r",|\s+S/N", detector)[0].strip()
    meta["wavelength_m"] = _length(_line_value(text, "Wavelength"), "a")
    meta["distance_m"] = _length(_line_value(text, "Detector_distance"), "m")
    beam = _numbers(_line_value(text, "Beam_xy"))
    if len(beam) >= 2:
        meta["beam_center_px"] = beam[:2]
    pixel = _line_value(text, "Pixel_size")
    if pixel:
        parts = [_length(part, "m") for part in re.split(r"\s+x\s+", pixel)]
        if len(parts) == 2 and None not in parts:
            meta["pixel_size_m"] = parts
    for key, name in (("start_angle_deg", "Start_angle"), ("angle_increment_deg", "Angle_increment"),
                      ("exposure_s", "Exposure_time")):
        values = _numbers(_line_value(text, name))
        if values:
            meta[key] = values[0]
    return meta


def _loop_rows(header: Mapping[str, Any], category: str) -> list[dict[str, str]]:
    """Rows of the CIF loop of ``category`` in fabio's parsed full-CBF header."""
    rows = []
    for names, values in header.get("loop_", []) or []:
        decoded = [n.decode() if isinstance(n, bytes) else n for n in names]
        if decoded and decoded[0].startswith(category + "."):
            for row in values:
                rows.append({(k.decode() if isinstance(k, bytes) else k).split(".", 1)[1]:
                             (v.decode() if isinstance(v, bytes) else v) for k, v in row.items()})
    return rows


def _cif_float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def parse_full_cbf_header(header: Mapping[str, Any]) -> dict:
    """Typed metadata from the imgCIF categories of a full CBF (fabio's ``header``)."""
    meta = empty_metadata()
    for row in _loop_rows(header, "_diffrn_radiation_wavelength")[:1]:
        value = _cif_float(row.get("wavelength"))
        meta["wavelength_m"] = None if value is None else value * 1e-10
    for row in _loop_rows(header, "_diffrn_measurement")[:1]:
        value = _cif_float(row.get("sample_detector_distance"))
        meta["distance_m"] = None if value is None else value * 1e-3
    sizes = {row.get("index"): _cif_float(row.get("size")) for row in _loop_rows(header, "_array_element_size")}
    if sizes.get("1") is not None and sizes.get("2") is not None:
        meta["pixel_size_m"] = [sizes["1"], sizes["2"]]
    scan_axes = [row for row in _loop_rows(header, "_diffrn_scan_axis") if _cif_float(row.get("angle_range"))]
    if scan_axes:  # the rotating axis is the one with a non-zero range
        meta["start_angle_deg"] = _cif_float(scan_axes[0].get("angle_start"))
        meta["angle_increment_deg"] = _cif_float(scan_axes[0].get("angle_increment"))
    for row in _loop_rows(header, "_diffrn_scan_frame")[:1]:
        meta["exposure_s"] = _cif_float(row.get("integration_time"))
    for row in _loop_rows(header, "_diffrn_detector")[:1]:
        meta["detector"] = row.get("type")
    return meta


def merge_metadata(primary: dict, fallback: dict) -> dict:
    """``primary`` with its ``None`` fields filled from ``fallback``."""
    return {key: primary.get(key) if primary.get(key) is not None else fallback.get(key) for key in METADATA_FIELDS}


# -- modular detectors -----------------------------------------------------------


def tiled_shape(modules: tuple[int, int], module_shape: tuple[int, int], gap: tuple[int, int]) -> tuple[int, int]:
    """(rows, cols) of a detector of ``modules`` (rows, cols) modules separated by ``gap`` dead pixels."""
    return tuple(n * size + (n - 1) * g for n, size, g in zip(modules, module_shape, gap))


def sensitive_mask(template) -> np.ndarray:
    """Boolean (rows, cols) map of a detector template: False on the dead bands between modules."""
    mask = np.ones(template.shape, dtype=bool)
    if template.module_shape is None:
        return mask
    for axis in (0, 1):
        pitch = template.module_shape[axis] + template.gap[axis]
        dead = (np.arange(template.shape[axis]) % pitch) >= template.module_shape[axis]
        if axis == 0:
            mask[dead, :] = False
        else:
            mask[:, dead] = False
    return mask
