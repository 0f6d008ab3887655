"""``.ptyr`` reconstruction files in ptypy's layout, written atomically and read back.

Layout (typed HDF5, see :mod:`difframe.ptycho.h5typed`)::

    header/{kind, description}
    content/                         (param)
    content/obj/<ID>/{ID, data (layers,H,W), _psize, _origin, _center, shape, layermap, nlayers,
                      fill_value, _energy, padding, padonly, _is_scattered, model_initialized, DataTooSmall}
    content/probe/<ID>/{...same...}
    content/positions/<scan label>   (N, 2) metres (y, x)
    content/pars/                    (param) the full resolved parameter tree
    content/runtime/                 (param) {run, start, iter_info/<NNNNN>/{iteration, iterations, [numiter,]
                                     engine, duration, error[3], metrics}}
    entry/                           NeXus NXentry (the root's default): object_<ID>/{phase, amplitude, y, x}
                                     (NXdata, the first the default picture), probe_<ID>/{amplitude, phase, y, x}

Storage keys are the labels of the scans that own them.  ``error`` keeps
ptypy's triple (Fourier error, likelihood, exit-wave change).  What ptypy's
``Ptycho.load_run`` needs beyond the arrays (checked against ptypy's code, see
docs/ptypy-compatibility.md): ``content``, ``pars`` and ``runtime`` typed
``param`` (it reads ``content.pars`` and ``runtime.iter_info`` as
attributes), a storage ``ID`` starting with ``S`` (ptypy's storage prefix),
the storage flags its ``Storage`` reads, and ``iterations`` in the last
``iter_info`` record (where a resumed engine starts counting).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from difframe import nexus
from difframe.errors import DataError
from difframe.fileio import atomic_path
from difframe.param import Param
from difframe.ptycho import h5typed

KIND = "minimal"
ERROR_KEYS = ("fourier_error", "deviance", "exit_change")


def _storage_dict(sid: str, storage) -> dict:
    data = np.asarray(storage.data)
    return {
        "ID": sid if sid.startswith("S") else "S" + sid,
        "data": data,
        "_psize": np.asarray(storage.psize, dtype=float),
        "_origin": np.asarray(storage.origin, dtype=float),
        "_center": np.asarray(storage.center, dtype=float),
        "_energy": float(storage.energy_kev),
        "shape": tuple(int(s) for s in data.shape),
        "layermap": list(range(data.shape[0])),
        "nlayers": int(data.shape[0]),
        "fill_value": 0.0,
        "padding": 0,
        "padonly": False,
        "_is_scattered": False,  # replicated on every rank
        "model_initialized": True,  # a reconstruction: ptypy must not re-initialise it
        "DataTooSmall": False,
    }


def iter_info_entry(iteration: int, engine: str, duration: float, metrics: dict, *,
                    iterations: int | None = None, numiter: int | None = None) -> dict:
    """One ``runtime/iter_info`` record from an engine's per-iteration metrics.

    As ptypy's, records count ``iteration`` within the engine, ``iterations``
    over the whole run and ``numiter`` as the engine's total; ``iterations``
    defaults to ``iteration`` (a run of one engine).
    """
    entry = {
        "iteration": int(iteration),
        "iterations": int(iteration if iterations is None else iterations),
        "engine": str(engine),
        "duration": float(duration),
        "error": np.array([float(metrics.get(k, np.nan)) for k in ERROR_KEYS]),
        "metrics": {k: float(v) for k, v in metrics.items()},
    }
    if numiter is not None:
        entry["numiter"] = int(numiter)
    return entry


def _term_arrays(maps: dict) -> dict:
    """label -> array, or label -> {name: array} (an engine's terms, e.g. OPR's modes and weights)."""
    return {label: {k: np.asarray(a) for k, a in v.items()} if isinstance(v, dict) else np.asarray(v)
            for label, v in maps.items()}


def write_ptyr(path, model, params, runtime: dict, description: str = "difframe reconstruction",
               terms: dict | None = None) -> None:
    """Write ``model`` (objects, probes, positions), ``params`` and ``runtime`` to ``path`` atomically.

    ``terms`` (:meth:`PtychoModel.fitted_terms`, gathered over the ranks) adds
    ``content/background/<scan>`` and ``content/frame_scale/<scan>`` where fitted, and an engine's own
    terms (``content/probe_opr/<scan>/{modes, weights}`` after OPR).
    """
    content = Param(pars=Param(params), runtime=Param(runtime))
    dict.update(content, {  # dict.update keeps these plain dicts (typed 'dict'), as ptypy writes them
        "obj": {oid: _storage_dict(oid, st) for oid, st in model.objects.items()},
        "probe": {pid: _storage_dict(pid, st) for pid, st in model.probes.items()},
        "positions": {scan.label: np.asarray(scan.positions) for scan in model.scans},
    })
    for key, maps in (terms or {}).items():
        if maps:
            dict.update(content, {key: _term_arrays(maps)})
    with atomic_path(path) as tmp:
        h5typed.write(tmp, {"header": {"kind": KIND, "description": description}, "content": content})
        _nexus_entry(tmp, model, description)


def _nexus_entry(path, model, description: str) -> None:
    """``entry/`` (NXentry) beside ptypy's layout: each object's phase and amplitude and each probe's modes
    as NXdata over y, x in metres, the first object's phase the file's default picture (silx, PyMca).
    ptypy reads only ``header`` and ``content``, so the extra group changes nothing for it."""
    import h5py

    def axes(storage):
        shape = np.shape(storage.data)[-2:]
        psize = np.broadcast_to(np.asarray(storage.psize, dtype=float), (2,))
        origin = np.broadcast_to(np.asarray(storage.origin, dtype=float), (2,))
        return [(name, origin[d] + psize[d] * np.arange(shape[d]), "m") for d, name in enumerate(("y", "x"))]

    with h5py.File(path, "a") as f:
        entry = nexus.entry(f, "entry", description)
        for n, (oid, st) in enumerate(model.objects.items()):
            mode0 = np.asarray(st.data)[0]
            nexus.nxdata(entry, f"object_{oid}", ("phase", np.angle(mode0).astype(np.float32), "rad"), axes(st),
                         auxiliary=[("amplitude", np.abs(mode0).astype(np.float32), None)], default=n == 0,
                         title=f"object {oid}, phase of layer 0")
        for pid, st in model.probes.items():
            nexus.nxdata(entry, f"probe_{pid}", ("amplitude", np.abs(np.asarray(st.data)).astype(np.float32), None), [None, *axes(st)],
                         auxiliary=[("phase", np.angle(np.asarray(st.data)).astype(np.float32), "rad")],
                         title=f"probe {pid}, amplitude of each mode")


class Autosaves:
    """The autosaves of one run, each a whole ``.ptyr`` as :func:`write_ptyr` writes it, at a cost that does
    not grow with the history.

    The file is kept as an HDF5 image in memory: each :meth:`save` appends only
    the ``iter_info`` records new since the last one, replaces the state
    (storages, positions, fitted terms; the parameters only when they changed)
    and writes the image out atomically.  Rewriting the whole history each time
    cost 40 of 99 s of a DM + ML run on the P25 scan.
    """

    def __init__(self):
        import h5py

        self._file = h5py.File(f"autosave-{id(self)}", "w", driver="core", backing_store=False)
        self._saved = 0  # iter_info records already in the image
        self._pars = None  # repr of the parameters as last written
        self._state: set = set()  # content groups of the state as last written
        self._models: dict = {}  # shape of a record -> name of the first record of that shape

    def save(self, path, model, params, runtime: dict, description: str = "difframe autosave",
             terms: dict | None = None) -> None:
        f = self._file
        if "content" not in f:
            content = f.create_group("content")
            content.attrs["type"] = "param"
            runtime_node = content.create_group("runtime")
            runtime_node.attrs["type"] = "param"
            h5typed.write_node(runtime_node, "iter_info", [])
            f.attrs["h5rw_version"] = "0.1"
        content = f["content"]
        h5typed.write_node(f, "header", {"kind": KIND, "description": description})
        if repr(params) != self._pars:  # an interaction client may have changed some
            h5typed.write_node(content, "pars", Param(params))
            self._pars = repr(params)
        for key, value in runtime.items():
            if key != "iter_info":
                h5typed.write_node(content["runtime"], key, Param(value) if isinstance(value, dict) else value)
        history, info = runtime.get("iter_info") or [], content["runtime/iter_info"]
        for number in range(self._saved, len(history)):
            self._append(info, f"{number:05d}", history[number])
        self._saved = len(history)
        state = {"obj": {oid: _storage_dict(oid, st) for oid, st in model.objects.items()},
                 "probe": {pid: _storage_dict(pid, st) for pid, st in model.probes.items()},
                 "positions": {scan.label: np.asarray(scan.positions) for scan in model.scans}}
        state.update({key: _term_arrays(maps)
                      for key, maps in (terms or {}).items() if maps})
        for key in self._state - set(state):
            del content[key]
        for key, value in state.items():  # replaces the previous one (HDF5 reuses its space), uncompressed: faster
            h5typed.write_node(content, key, value, compress=False)
        self._state = set(state)
        f.flush()
        with atomic_path(path) as tmp:
            tmp.write_bytes(f.id.get_file_image())
            _nexus_entry(tmp, model, description)

    def _append(self, info, name: str, record: dict) -> None:
        """Add one ``iter_info`` record: the first of its shape node by node, later ones as an HDF5 copy of
        it with the values overwritten (half the cost: no node is created from Python)."""
        shape = _record_shape(record)
        model = self._models.get(shape)
        if model is None:
            h5typed.write_node(info, name, record)
            self._models[shape] = name
            return
        info.copy(model, name)
        import h5py

        _overwrite(h5py.h5g.open(info.id, name.encode()), record)

    def close(self) -> None:
        self._file.close()


def _record_shape(record: dict) -> tuple:
    """What decides a record's typed layout: its keys and each value's kind, shape and dtype."""
    return tuple((key, _record_shape(value) if isinstance(value, dict) else
                  (type(value).__name__, np.shape(value), None if isinstance(value, str) else np.asarray(value).dtype.str))
                 for key, value in record.items())


def _overwrite(gid, record: dict) -> None:
    """Write ``record``'s values into the datasets of group ``gid`` (an h5py GroupID), a copy of a record of
    the same shape (low level: building high-level objects for each node cost as much as the writes)."""
    import h5py

    for key, value in record.items():
        name = key.replace("/", h5typed.SLASH_ESCAPE).encode()
        if isinstance(value, dict):
            _overwrite(h5py.h5g.open(gid, name), value)
        elif isinstance(value, str):
            h5py.Dataset(h5py.h5d.open(gid, name))[()] = value
        else:
            node = h5py.h5d.open(gid, name)
            node.write(h5py.h5s.ALL, h5py.h5s.ALL, np.asarray(value, dtype=node.dtype))


@dataclass
class Reconstruction:
    """What a ``.ptyr`` holds, as arrays and plain values."""

    objects: dict  # ID -> storage dict (data, _psize, _origin, ...)
    probes: dict
    positions: dict  # scan label -> (N, 2)
    params: dict
    runtime: dict
    background: dict = field(default_factory=dict)  # scan label -> (H, W) counts per frame, where fitted
    frame_scale: dict = field(default_factory=dict)  # scan label -> (N,), where fitted

    @property
    def iter_info(self) -> list:
        """Per-iteration records, each with ``iterations`` counted over the whole run and ``error`` three long.

        Records count ``iteration`` within each engine and over the run in
        ``iterations`` (older difframe files: ``iteration`` only, over the run);
        an ``error`` of ptypy's may hold a single value.
        """
        records = []
        for number, rec in enumerate(self.runtime.get("iter_info") or [], start=1):
            given = np.ravel(np.asarray(rec.get("error", ()), dtype=float))[:3]
            error = np.full(3, np.nan)
            error[:given.size] = given
            run_count = int(rec.get("iterations", rec.get("iteration", number)))
            records.append(dict(rec, iterations=run_count, error=error))
        return records


def resolve_rfile(pattern) -> str | None:
    """The file a ``recon.rfile`` names: ``pattern`` itself, or the newest file it matches when it holds
    wildcards (None: it matches none)."""
    import glob

    pattern = str(pattern)
    if not glob.has_magic(pattern):
        return pattern
    matches = sorted(glob.glob(pattern), key=os.path.getmtime)
    return matches[-1] if matches else None


def read_ptyr(path) -> Reconstruction:
    """Read a ``.ptyr``; DataError naming the file when it is not one."""
    import h5py

    with h5typed.open_file(path, ".ptyr") as f:
        if "content" not in f or "header" not in f:
            raise DataError(f"{path}: not a .ptyr reconstruction (no header/content groups; "
                            f"top-level nodes: {sorted(f)})")
        content = f["content"]
        for group in ("obj", "probe"):
            if group not in content or not isinstance(content[group], h5py.Group):
                raise DataError(f"{path}: not a .ptyr reconstruction (content/{group} is missing)")
        tree = h5typed.read_node(content, source=os.fspath(path))
    for kind in ("obj", "probe"):
        for sid, st in tree[kind].items():
            if not isinstance(st, dict) or "data" not in st or np.ndim(st["data"]) != 3:
                raise DataError(f"{path}: content/{kind}/{sid} has no (layers, H, W) data array")
    return Reconstruction(objects=tree["obj"], probes=tree["probe"], positions=tree.get("positions") or {},
                          params=tree.get("pars") or {}, runtime=tree.get("runtime") or {},
                          background=tree.get("background") or {}, frame_scale=tree.get("frame_scale") or {})
