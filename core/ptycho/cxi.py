"""CXI (Coherent X-ray Imaging, HDF5) ptychography scans read as raw scan data.

Read: ``<entry>/instrument_1/detector_1/{data, mask, distance, x_pixel_size,
y_pixel_size, basis_vectors}``, ``<entry>/instrument_1/source_1/{energy [J],
wavelength [m]}`` and ``<entry>/sample_1/geometry_1/translation`` (N, 3) [m].

Conventions: a mask pixel is valid where the CXI mask is 0 (any set bit flags
it).  Positions are where the beam sits on the sample, so they are minus the
sample translation, projected on the frame's row and column directions given
by ``basis_vectors`` (3, 2); without them the detector is taken as rows along
-y and columns along -x, which is what the P25 file states.

Cone-beam (Fresnel scaling) near-field data: with the focus-to-sample distance
z1 and the file's sample-to-detector distance z2, the equivalent parallel-beam
geometry has pixel ``psize / M`` and distance ``z2 / M`` with magnification
``M = (z1 + z2) / z1``.

:func:`open_cxi` reads the geometry and positions and leaves the frames (and a
per-frame mask) in the file until a rank asks for its share.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import numpy as np

from difframe.errors import DataError
from difframe.h5safe import read_dataset
from difframe.ptycho.beamline import cone_beam
from difframe.ptycho.h5typed import open_file
from difframe.ptycho.raw import FrameSource, RawScan, load_all

JOULE_PER_KEV = 1.602176634e-16
DEFAULT_BASIS = np.array([[0.0, -1.0], [-1.0, 0.0], [0.0, 0.0]])


def _scalar(f: Any, path: str, where: str) -> float | None:
    if path not in f:
        return None
    value = np.asarray(read_dataset(f[path], where), dtype=float).ravel()
    if value.size != 1 or not np.isfinite(value[0]) or value[0] <= 0:
        raise DataError(f"{where}:/{path}: expected one positive number, got {value.tolist()}")
    return float(value[0])


def positions_from_translation(translation: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """(N, 2) beam positions (row, col directions) from (N, 3) sample translations."""
    units = basis / np.linalg.norm(basis, axis=0, keepdims=True)
    return -(translation @ units)


@contextlib.contextmanager
def open_cxi(path: str | os.PathLike, *, entry: str = "entry_1",
             focus_distance: float | None = None) -> Iterator[RawScan]:
    """One CXI entry as a RawScan whose frames are read on demand while the ``with`` lasts.

    DataError naming the file and node on any defect.
    """
    where = str(path)
    with open_file(path, "CXI") as f:
        det = f"{entry}/instrument_1/detector_1"
        if f"{det}/data" not in f:
            raise DataError(f"{where}: no {det}/data, not a CXI ptychography entry")
        frames = f[f"{det}/data"]
        if frames.ndim != 3:
            raise DataError(f"{where}:/{det}/data has shape {frames.shape}, expected (N, H, W)")
        mask = masks = None
        if f"{det}/mask" in f:
            masks = f[f"{det}/mask"]
            if masks.shape not in (frames.shape, frames.shape[1:]):
                raise DataError(f"{where}:/{det}/mask has shape {masks.shape}, frames are {frames.shape}")
            if masks.shape == frames.shape[1:]:
                mask, masks = read_dataset(masks, where) == 0, None

        def read(start: int, stop: int):
            rows = np.s_[start:stop]
            return (read_dataset(frames, where, rows, rows=stop - start),
                    None if masks is None else read_dataset(masks, where, rows, rows=stop - start) == 0)

        distance = _scalar(f, f"{det}/distance", where)
        px = _scalar(f, f"{det}/x_pixel_size", where)
        py = _scalar(f, f"{det}/y_pixel_size", where)
        basis = (np.asarray(read_dataset(f[f"{det}/basis_vectors"], where), float) if f"{det}/basis_vectors" in f
                 else DEFAULT_BASIS)
        if basis.shape != (3, 2) or not np.all(np.linalg.norm(basis, axis=0) > 0):
            raise DataError(f"{where}:/{det}/basis_vectors has shape {basis.shape} or a zero vector, expected (3, 2)")
        source = f"{entry}/instrument_1/source_1"
        energy_j = _scalar(f, f"{source}/energy", where)
        wavelength = _scalar(f, f"{source}/wavelength", where)
        trans_path = f"{entry}/sample_1/geometry_1/translation"
        positions = None
        if trans_path in f:
            translation = np.asarray(read_dataset(f[trans_path], where), dtype=float)
            if translation.shape != (len(frames), 3):
                raise DataError(f"{where}:/{trans_path} has shape {translation.shape}, expected ({len(frames)}, 3)")
            bad = ~np.isfinite(translation).all(axis=1)
            if bad.any():
                raise DataError(f"{where}:/{trans_path}: rows {np.flatnonzero(bad)[:10].tolist()} are NaN or infinite")
            positions = positions_from_translation(translation, basis)
        energy_kev = energy_j / JOULE_PER_KEV if energy_j else (1.2398419843320026e-9 / wavelength if wavelength else None)
        psize = None if px is None or py is None else (py, px)
        meta: dict[str, Any] = {"source": f"{where}:/{det}/data", "cxi_entry": entry}
        if focus_distance is not None:
            distance, psize, cone = cone_beam(distance, psize, focus_distance, where=where,
                                              param="scan.data.recipe.cxi.focus_distance")
            meta.update(cone)
        yield RawScan(frames=FrameSource(frames.shape, read), mask=mask, positions=positions, energy_kev=energy_kev,
                      distance_m=distance, psize_m=psize, center=None, meta=meta)


def read_cxi(path: str | os.PathLike, *, entry: str = "entry_1", focus_distance: float | None = None) -> RawScan:
    """Read one whole CXI entry into memory (see :func:`open_cxi`)."""
    with open_cxi(path, entry=entry, focus_distance=focus_distance) as raw:
        return load_all(raw, raw.meta["source"])
