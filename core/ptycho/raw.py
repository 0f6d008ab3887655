"""What a recipe read (:class:`RawScan`), and reading a rank's share of its frames with the checks every source needs.

Readers (``.ptyd``, CXI, beamline layouts, simulation) produce a RawScan;
:mod:`difframe.ptycho.prepare` turns it into PreparedData and may save it as a
``.ptyd``.  Keeping the record here lets the ``.ptyd`` reader and writer and
the preparation import each other's needs without a cycle.

:func:`load_share` refuses before reading a share that would not fit the memory
budget, and after reading frames holding NaN, infinity or negative counts on
valid pixels, naming the source and the frames; a reader's own failure to read
(a corrupt chunk) arrives as a DataError naming its file and node.  The values
-1 and -2 in integer frames are the detectors' flags (Pilatus and Eiger: module
gaps, bad pixels), not counts: they are masked, not refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from difframe.errors import DataError
from difframe.limits import array_bytes, check_allocation

log = logging.getLogger("difframe.ptycho.raw")

#: integer values detectors write for pixels without a count (-1 module gap, -2 bad pixel)
DETECTOR_FLAGS = (-1, -2)
#: bytes per pixel while a share is loaded: the frames as read (up to 4 bytes), their float32 copy, the mask
LOAD_BYTES_PER_PIXEL = 9


@dataclass
class FrameSource:
    """Frames read (or simulated) on demand, so that a rank loads only its share.

    ``shape`` (N, H, W) of the whole stack; ``read(start, stop)`` returns
    frames ``start .. stop - 1`` and their (n, H, W) masks, or None for the
    masks when the RawScan's (H, W) mask (or none) holds for every frame.
    """

    shape: tuple[int, int, int]
    read: Callable[[int, int], tuple[np.ndarray, np.ndarray | None]]


@dataclass
class RawScan:
    """What a recipe read from its source; ``None`` means "the source does not say".

    ``frames`` (N, H, W) counts, in memory or as a :class:`FrameSource`;
    ``mask`` (H, W) or, for frames in memory, (N, H, W), True = valid;
    ``positions`` (N, 2) metres (y, x); ``psize_m`` (y, x) metres; ``center``
    (row, col) of the beam in ``frames``.
    """

    frames: np.ndarray | FrameSource
    mask: np.ndarray | None = None
    positions: np.ndarray | None = None
    energy_kev: float | None = None
    distance_m: float | None = None
    psize_m: tuple[float, float] | None = None
    center: tuple[float, float] | None = None
    propagation: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def _frame_list(share: slice, bad: np.ndarray) -> str:
    found = share.start + np.flatnonzero(bad)
    return f"{found[:10].tolist()}{' ...' if found.size > 10 else ''}"


def load_share(raw: RawScan, share: slice, label: str) -> tuple[np.ndarray, np.ndarray]:
    """Frames ``share`` of ``raw`` and their mask ((H, W) or (n, H, W)); DataError naming the source's bad frames."""
    source = raw.meta.get("source") or f"scan {label}"
    if isinstance(raw.frames, FrameSource):
        shape = (share.stop - share.start, *raw.frames.shape[1:])
        check_allocation(array_bytes(shape, LOAD_BYTES_PER_PIXEL),
                         f"{source}: frames {share.start}..{share.stop - 1} of shape {tuple(shape[1:])}")
        try:
            frames, masks = raw.frames.read(share.start, share.stop)
        except (OSError, RuntimeError) as err:  # a reader's library error (HDF5: a corrupt chunk)
            raise DataError(f"{source}: cannot read frames {share.start}..{share.stop - 1} ({err})") from None
    else:
        frames = raw.frames[share]
        masks = raw.mask[share] if raw.mask is not None and raw.mask.ndim == 3 else None
    frames = np.asarray(frames)
    if masks is None:
        masks = np.ones(frames.shape[1:], bool) if raw.mask is None else np.asarray(raw.mask, bool)
    masks = np.asarray(masks, bool)
    if frames.dtype.kind == "i":
        flagged = np.isin(frames, DETECTOR_FLAGS) & masks
        if flagged.any():
            masks = masks & ~flagged
            log.info("%s: %d pixels of frames %d..%d hold the detector flags -1/-2 (gaps, bad pixels): masked",
                     source, int(flagged.sum()), share.start, share.stop - 1)
    if frames.dtype.kind in "fc":
        bad = ~np.isfinite(frames.reshape(len(frames), -1)).all(axis=1)
        if bad.any():
            raise DataError(f"{source}: frames {_frame_list(share, bad)} contain NaN or infinity")
    if frames.dtype.kind in "if":
        valid = np.where(masks, frames, 0)
        negative = (valid < 0).reshape(len(frames), -1).any(axis=1)
        if negative.any():
            raise DataError(f"{source}: frames {_frame_list(share, negative)} have negative counts on valid pixels "
                            f"(lowest {valid.min()}); counts are photons: mask such pixels")
    return frames, masks


def load_all(raw: RawScan, label: str) -> RawScan:
    """``raw`` with all its frames read into memory, and its mask per frame only where the source has one."""
    frames, mask = load_share(raw, slice(0, raw.frames.shape[0]), label)
    return RawScan(**{**raw.__dict__, "frames": frames, "mask": mask if mask.ndim == 3 else raw.mask})
