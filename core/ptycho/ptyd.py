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

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from difframe.errors import DataError, ParameterError
from difframe.fileio import atomic_path
from difframe.ptycho import h5typed
from difframe.ptycho.data import PreparedData
from difframe.ptycho.prepare import RawScan

log = logging.getLogger("difframe.ptycho.ptyd")

SAVE_MODES = ("append", "link", "merge")
PTYD_VERSION = 0.1


def _chunk_dict(prepared: PreparedData, sel: slice) -> dict[str, Any]:
    data = prepared.data[sel]
    integral = np.array_equal(data, np.round(data)) and data.max(initial=0) < 2**31
    return {
        "data": data.astype(np.int32) if integral else data,
        "indices": np.arange(prepared.num_frames, dtype=np.int64)[sel],
        "positions": prepared.positions[sel],
        "weights": np.ascontiguousarray(prepared.frame_mask()[sel]).astype(np.float32),
    }


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


def write_ptyd(path: str | os.PathLike, prepared: PreparedData, *, save: str = "append",
               chunk_format: str = ".chunk%02d", frames_per_chunk: int | None = None,
               info: dict[str, Any] | None = None) -> Path:
    """Write ``prepared`` as a ``.ptyd`` at ``path`` in ``save`` mode; return the path."""
    import h5py

    if save not in SAVE_MODES:
        raise ParameterError(f"scan.data.save: {save!r} is not one of {SAVE_MODES}")
    path = Path(path)
    n = prepared.num_frames
    step = n if save == "merge" or not frames_per_chunk else int(frames_per_chunk)
    bounds = [slice(i, min(i + step, n)) for i in range(0, n, step)]
    info = dict(info or {})
    info["propagation"] = prepared.propagation
    content = {"meta": meta_dict(prepared), "info": info}
    _keep_earlier(path)
    with atomic_path(path) as tmp:
        h5typed.write(tmp, content)
        with h5py.File(tmp, "a") as f:
            chunks = f.create_group("chunks")
            chunks.attrs["type"] = "dict"
            for num, sel in enumerate(bounds):
                if save == "link":
                    part = path.with_name(path.name + chunk_format % num)
                    _keep_earlier(part)
                    with atomic_path(part) as part_tmp:
                        h5typed.write(part_tmp, _chunk_dict(prepared, sel))
                    chunks[str(num)] = h5py.ExternalLink(part.name, "/")
                else:
                    h5typed.write_node(chunks, str(num), _chunk_dict(prepared, sel))
    log.info("wrote %d frames of scan %s to %s (%s, %d chunks)", n, prepared.label, path, save, len(bounds))
    return path


def read_ptyd(path: str | os.PathLike) -> RawScan:
    """Read a ``.ptyd`` (ours or ptypy's) into a RawScan; one DataError per defect.

    Defects named: not HDF5, not a ptyd (no ``chunks``/``meta``), a missing or
    dangling chunk, arrays whose lengths or frame shapes disagree, NaN frames.
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
        parts = [_read_chunk(f, num, path) for num in nums]
    shapes = {c["data"].shape[1:] for c in parts}
    if len(shapes) > 1:
        raise DataError(f"{path}: chunks have different frame shapes {sorted(shapes)}")
    data = np.concatenate([c["data"] for c in parts])
    meta_shape = meta.get("shape")
    if meta_shape is not None and tuple(np.broadcast_to(np.ravel(meta_shape), (2,))) != data.shape[1:]:
        raise DataError(f"{path}: frames are {data.shape[1:]} but meta/shape says {tuple(np.ravel(meta_shape))}")
    indices = [c["indices"] for c in parts]
    order = (np.arange(len(data)) if any(i is None for i in indices)
             else np.argsort(np.concatenate(indices), kind="stable"))
    data = data[order]
    bad = ~np.isfinite(data.reshape(len(data), -1)).all(axis=1)
    if bad.any():
        raise DataError(f"{path}: frames {np.flatnonzero(bad)[:10].tolist()} contain NaN or infinity")
    weights = [c["weights"] for c in parts]
    mask = None if any(w is None for w in weights) else (np.concatenate(weights)[order] > 0)
    positions = [c["positions"] for c in parts]
    positions = None if any(p is None for p in positions) else np.concatenate(positions)[order]
    psize = meta.get("psize")
    center = meta.get("center")
    return RawScan(
        frames=data, mask=mask, positions=positions,
        energy_kev=_number(meta.get("energy")), distance_m=_number(meta.get("distance")),
        psize_m=None if psize is None else tuple(float(v) for v in np.broadcast_to(np.ravel(psize), (2,))),
        center=None if center is None or isinstance(center, str) else tuple(float(v) for v in np.ravel(center)[:2]),
        propagation=info.get("propagation") if isinstance(info.get("propagation"), str) else None,
        meta={"source": str(path), "ptyd_label": meta.get("label"), "ptyd_version": meta.get("version")},
    )


def _number(value: Any) -> float | None:
    return None if value is None else float(np.ravel(value)[0])


def _read_chunk(f: Any, num: int, path: Path) -> dict[str, Any]:
    node = f["chunks"].get(str(num))
    if node is None:
        link = f["chunks"].get(str(num), getlink=True)
        target = getattr(link, "filename", "?")
        raise DataError(f"{path}: chunk {num} is missing (its linked file {target} cannot be opened)")
    if "data" not in node:
        raise DataError(f"{path}: chunk {num} has no data")
    data = np.asarray(node["data"][()])
    if data.ndim != 3:
        raise DataError(f"{path}: chunk {num} data has shape {data.shape}, expected (N, H, W)")
    n = len(data)
    indices = np.asarray(node["indices"][()], dtype=np.int64).ravel() if "indices" in node else None
    if indices is not None and indices.shape != (n,):
        raise DataError(f"{path}: chunk {num} has {len(indices)} indices for {n} frames")
    positions = np.asarray(node["positions"][()], dtype=float) if "positions" in node else None
    if positions is not None and (positions.shape != (n, 2) or not np.isfinite(positions).all()):
        if positions.size:
            raise DataError(f"{path}: chunk {num} positions have shape {positions.shape}, expected ({n}, 2)")
        positions = None
    weights = np.asarray(node["weights"][()]) if "weights" in node else None
    if weights is not None and weights.size == 0:
        weights = None
    if weights is not None and weights.shape != data.shape:
        raise DataError(f"{path}: chunk {num} weights have shape {weights.shape}, data {data.shape}")
    return {"data": data, "indices": indices, "positions": positions, "weights": weights}
