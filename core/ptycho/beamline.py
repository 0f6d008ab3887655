"""Beamline layouts of a ptychography scan: a generic HDF5/NeXus file, or a stack of detector frame files.

:func:`open_hdf5` and :func:`open_stack` return a :class:`RawScan` whose frames
stay in their files until a rank asks for its share, as the CXI reader does.
What the two share lives here once:

- positions from a slow and a fast column, each times its multiplier, the slow
  one along y or x (:func:`beam_positions`);
- the frame filter, a slice string or a list of indices (:func:`frame_selection`);
- the corrections, in this order: dark subtraction (negative results become 0),
  division by the flat field scaled to mean 1 over its valid pixels, then
  multiplication by ``reference / monitor[i]`` (:class:`Corrections`);
- cone-beam (Fresnel) scaling, also used by the CXI reader (:func:`cone_beam`).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import numpy as np
from scipy.constants import physical_constants

from difframe.errors import DataError, ParameterError
from difframe.h5safe import read_dataset
from difframe.ptycho.h5typed import open_file
from difframe.ptycho.raw import FrameSource, RawScan

log = logging.getLogger("difframe.ptycho.beamline")

JOULE_PER_KEV = physical_constants["electron volt"][0] * 1e3
HC_KEV_M = 1.2398419843320026e-9  # h c [keV m]: energy [keV] = HC_KEV_M / wavelength [m]
#: ``units`` attribute -> factor to keV or to metres (NeXus spellings)
UNITS = {
    "energy": {"kev": 1.0, "ev": 1e-3, "j": 1.0 / JOULE_PER_KEV},
    "length": {"m": 1.0, "mm": 1e-3, "um": 1e-6, "µm": 1e-6, "micron": 1e-6, "microns": 1e-6, "nm": 1e-9},
}


def cone_beam(distance: float | None, psize: tuple[float, float] | None, focus_distance: float, *, param: str,
              where: str, missing: str = "the file's distance and pixel size"):
    """(distance, psize, meta) of the parallel-beam geometry equivalent to a cone beam.

    Fresnel scaling: with the focus-to-sample distance z1 and the
    sample-to-detector distance z2, M = (z1 + z2) / z1, pixel / M, distance z2 / M.
    """
    if distance is None or psize is None:
        raise DataError(f"{where}: {param} needs {missing}")
    if not focus_distance > 0:
        raise ParameterError(f"{param} must be positive, got {focus_distance}")
    magnification = (focus_distance + distance) / focus_distance
    meta = {"magnification": magnification, "detector_distance_m": distance, "detector_psize_m": psize}
    distance, psize = distance / magnification, (psize[0] / magnification, psize[1] / magnification)
    log.info("%s: cone beam, magnification %.2f, effective distance %.4g m, pixel %.4g m",
             where, magnification, distance, psize[0])
    return distance, psize, meta


def beam_positions(slow: np.ndarray, fast: np.ndarray, p: Mapping, where: str) -> np.ndarray:
    """(N, 2) positions [m] (y, x): slow and fast columns times their multipliers, slow along ``slow_axis``."""
    slow = np.asarray(slow, float).ravel() * float(p.get("slow_multiplier", 1.0))
    fast = np.asarray(fast, float).ravel() * float(p.get("fast_multiplier", 1.0))
    if not (np.isfinite(slow).all() and np.isfinite(fast).all()):
        raise DataError(f"{where}: positions contain NaN or infinity")
    pair = (slow, fast) if (p.get("slow_axis") or "y") == "y" else (fast, slow)
    return np.stack(pair, axis=1)


def frame_selection(spec: Any, count: int, name: str) -> np.ndarray:
    """Indices of the frames kept by the filter ``spec``: None (all), ``"start:stop:step"`` or a list of indices."""
    if spec is None:
        return np.arange(count)
    if isinstance(spec, str):
        parts = spec.split(":")
        if not 1 < len(parts) <= 3 or not all(re.fullmatch(r"\s*(-?\d+)?\s*", s) for s in parts):
            raise ParameterError(f"{name} = {spec!r}: expected a slice 'start:stop[:step]' of integers or a list "
                                 f"of frame indices")
        bounds = [int(s) if s.strip() else None for s in parts]
        if len(bounds) == 3 and bounds[2] == 0:
            raise ParameterError(f"{name} = {spec!r}: the step must not be 0")
        keep = np.arange(count)[slice(*bounds)]
    else:
        values = list(spec) if isinstance(spec, (list, tuple)) else [spec]
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
            raise ParameterError(f"{name} = {spec!r}: frame indices must be integers")
        keep = np.asarray(values, dtype=np.int64)
        outside = keep[(keep < 0) | (keep >= count)]
        if outside.size:
            raise ParameterError(f"{name}: frame indices {outside[:10].tolist()} are outside 0..{count - 1}")
    if keep.size == 0:
        raise ParameterError(f"{name} = {spec!r} keeps no frame of {count}")
    return keep


@dataclass
class Corrections:
    """Dark, relative flat and per-frame scale (of the kept frames), any of them None."""

    dark: np.ndarray | None = None
    flat: np.ndarray | None = None
    scale: np.ndarray | None = None

    @property
    def active(self) -> bool:
        return self.dark is not None or self.flat is not None or self.scale is not None

    def apply(self, frames: np.ndarray, start: int, stop: int) -> np.ndarray:
        """Kept frames ``start .. stop - 1`` corrected (float32), or as read when there is nothing to do."""
        if not self.active:
            return frames
        out = np.asarray(frames, dtype=np.float32)
        if self.dark is not None:
            out = np.maximum(out - self.dark, 0, dtype=np.float32)
        if self.flat is not None:
            out = out / self.flat
        if self.scale is not None:
            out = out * self.scale[start:stop, None, None]
        return out


def make_corrections(dark, flat, monitor, reference, mask, keep: np.ndarray, names: Mapping[str, str]):
    """(Corrections, mask): ``mask`` loses the pixels where the flat is not positive and finite.

    ``monitor`` is per frame of the file; the scale of kept frame i is
    ``reference / monitor[keep[i]]`` with the mean of the kept frames' monitor
    when ``reference`` is None, so the counts keep their size.
    """
    corr = Corrections()
    if dark is not None:
        dark = np.asarray(dark, dtype=np.float32)
        if not np.isfinite(dark).all():
            raise DataError(f"{names['dark']}: the dark frame contains NaN or infinity")
        corr.dark = dark
    if flat is not None:
        flat = np.asarray(flat, dtype=np.float64)
        good = np.isfinite(flat) & (flat > 0)
        valid = good if mask is None else good & mask
        if not valid.any():
            raise DataError(f"{names['flat']}: the flat field has no positive value on a valid pixel")
        mask = valid
        corr.flat = np.where(valid, flat / flat[valid].mean(), 1.0).astype(np.float32)
    if monitor is not None:
        kept = np.asarray(monitor, dtype=np.float64).ravel()[keep]
        bad = ~(np.isfinite(kept) & (kept > 0))
        if bad.any():
            raise DataError(f"{names['normalisation']}: frames {keep[bad][:10].tolist()} have a normalisation "
                            f"that is not positive: {kept[bad][:10].tolist()}")
        ref = kept.mean() if reference is None else float(reference)
        corr.scale = (ref / kept).astype(np.float32)
    return corr, mask


def valid_from(mask_values: np.ndarray, convention: str) -> np.ndarray:
    """True = valid from a stored mask: ``nonzero`` (non-zero pixels are valid) or ``zero`` (CXI, NeXus)."""
    mask_values = np.asarray(mask_values)
    return mask_values != 0 if convention == "nonzero" else mask_values == 0


# ----------------------------------------------------------------- HDF5 / NeXus


def _datasets(f) -> list[tuple[str, tuple]]:
    """(name, shape) of every dataset, external links (an Eiger master's data files) followed."""
    import h5py

    found = []

    def visit(name, _link_or_node):
        try:
            node = f.get(name)
        except (KeyError, OSError):  # a dangling link
            return
        if isinstance(node, h5py.Dataset):
            found.append((name, node.shape))

    if hasattr(f, "visititems_links"):
        f.visititems_links(visit)
    else:  # h5py < 3.11: datasets of this file only
        f.visititems(visit)
    return found


def _dataset(f, path: str, param: str, what: str, fits: Callable[[tuple], bool], where: str):
    """The dataset at ``path`` if its shape fits; else a DataError listing the file's datasets that fit."""
    import h5py

    try:
        node = f.get(path)
    except (KeyError, OSError):  # a dangling external link
        node = None
    if isinstance(node, h5py.Dataset) and fits(node.shape):
        return node
    state = ("does not exist" if node is None else "is a group" if not isinstance(node, h5py.Dataset)
             else f"has shape {node.shape}")
    fitting = [f"/{name} {shape}" for name, shape in _datasets(f) if fits(shape)]
    raise DataError(f"{where}: {param} = {path!r} {state}; expected {what}. Datasets of that shape in the file: "
                    f"{', '.join(fitting[:20]) if fitting else 'none'}")


def _units_factor(node, quantity: str, where: str) -> float:
    units = node.attrs.get("units")
    if units is None:
        return 1.0
    text = (units.decode() if isinstance(units, bytes) else str(units)).strip().lower()
    if text not in UNITS[quantity]:
        raise DataError(f"{where}:{node.name}: units {text!r} not understood (known: {', '.join(UNITS[quantity])})")
    return UNITS[quantity][text]


def _geometry_value(f, value: Any, quantity: str, param: str, where: str, sizes=(1,)) -> np.ndarray | None:
    """Positive number(s) as given, or a dataset's converted by its ``units`` (keV, m when it has none)."""
    if value is None:
        return None
    if not isinstance(value, str):
        try:
            got = np.asarray(value, dtype=float).ravel()
        except (TypeError, ValueError):
            got = np.zeros(0)
        if got.size not in sizes or not (np.isfinite(got).all() and (got > 0).all()):
            raise ParameterError(f"{param} = {value!r}: expected {' or '.join(map(str, sizes))} positive number(s)")
        return got
    node = _dataset(f, value, param, f"{' or '.join(map(str, sizes))} number(s)",
                    lambda shape: int(np.prod(shape)) in sizes, where)
    got = np.asarray(read_dataset(node, where), dtype=float).ravel() * _units_factor(node, quantity, where)
    if not (np.isfinite(got).all() and (got > 0).all()):
        raise DataError(f"{where}:{node.name} ({param}): expected a positive number, got {got.tolist()}")
    return got


def _psize(f, value: Any, param: str, where: str) -> tuple[float, float] | None:
    """Pixel size (y, x) [m]: a number, a dataset of 1 or 2 values, or a pair of numbers or datasets."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ParameterError(f"{param} = {value!r}: expected one value or two (y, x)")
        parts = [_geometry_value(f, v, "length", f"{param}[{i}]", where)[0] for i, v in enumerate(value)]
        return (float(parts[0]), float(parts[1]))
    got = _geometry_value(f, value, "length", param, where, sizes=(1, 2))
    return (float(got[0]), float(got[-1]))


def read_rows(dataset, rows: np.ndarray) -> np.ndarray:
    """``dataset[rows]`` with one h5py slice when the rows are evenly spaced, else sorted unique rows."""
    steps = np.diff(rows)
    if rows.size == 1 or (steps[0] > 0 and (steps == steps[0]).all()):
        step = 1 if rows.size == 1 else int(steps[0])
        return dataset[int(rows[0]):int(rows[-1]) + 1:step]
    unique, back = np.unique(rows, return_inverse=True)
    return dataset[unique][back]


@contextlib.contextmanager
def open_hdf5(p: Mapping, prefix: str = "scan.data.recipe.hdf5") -> Iterator[RawScan]:
    """The scan the ``hdf5`` recipe's parameters ``p`` describe, frames read on demand while the ``with`` lasts."""
    path = p.get("file")
    if not path:
        raise ParameterError(f"{prefix}.file: the 'hdf5' recipe needs the file to read")
    where = str(path)
    with open_file(path, "HDF5") as f:
        frames = _dataset(f, p.get("intensities") or "", f"{prefix}.intensities", "an (N, H, W) stack of frames",
                          lambda shape: len(shape) == 3, where)
        n, frame_shape = frames.shape[0], tuple(frames.shape[1:])
        per_frame = f"one value per frame, ({n},)"
        keep = frame_selection(p.get("frames"), n, f"{prefix}.frames")

        positions = None
        pos, slow, fast = p.get("positions"), p.get("slow"), p.get("fast")
        if pos is not None and (slow is not None or fast is not None):
            raise ParameterError(f"{prefix}: give either positions or slow and fast, not both")
        if (slow is None) != (fast is None):
            raise ParameterError(f"{prefix}: slow and fast positions go together; only "
                                 f"{'slow' if fast is None else 'fast'} is set")
        if pos is not None:
            both = read_dataset(_dataset(f, pos, f"{prefix}.positions",
                                         f"({n}, 2) positions (slow, fast), one row per frame of {frames.name}",
                                         lambda shape: shape == (n, 2), where), where)
            positions = beam_positions(both[:, 0], both[:, 1], p, where)
        elif slow is not None:
            columns = [read_dataset(_dataset(f, path_, f"{prefix}.{key}", f"{per_frame} of {frames.name}",
                                             lambda shape: shape in ((n,), (n, 1)), where), where)
                       for key, path_ in (("slow", slow), ("fast", fast))]
            positions = beam_positions(columns[0], columns[1], p, where)
        if positions is not None:
            positions = positions[keep]

        def image(shape: tuple) -> bool:
            return tuple(shape) == frame_shape

        mask = None
        if p.get("mask") is not None:
            values = read_dataset(_dataset(f, p["mask"], f"{prefix}.mask", f"an {frame_shape} map", image, where),
                                  where)
            mask = valid_from(values, p.get("mask_valid") or "zero")
        dark = flat = monitor = None
        if p.get("dark") is not None:
            dark = read_dataset(_dataset(f, p["dark"], f"{prefix}.dark", f"an {frame_shape} map", image, where), where)
        if p.get("flat") is not None:
            flat = read_dataset(_dataset(f, p["flat"], f"{prefix}.flat", f"an {frame_shape} map", image, where), where)
        if p.get("normalisation") is not None:
            monitor = read_dataset(_dataset(f, p["normalisation"], f"{prefix}.normalisation", per_frame,
                                            lambda shape: shape in ((n,), (n, 1)), where), where)
        names = {key: f"{where}:/{p.get(key)}" for key in ("dark", "flat", "normalisation")}
        corr, mask = make_corrections(dark, flat, monitor, p.get("normalisation_reference"), mask, keep, names)

        energy = _geometry_value(f, p.get("energy"), "energy", f"{prefix}.energy", where)
        distance = _geometry_value(f, p.get("distance"), "length", f"{prefix}.distance", where)
        energy = None if energy is None else float(energy[0])
        distance = None if distance is None else float(distance[0])
        psize = _psize(f, p.get("psize"), f"{prefix}.psize", where)
        meta: dict[str, Any] = {"source": f"{where}:{frames.name}"}
        if p.get("focus_distance") is not None:
            distance, psize, cone = cone_beam(distance, psize, p["focus_distance"], param=f"{prefix}.focus_distance",
                                              where=where, missing=f"{prefix}.distance and {prefix}.psize")
            meta.update(cone)
        if keep.size != n:
            meta["frames_kept"] = keep.size
            log.info("%s: the frame filter keeps %d of %d frames", where, keep.size, n)

        def read(start: int, stop: int):
            return corr.apply(read_rows(frames, keep[start:stop]), start, stop), None

        yield RawScan(frames=FrameSource((keep.size, *frame_shape), read), mask=mask, positions=positions,
                      energy_kev=energy, distance_m=distance, psize_m=psize, propagation=p.get("propagation"),
                      meta=meta)


# ----------------------------------------------------------------- stack of frame files


def _natural_key(path: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def stack_files(files: Any, first: int, count: int | None, name: str) -> list[str]:
    """Paths of the stack: a list, a glob (sorted with numbers in numeric order) or a ``{}`` format pattern."""
    if isinstance(files, (list, tuple)):
        paths = [os.fspath(v) for v in files]
    elif not isinstance(files, str) or not files:
        raise ParameterError(f"{name}: the 'stack' recipe needs a list of files, a glob or a format pattern")
    elif "{" in files:
        if count is None:
            raise ParameterError(f"{name} = {files!r}: a format pattern needs the frame count (count, or a "
                                 f"positions file)")
        try:
            paths = [files.format(first + i) for i in range(count)]
        except (IndexError, KeyError, ValueError, AttributeError) as err:
            raise ParameterError(f"{name} = {files!r}: not a format pattern for one integer ({err})") from None
    elif glob.has_magic(files):
        paths = sorted(glob.glob(files), key=_natural_key)
        if not paths:
            raise DataError(f"{name} = {files!r}: no file matches")
    else:
        paths = [files]
    missing = [path for path in paths if not os.path.isfile(path)]
    if missing:
        raise DataError(f"{name}: {len(missing)} of {len(paths)} frame files do not exist: {', '.join(missing[:5])}"
                        + (" ..." if len(missing) > 5 else ""))
    return paths


def read_table(path: Any, delimiter: str | None, name: str) -> np.ndarray:
    """A numeric text table (``#`` comments) as an (rows, columns) array; DataError naming the file."""
    if not path:
        return None
    if not os.path.isfile(path):
        raise DataError(f"{name} = {str(path)!r}: no such file")
    try:
        table = np.loadtxt(path, comments="#", delimiter=delimiter, ndmin=2)
    except ValueError as err:
        raise DataError(f"{name} = {str(path)!r}: not a numeric table ({err})") from None
    return table


def _column(table: np.ndarray, index: int, name: str, path: str) -> np.ndarray:
    if not -table.shape[1] <= index < table.shape[1]:
        raise ParameterError(f"{name} = {index}: {path} has {table.shape[1]} columns")
    return table[:, index]


def open_stack(p: Mapping, plugins, prefix: str = "scan.data.recipe.stack") -> RawScan:
    """The scan the ``stack`` recipe's parameters ``p`` describe; frame files are read when a rank asks."""
    from difframe.detector import choose_reader, open_frame

    table = read_table(p.get("positions"), p.get("delimiter"), f"{prefix}.positions")
    count = p.get("count")
    if count is None and table is not None:
        count = len(table)
    paths = stack_files(p.get("files"), int(p.get("first") or 0), count, f"{prefix}.files")
    n = len(paths)
    keep = frame_selection(p.get("frames"), n, f"{prefix}.frames")
    reader = plugins.get("detector_reader", p["reader"]) if p.get("reader") else choose_reader(paths[0], plugins)
    head = reader.read(paths[0])
    frame_shape = tuple(head.data.shape)

    positions = monitor = None
    if table is not None:
        source = str(p["positions"])
        if len(table) != n:
            raise DataError(f"{prefix}: {n} frame files but {len(table)} rows of positions in {source}")
        columns = p.get("columns") or (0, 1)
        if len(columns) != 2:
            raise ParameterError(f"{prefix}.columns = {columns!r}: expected two column indices (slow, fast)")
        slow, fast = (_column(table, int(c), f"{prefix}.columns", source) for c in columns)
        positions = beam_positions(slow, fast, p, source)[keep]
        if p.get("normalisation_column") is not None:
            monitor = _column(table, int(p["normalisation_column"]), f"{prefix}.normalisation_column", source)
    elif p.get("normalisation_column") is not None:
        raise ParameterError(f"{prefix}.normalisation_column needs {prefix}.positions, the table it is a column of")

    def image(key: str) -> np.ndarray | None:
        if p.get(key) is None:
            return None
        if not os.path.isfile(p[key]):
            raise DataError(f"{prefix}.{key} = {str(p[key])!r}: no such file")
        data = open_frame(p[key], plugins).data
        if tuple(data.shape) != frame_shape:
            raise DataError(f"{prefix}.{key} = {str(p[key])!r}: shape {data.shape}, the frames are {frame_shape}")
        return data

    mask = image("mask")
    if mask is not None:
        mask = valid_from(mask, p.get("mask_valid") or "zero")
    names = {"dark": f"{prefix}.dark", "flat": f"{prefix}.flat", "normalisation": f"{prefix}.normalisation_column"}
    corr, mask = make_corrections(image("dark"), image("flat"), monitor, p.get("normalisation_reference"), mask,
                                  keep, names)

    header = head.metadata
    energy = p.get("energy")
    if energy is None and header.get("wavelength_m"):
        energy = HC_KEV_M / header["wavelength_m"]
    distance = p.get("distance")
    if distance is None:
        distance = header.get("distance_m")
    psize = p.get("psize")
    if psize is None and header.get("pixel_size_m"):
        psize = header["pixel_size_m"][::-1]  # the header's (x, y)
    if psize is not None:
        values = _geometry_value(None, psize, "length", f"{prefix}.psize", paths[0], sizes=(1, 2))
        psize = (float(values[0]), float(values[-1]))
    meta: dict[str, Any] = {"source": f"{paths[0]} .. {paths[-1]} ({n} files, reader {reader.name})"}
    log.info("%s: %d frame files (%d kept) read with %s", p.get("files") if isinstance(p.get("files"), str)
             else paths[0], n, keep.size, reader.name)
    if p.get("focus_distance") is not None:
        distance, psize, cone = cone_beam(distance, psize, p["focus_distance"], param=f"{prefix}.focus_distance",
                                          where=paths[0], missing=f"{prefix}.distance and {prefix}.psize "
                                                                  f"(or the frame header's)")
        meta.update(cone)

    def read(start: int, stop: int):
        block = []
        for index in keep[start:stop]:
            data = reader.read(paths[index]).data
            if tuple(data.shape) != frame_shape:
                raise DataError(f"{paths[index]}: frame shape {data.shape}, but {paths[0]} is {frame_shape}")
            block.append(data)
        return corr.apply(np.stack(block), start, stop), None

    return RawScan(frames=FrameSource((keep.size, *frame_shape), read), mask=mask, positions=positions,
                   energy_kev=energy, distance_m=distance, psize_m=psize, propagation=p.get("propagation"),
                   meta=meta)

