"""Data preparation shared by every ptychography recipe.

A recipe only loads what it has (a :class:`~difframe.ptycho.raw.RawScan`:
frames, mask, positions and whatever geometry its source knows); :func:`prepare` then applies the
``scan.data`` parameters the same way for all of them, in ptypy's order:
frame selection (``num_frames``, ``positions_theory``, ``min_frames``),
``orientation``, centre (``center`` / ``auto_center``; near-field frames
default to their middle), crop to ``shape * rebin`` around the centre,
``rebin``; geometry conflicts between the
source and the parameters are settled by ``if_conflict_use_meta``; the result
is saved to ``dfile`` when ``save`` is set.  Every step works on the whole
stack of frames at once.

Under MPI (``context.ranks``, see :func:`difframe.ptycho.workflow.prepare_scans`)
the frame selection is decided on the counts and positions every rank knows,
then each rank loads only its block ``ranks.share(N)`` of the selected frames:
a recipe that gives its frames as a :class:`FrameSource` reads (or simulates)
nothing else.  The steps that look at all frames (the auto centre's summed
intensity, the NaN check) reduce over the ranks, so every rank gets the answer
one process would.

Refused up front, naming the source: positions that are NaN or infinite,
frames with NaN or negative counts on valid pixels
(:func:`~difframe.ptycho.raw.load_share`), a scan whose valid pixels hold no
count at all, and a share or crop that would not fit the memory budget
(:mod:`difframe.limits`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from difframe import progress
from difframe.errors import DataError, DifframeError, ParameterError, UsageError
from difframe.limits import array_bytes, check_allocation
from difframe.optics import wavelength_to_energy
from difframe.parallel import Ranks
from difframe.param import Param
from difframe.ptycho.data import PreparedData
from difframe.ptycho.ptyd import write_ptyd
from difframe.reftree import NODES
from difframe.ptycho.raw import LOAD_BYTES_PER_PIXEL, FrameSource, RawScan, load_share

log = logging.getLogger("difframe.ptycho.prepare")

#: frames are read from a file in steps of about this many bytes (4 per pixel), each step a tick of the loading bar
LOAD_STEP_BYTES = 64 << 20


def load_frames(raw: RawScan, share: slice, label: str, progress=None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`~difframe.ptycho.raw.load_share` read in steps of about :data:`LOAD_STEP_BYTES`, with a bar
    (``progress``, a :class:`difframe.progress.Progress`) ticking per step when there is more than one.

    Frames in memory, and shares of one step, are one call as before.  Each step is checked as load_share
    checks (errors name the frames by their index in the source); the masks are merged: one (H, W) mask when
    every step gave the same, else one per frame.
    """
    n = share.stop - share.start
    if not isinstance(raw.frames, FrameSource) or n == 0:
        return load_share(raw, share, label)
    pixels = int(np.prod(raw.frames.shape[1:]))
    step = max(1, LOAD_STEP_BYTES // (4 * max(pixels, 1)))
    if step >= n:
        return load_share(raw, share, label)
    source = raw.meta.get("source") or f"scan {label}"
    check_allocation(array_bytes((n, *raw.frames.shape[1:]), LOAD_BYTES_PER_PIXEL),
                     f"{source}: frames {share.start}..{share.stop - 1} of shape {tuple(raw.frames.shape[1:])}")
    frames, masks = None, []
    bar = progress.bar(f"scan {label}: reading frames", n, unit="frame") if progress is not None else None
    try:
        for start in range(share.start, share.stop, step):
            stop = min(start + step, share.stop)
            part, mask = load_share(raw, slice(start, stop), label)
            if frames is None:
                frames = np.empty((n, *part.shape[1:]), part.dtype)
            frames[start - share.start:stop - share.start] = part
            masks.append((start - share.start, stop - share.start, mask))
            if bar is not None:
                bar.update(stop - start)
    finally:
        if bar is not None:
            bar.close()
    first = masks[0][2]
    if all(m.ndim == 2 and (m is first or np.array_equal(m, first)) for _, _, m in masks):
        return frames, first
    merged = np.empty(frames.shape, bool)
    for a, b, m in masks:
        merged[a:b] = m
    return frames, merged


def orientation_flags(orientation: Any) -> tuple[bool, bool, bool]:
    """(transpose, flip rows, flip columns) for ptypy's orientation code or 3-tuple.

    The integer code's binary digits are the three flags: 1 flips columns
    (fliplr), 2 flips rows (flipud), 4 transposes, sums combine them.
    """
    if orientation is None:
        return (False, False, False)
    if isinstance(orientation, (bool, np.bool_)) or not isinstance(orientation, (int, np.integer, tuple, list)):
        raise ParameterError(f"scan.data.orientation: expected an int 0..7 or a 3-tuple of booleans, got {orientation!r}")
    if isinstance(orientation, (tuple, list)):
        if len(orientation) != 3:
            raise ParameterError(f"scan.data.orientation: a tuple must have 3 booleans "
                                 f"(transpose, flipud, fliplr), got {orientation!r}")
        return tuple(bool(v) for v in orientation)
    if not 0 <= int(orientation) <= 7:
        raise ParameterError(f"scan.data.orientation: code must be 0..7, got {orientation!r}")
    code = int(orientation)
    return (bool(code & 4), bool(code & 2), bool(code & 1))


def orient(stack: np.ndarray, center: tuple[float, float] | None, orientation: Any):
    """Apply an orientation to the last two axes of ``stack`` and to ``center``."""
    transpose, flipud, fliplr = orientation_flags(orientation)
    if transpose:
        stack = np.swapaxes(stack, -1, -2)
        center = None if center is None else (center[1], center[0])
    rows, cols = stack.shape[-2:]
    if flipud:
        stack = stack[..., ::-1, :]
        center = None if center is None else (rows - 1 - center[0], center[1])
    if fliplr:
        stack = stack[..., :, ::-1]
        center = None if center is None else (center[0], cols - 1 - center[1])
    return stack, center


def mass_center(frames: np.ndarray, mask: np.ndarray, ranks: Ranks | None = None) -> tuple[float, float]:
    """Centre of mass (row, col) of the valid intensity summed over all frames (of all ``ranks``)."""
    total = np.where(mask, frames, 0).sum(axis=0, dtype=np.float64)
    if ranks is not None:
        ranks.sum_arrays(total)
    weight = float(total.sum())
    if not weight > 0:
        raise DataError("auto_center: the frames hold no counts, there is no centre of mass")
    rows, cols = np.indices(total.shape)
    return (float((rows * total).sum() / weight), float((cols * total).sum() / weight))


def crop_pad(stack: np.ndarray, shape: tuple[int, int], center: tuple[float, float], fill=0):
    """Window of ``shape`` on the last two axes with ``center`` moved to ``shape // 2``.

    Parts of the window outside the frame are padded with ``fill``.  Returns the
    window and the centre's new (row, col).
    """
    out_shape = stack.shape[:-2] + tuple(shape)
    out = np.full(out_shape, fill, dtype=stack.dtype)
    starts = [int(np.round(c)) - s // 2 for c, s in zip(center, shape)]
    src, dst = [], []
    for start, size, full in zip(starts, shape, stack.shape[-2:]):
        lo, hi = max(start, 0), min(start + size, full)
        if hi <= lo:
            raise DataError(f"crop: a {tuple(shape)} window around centre {center} misses the "
                            f"{stack.shape[-2:]} frame entirely")
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[(..., *dst)] = stack[(..., *src)]
    new_center = tuple(c - s for c, s in zip(center, starts))
    return out, new_center


def rebin(stack: np.ndarray, factor: int) -> np.ndarray:
    """Sum ``factor`` x ``factor`` pixel blocks of the last two axes (shape must divide)."""
    if factor == 1:
        return stack
    rows, cols = stack.shape[-2:]
    if rows % factor or cols % factor:
        raise ParameterError(f"scan.data.rebin: {factor} does not divide the frame shape {(rows, cols)}")
    return stack.reshape(*stack.shape[:-2], rows // factor, factor, cols // factor, factor).sum(axis=(-3, -1))


def _pair(value: Any, name: str) -> tuple[Any, Any] | None:
    if value is None:
        return None
    arr = np.ravel(np.asarray(value))
    if arr.size == 1:
        return (arr[0].item(), arr[0].item())
    if arr.size != 2:
        raise ParameterError(f"{name}: expected one number or two (rows, cols), got {value!r}")
    return (arr[0].item(), arr[1].item())


def _settle(name: str, from_source: Any, from_params: Any, use_meta: bool, label: str, default: Any = None) -> Any:
    """Pick the source's or the parameters' value of one geometry quantity; a conflict is logged only when the
    parameter is not its ``default`` (scan.geometry's values: nobody gave them)."""
    if from_source is None:
        return from_params
    if from_params is None:
        return from_source
    given = default is None or not np.allclose(np.asarray(from_params, float), default, rtol=1e-9, atol=0)
    if given and not np.allclose(np.asarray(from_source, float), np.asarray(from_params, float), rtol=1e-9, atol=0):
        winner = "data source" if use_meta else "parameters"
        log.info("scan %s: %s differs between data source (%s) and parameters (%s); using the %s "
                    "(scan.if_conflict_use_meta=%s)", label, name, from_source, from_params, winner, use_meta)
    return from_source if use_meta else from_params


def geometry_from_params(p: Param) -> dict[str, Any]:
    """Geometry given by the user: scan.data.* first, else scan.geometry.*."""
    data, geo = p.get("data") or {}, p.get("geometry") or {}
    energy = data.get("energy")
    if energy is None:
        energy = geo.get("energy")
        if energy is None and geo.get("lam") is not None:
            energy = wavelength_to_energy(geo.get("lam"))
    psize = data.get("psize")
    psize = geo.get("psize") if psize is None else psize
    distance = data.get("distance")
    distance = geo.get("distance") if distance is None else distance
    return {"energy": energy, "distance": distance, "psize": _pair(psize, "scan.data.psize"),
            "propagation": geo.get("prop_type")}


def select_frames(raw: RawScan, data_p: Param, context_positions: np.ndarray | None, label: str):
    """(N, positions (N, 2)): how many of the source's frames ``num_frames``, ``positions_theory``
    and ``min_frames`` keep (always the first N), and their positions."""
    available = int(raw.frames.shape[0])
    positions = raw.positions
    theory = data_p.get("positions_theory")
    num = data_p.get("num_frames")
    if theory is not None:
        theory = np.asarray(theory, dtype=float)
        if theory.ndim != 2 or theory.shape[1] != 2:
            raise ParameterError(f"scans.{label}.data.positions_theory: expected (N, 2) positions, got shape {theory.shape}")
        positions, num = theory, len(theory)
    elif positions is None:
        positions = context_positions
    count = available
    if num is not None:
        if num > available:
            if theory is not None:
                raise DataError(f"scan {label}: positions_theory has {num} positions but the data only "
                                f"{available} frames")
            log.info("scan %s: num_frames=%d but only %d frames available", label, num, available)
        count = min(num, available)
    if positions is None:
        raise DataError(f"scan {label}: the data carry no positions and the scan has no pattern (scan.xy)")
    positions = np.asarray(positions, dtype=float)
    if positions.ndim != 2 or positions.shape[1] != 2:
        raise DataError(f"{raw.meta.get('source') or f'scan {label}'}: positions have shape {positions.shape}, "
                        f"expected (N, 2)")
    bad = ~np.isfinite(positions[:count]).all(axis=1)
    if bad.any():
        raise DataError(f"{raw.meta.get('source') or f'scan {label}'}: positions of frames "
                        f"{np.flatnonzero(bad)[:10].tolist()} are NaN or infinite")
    if len(positions) < count:
        raise DataError(f"scan {label}: {count} frames but only {len(positions)} positions")
    min_frames = data_p.get("min_frames") or 1
    if count < min_frames:
        raise DataError(f"scan {label}: {count} frames, fewer than scan.data.min_frames={min_frames}")
    return count, positions[:count]


def common_mask(mask: np.ndarray, ranks: Ranks) -> np.ndarray:
    """One (H, W) mask when the (n, H, W) masks of every frame on every rank are the same, else ``mask``.

    A .ptyd stores a weight map per frame even when they are all alike; one
    map instead of N spares a byte per pixel here and four in the model.
    """
    if mask.ndim == 2:
        return mask
    alike = bool((mask == mask[0]).all())
    first = mask[0].astype(np.uint8)
    ranks.broadcast_arrays(first)
    alike = not ranks.any(not (alike and np.array_equal(first, mask[0])))
    return mask[0].copy() if alike else mask


def prepare(raw: RawScan, scan_params: Any, context: Any, *, save: bool = True) -> PreparedData:
    """Apply the ``scan.data`` preparation to ``raw`` and return the scan's PreparedData.

    ``save=False`` skips writing ``dfile`` (the ``file`` recipe reads it instead).
    """
    p = Param(scan_params)
    data_p = p.get("data") or Param()
    label = context.label
    ranks = getattr(context, "ranks", None) or Ranks()
    if not isinstance(raw.frames, FrameSource):
        raw = RawScan(**{**raw.__dict__, "frames": np.asarray(raw.frames)})
    if len(raw.frames.shape) != 3:
        raise DataError(f"scan {label}: frames must be an (N, H, W) stack, got shape {raw.frames.shape}")
    if raw.mask is not None and np.shape(raw.mask) not in (tuple(raw.frames.shape), tuple(raw.frames.shape[1:])):
        raise DataError(f"scan {label}: mask shape {np.shape(raw.mask)} fits neither frames {raw.frames.shape} "
                        f"nor one frame")
    count, positions = select_frames(raw, data_p, getattr(context, "positions", None), label)
    if count < ranks.size:
        raise UsageError(f"scan {label}: {count} frames for {ranks.size} MPI ranks; start at most {count} ranks")
    share = ranks.share(count)
    failure = None
    try:
        frames, mask = load_frames(raw, share, label, progress.of_context(context))
    except DataError as err:
        failure = err
    ranks.raise_first(failure)  # one rank's unreadable or NaN frames stop all ranks here, not in a collective
    mask = common_mask(mask, ranks)
    (total,) = ranks.sum(float(np.sum(frames, where=np.broadcast_to(mask, frames.shape), dtype=np.float64)))
    if not total > 0:
        raise DataError(f"{raw.meta.get('source') or f'scan {label}'}: the {count} frames hold no counts on their "
                        f"valid pixels; there is nothing to reconstruct")

    center = _pair(raw.center, "data source center")
    frames, center = orient(frames, center, data_p.get("orientation"))
    mask, _ = orient(mask, None, data_p.get("orientation"))
    psize = raw.psize_m
    if psize is not None and orientation_flags(data_p.get("orientation"))[0]:
        psize = (psize[1], psize[0])

    user_center = _pair(data_p.get("center"), "scan.data.center")
    if user_center is not None and isinstance(user_center[0], str):
        raise ParameterError(f"scan.data.center: expected (row, col) pixels, got {data_p.get('center')!r}")
    use_meta = bool(p.get("if_conflict_use_meta", True))
    center = _settle("center", center, user_center, use_meta, label)
    given = geometry_from_params(p)
    propagation = raw.propagation or given["propagation"] or "farfield"
    auto = data_p.get("auto_center")
    if auto or (auto is None and center is None and propagation == "farfield"):
        center = mass_center(frames, mask, ranks)
        log.info("scan %s: auto centre at (%.2f, %.2f)", label, *center)
    if center is None:  # near field: the frame's middle
        center = (frames.shape[1] // 2, frames.shape[2] // 2)

    failure = None
    try:  # a budget, read on each rank, may refuse on one only: all ranks raise together
        factor = int(data_p.get("rebin") or 1)
        shape = _pair(data_p.get("shape"), "scan.data.shape")
        if shape is not None:
            window = (int(shape[0]) * factor, int(shape[1]) * factor)
            check_allocation(array_bytes((len(frames), *window), frames.dtype.itemsize + 1),
                             f"scans.{label}.data.shape = {data_p.get('shape')} (rebin {factor}): the cropped frames",
                             ParameterError)
            frames, new_center = crop_pad(frames, window, center)
            mask, _ = crop_pad(mask, window, center, fill=False)
            center = new_center
        frames = rebin(frames, factor)
        mask = rebin(mask.astype(np.int32), factor) == factor * factor
        center = ((center[0] - (factor - 1) / 2) / factor, (center[1] - (factor - 1) / 2) / factor)

        geometry = {k: NODES[f"scan.geometry.{k}"].default for k in ("energy", "distance", "psize")}
        energy = _settle("energy", raw.energy_kev, given["energy"], use_meta, label, geometry["energy"])
        distance = _settle("distance", raw.distance_m, given["distance"], use_meta, label, geometry["distance"])
        psize = _settle("psize", psize, given["psize"], use_meta, label, geometry["psize"])
        for name, value in (("energy", energy), ("distance", distance), ("psize", psize)):
            if value is None:
                lam = " (and .lam)" if name == "energy" else ""
                raise ParameterError(f"scans.{label}.geometry.{name}{lam} is None and the data source does not give "
                                     f"the {name}: set it")
        psize = (psize[0] * factor, psize[1] * factor)

        meta = dict(raw.meta)
        meta["preparation"] = {k: data_p.get(k) for k in
                               ("shape", "center", "auto_center", "rebin", "orientation", "num_frames", "min_frames")}
        prepared = PreparedData(label=label, data=frames, mask=mask, positions=positions, energy_kev=energy,
                                distance_m=distance, psize_m=psize, center=center, propagation=propagation, meta=meta,
                                first=share.start, ranks=ranks)
    except DifframeError as err:
        failure = err
    ranks.raise_first(failure)
    dfile, mode = data_p.get("dfile"), data_p.get("save")
    if save and dfile and mode and not getattr(context, "dry_run", False):
        write_ptyd(Path(dfile), prepared, save=mode, chunk_format=data_p.get("chunk_format") or ".chunk%02d",
                   info=Param(data_p).to_dict())
    return prepared
