"""``.ptyd`` prepared-data files in ptypy's layout.

A ``.ptyd`` is a typed HDF5 tree (:mod:`difframe.ptycho.h5typed`) with
``chunks/<n>/{data, indices, positions, weights}``, ``meta/{version,
num_frames, label, shape, psize, energy, center, distance}`` and ``info/``
(the preparation parameters).  Files written here are read by ptypy's
``PtydScan`` and files ptypy wrote are read here.  Save modes:

``append``  every chunk inside the one file;
``link``    every chunk in its own file ``<dfile><chunk_format % n>`` attached by
            an HDF5 external link with a relative path (move the files together);
``merge``   all frames in a single chunk (ptypy never implemented it).

Each file is written to a temporary name and renamed; an existing ``dfile`` is
kept as ``<dfile>.old`` (``.old1``, ``.old2``... if those exist too), never
overwritten.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from difframe.errors import DataError, ParameterError
from difframe.fileio import atomic_path
from difframe.h5safe import read_dataset
from difframe.limits import array_bytes, check_allocation
from difframe.parallel import Ranks
from difframe.ptycho import h5typed
from difframe.ptycho.data import PreparedData
from difframe.ptycho.raw import FrameSource, RawScan, load_all

log = logging.getLogger("difframe.ptycho.ptyd")

SAVE_MODES = ("append", "link", "merge")
PTYD_VERSION = 0.1


def meta_dict(prepared: PreparedData) -> dict[str, Any]:
    """The ``meta`` group ptypy reads (energy in keV, lengths in metres)."""
    return {
        "version": PTYD_VERSION,
        "num_frames": prepared.num_frames,
        "label": prepared.label,
        "shape": np.array(prepared.shape, dtype=np.int64),
        "psize": np.array(prepared.psize_m),
        "energy": prepared.energy_kev,
        "center": np.array(prepared.center),
        "distance": prepared.distance_m,
    }


def _keep_earlier(path: Path) -> None:
    if not path.exists():
        return
    n = 0
    while (backup := path.with_name(path.name + (".old" if n == 0 else f".old{n}"))).exists():
        n += 1
    os.replace(path, backup)
    log.warning("%s exists; kept the earlier file as %s", path, backup)


def _frame_dtype(prepared: PreparedData) -> np.dtype:
    """int32 when every rank's frames are whole counts below 2**31 (as ptypy stores them), else float32."""
    data = prepared.data
    fractional = not (np.array_equal(data, np.round(data)) and data.max(initial=0) < 2**31)
    if not prepared.holds_all:
        fractional = prepared.ranks.any(fractional)
    return np.dtype(np.float32 if fractional else np.int32)


def _chunk_skeleton(group: Any, prepared: PreparedData, sel: slice, dtype: np.dtype) -> None:
    """A chunk's typed nodes: indices and positions filled, data and weights allocated (one HDF5 chunk per frame)."""
    group.attrs["type"] = "dict"
    n = sel.stop - sel.start
    for name, value in (("indices", np.arange(sel.start, sel.stop, dtype=np.int64)),
                        ("positions", prepared.positions[sel])):
        group.create_dataset(name, data=value).attrs["type"] = "array"
    for name, kind in (("data", dtype), ("weights", np.float32)):
        group.create_dataset(name, shape=(n, *prepared.shape), dtype=kind, chunks=(1, *prepared.shape),
                             compression="gzip").attrs["type"] = "array"


def _write_frames(group: Any, prepared: PreparedData, sel: slice, dtype: np.dtype) -> None:
    """This rank's frames that fall in chunk ``sel``, written into the chunk's data and weights."""
    lo, hi = max(sel.start, prepared.held.start), min(sel.stop, prepared.held.stop)
    if hi <= lo:
        return
    mine = slice(lo - prepared.first, hi - prepared.first)
    rows = slice(lo - sel.start, hi - sel.start)
    group["data"][rows] = prepared.data[mine].astype(dtype)
    group["weights"][rows] = prepared.frame_mask()[mine].astype(np.float32)


def write_ptyd(path: str | os.PathLike, prepared: PreparedData, *, save: str = "append",
               chunk_format: str = ".chunk%02d", frames_per_chunk: int | None = None,
               info: dict[str, Any] | None = None) -> Path:
    """Write ``prepared`` as a ``.ptyd`` at ``path`` in ``save`` mode; return the path.

    When MPI ranks hold shares of the frames every rank must call this: rank 0
    lays out the file(s) under temporary names, then the ranks write their
    frames in turn, then rank 0 renames.  No rank ever holds more than its
    own frames, and the file is the one a single process writes.
    """
    import h5py

    if save not in SAVE_MODES:
        raise ParameterError(f"scan.data.save: {save!r} is not one of {SAVE_MODES}")
    path = Path(path)
    ranks = Ranks() if prepared.holds_all else prepared.ranks
    if prepared.holds_all and not prepared.ranks.is_root:
        return path  # every rank holds every frame: rank 0 writes them
    n = prepared.num_frames
    step = n if save == "merge" or not frames_per_chunk else int(frames_per_chunk)
    bounds = [slice(i, min(i + step, n)) for i in range(0, n, step)]
    parts = [path.with_name(path.name + chunk_format % num) if save == "link" else None for num in range(len(bounds))]
    dtype = _frame_dtype(prepared)
    with contextlib.ExitStack() as stack:
        failure, names = None, ""
        if ranks.is_root:
            try:
                names = "\n".join(str(t) for t in _lay_out(stack, path, parts, prepared, bounds, dtype, info))
            except (OSError, DataError) as err:
                failure = DataError(f"{path}: cannot write ({err})")
        ranks.raise_first(failure)
        tmp, *part_tmps = ranks.broadcast_text(names).split("\n")
        for turn in range(ranks.size):
            failure = None
            if turn == ranks.rank:
                try:
                    with h5py.File(tmp, "a") as f:
                        for num, sel in enumerate(bounds):
                            if parts[num] is None:
                                _write_frames(f["chunks"][str(num)], prepared, sel, dtype)
                    for part_tmp, sel in zip(part_tmps, bounds):
                        with h5py.File(part_tmp, "a") as f:
                            _write_frames(f, prepared, sel, dtype)
                except OSError as err:
                    failure = DataError(f"{path}: rank {ranks.rank} cannot write its frames ({err})")
            ranks.raise_first(failure)
    if ranks.is_root:
        log.info("wrote %d frames of scan %s to %s (%s, %d chunks)", n, prepared.label, path, save, len(bounds))
    return path


def _lay_out(stack: contextlib.ExitStack, path: Path, parts: list, prepared: PreparedData, bounds: list,
             dtype: np.dtype, info: dict[str, Any] | None) -> list[Path]:
    """Temporary files of the ``.ptyd`` (and its linked chunk files) with everything but the frames."""
    import h5py

    info = dict(info or {})
    info["propagation"] = prepared.propagation
    _keep_earlier(path)
    tmp = stack.enter_context(atomic_path(path))
    h5typed.write(tmp, {"meta": meta_dict(prepared), "info": info})
    part_tmps = []
    with h5py.File(tmp, "a") as f:
        chunks = f.create_group("chunks")
        chunks.attrs["type"] = "dict"
        for num, (sel, part) in enumerate(zip(bounds, parts)):
            if part is None:
                _chunk_skeleton(chunks.create_group(str(num)), prepared, sel, dtype)
                continue
            _keep_earlier(part)
            part_tmps.append(stack.enter_context(atomic_path(part)))  # renamed before the main file
            with h5py.File(part_tmps[-1], "w") as pf:
                pf.attrs["h5rw_version"] = "0.1"
                _chunk_skeleton(pf["/"], prepared, sel, dtype)
            chunks[str(num)] = h5py.ExternalLink(part.name, "/")
    return [tmp, *part_tmps]


@contextlib.contextmanager
def open_ptyd(path: str | os.PathLike) -> Iterator[RawScan]:
    """A RawScan of a ``.ptyd`` (ours or ptypy's) whose frames are read on demand, chunk by chunk.

    Everything but the frames and weights (meta, positions, indices, shapes)
    is read and checked on opening; the file stays open inside the ``with``.
    Defects named: not HDF5, not a ptyd (no ``chunks``/``meta``), a missing or
    dangling chunk, arrays whose lengths or frame shapes disagree, NaN
    positions, NaN frames, and what :mod:`difframe.h5safe` refuses (chunk
    links out of the folder, link cycles, reads over the memory budget,
    corrupt chunks).
    """
    path = Path(path)
    with h5typed.open_file(path, ".ptyd") as f:
        if "chunks" not in f or "meta" not in f:
            missing = [g for g in ("chunks", "meta") if g not in f]
            raise DataError(f"{path}: not a .ptyd (no {' or '.join(missing)} group)")
        meta = h5typed.read_node(f["meta"], source=str(path))
        info = h5typed.read_node(f["info"], source=str(path)) if "info" in f else {}
        keys = list(f["chunks"])
        if not keys:
            raise DataError(f"{path}: no chunks, the file holds no frames")
        try:
            nums = sorted(int(k) for k in keys)
        except ValueError:
            raise DataError(f"{path}: chunk names {keys} are not chunk numbers") from None
        for expected, num in enumerate(nums):
            if num != expected:
                raise DataError(f"{path}: chunk {expected} is missing (chunks present: {nums})")
        parts = [_open_chunk(f, num, path) for num in nums]
        shapes = {c["data"].shape[1:] for c in parts}
        if len(shapes) > 1:
            raise DataError(f"{path}: chunks have different frame shapes {sorted(shapes)}")
        frame_shape = shapes.pop()
        meta_shape = meta.get("shape")
        if meta_shape is not None and tuple(np.broadcast_to(np.ravel(meta_shape), (2,))) != frame_shape:
            raise DataError(f"{path}: frames are {frame_shape} but meta/shape says {tuple(np.ravel(meta_shape))}")
        counts = [len(c["data"]) for c in parts]
        total = sum(counts)
        check_allocation(array_bytes((total,), 16), f"{path}: the order of {total} frames")
        indices = [c["indices"] for c in parts]
        order = (np.arange(total) if any(i is None for i in indices)
                 else np.argsort(np.concatenate(indices), kind="stable"))
        positions = [c["positions"] for c in parts]
        positions = None if any(p is None for p in positions) else np.concatenate(positions)[order]
        weighted = all(c["weights"] is not None for c in parts)
        offsets = np.cumsum([0, *counts])

        def read(start: int, stop: int):
            rows = order[start:stop]  # rows of the chunks laid end to end
            data = np.empty((len(rows), *frame_shape), parts[0]["data"].dtype)
            weights = np.empty((len(rows), *frame_shape), bool) if weighted else None
            for part, lo, hi in zip(parts, offsets[:-1], offsets[1:]):
                mine = np.flatnonzero((rows >= lo) & (rows < hi))
                if mine.size:
                    local = rows[mine] - lo
                    data[mine] = _rows(part["data"], local, path)
                    if weighted:
                        weights[mine] = _rows(part["weights"], local, path) > 0
            return data, weights

        psize = meta.get("psize")
        center = meta.get("center")
        yield RawScan(
            frames=FrameSource((total, *frame_shape), read), positions=positions,
            mask=None if weighted else _weight2d(meta, frame_shape, path),
            energy_kev=_number(meta.get("energy")), distance_m=_number(meta.get("distance")),
            psize_m=None if psize is None else tuple(float(v) for v in np.broadcast_to(np.ravel(psize), (2,))),
            center=None if center is None or isinstance(center, str) else tuple(float(v) for v in np.ravel(center)[:2]),
            propagation=info.get("propagation") if isinstance(info.get("propagation"), str) else None,
            meta={"source": str(path), "ptyd_label": meta.get("label"), "ptyd_version": meta.get("version")},
        )


def read_ptyd(path: str | os.PathLike) -> RawScan:
    """Read a whole ``.ptyd`` into memory (see :func:`open_ptyd` for the checks)."""
    with open_ptyd(path) as raw:
        return load_all(raw, str(path))


def _weight2d(meta: dict, frame_shape: tuple, path: Path) -> np.ndarray | None:
    """The detector mask older ptypy files keep in ``meta/weight2d`` when their chunks carry no weights."""
    weight2d = meta.get("weight2d")
    if weight2d is None or np.ndim(weight2d) == 0:
        return None
    weight2d = np.asarray(weight2d)
    if weight2d.shape != frame_shape:
        raise DataError(f"{path}: meta/weight2d has shape {weight2d.shape}, frames are {frame_shape}")
    return weight2d > 0


def _rows(dataset: Any, rows: np.ndarray, path: Path) -> np.ndarray:
    """``dataset[rows]`` for any order of ``rows``: one slice when they run in order, else sorted reads."""
    if np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))):
        return read_dataset(dataset, str(path), np.s_[int(rows[0]):int(rows[0]) + len(rows)], rows=len(rows))
    unique, back = np.unique(rows, return_inverse=True)
    return read_dataset(dataset, str(path), unique, rows=len(unique))[back]


def _number(value: Any) -> float | None:
    return None if value is None else float(np.ravel(value)[0])


def _open_chunk(f: Any, num: int, path: Path) -> dict[str, Any]:
    """Chunk ``num``: data and weights as datasets (unread), indices and positions read; shapes checked."""
    node = f["chunks"].get(str(num))
    if node is None:
        link = f["chunks"].get(str(num), getlink=True)
        target = getattr(link, "filename", "?")
        raise DataError(f"{path}: chunk {num} is missing (its linked file {target} cannot be opened)")
    if "data" not in node:
        raise DataError(f"{path}: chunk {num} has no data")
    data = node["data"]
    if data.ndim != 3:
        raise DataError(f"{path}: chunk {num} data has shape {data.shape}, expected (N, H, W)")
    n = len(data)
    # ptypy on numpy >= 2 stores these as typed list groups: read_array takes every form
    indices = (h5typed.read_array(node["indices"], source=str(path)).astype(np.int64).ravel()
               if "indices" in node else None)
    if indices is not None and indices.shape != (n,):
        raise DataError(f"{path}: chunk {num} has {len(indices)} indices for {n} frames")
    positions = h5typed.read_array(node["positions"], source=str(path)).astype(float) if "positions" in node else None
    if positions is not None and positions.size == 0:  # ptypy's placeholder when the scan has none
        positions = None
    if positions is not None:
        if positions.shape != (n, 2):
            raise DataError(f"{path}:{node.name}/positions has shape {positions.shape}, expected ({n}, 2)")
        bad = ~np.isfinite(positions).all(axis=1)
        if bad.any():
            raise DataError(f"{path}:{node.name}/positions: rows {np.flatnonzero(bad)[:10].tolist()} are NaN or "
                            f"infinite")
    weights = node["weights"] if "weights" in node else None
    if weights is not None and weights.size == 0:
        weights = None
    if weights is not None and weights.shape != data.shape:
        raise DataError(f"{path}: chunk {num} weights have shape {weights.shape}, data {data.shape}")
    return {"data": data, "indices": indices, "positions": positions, "weights": weights}
