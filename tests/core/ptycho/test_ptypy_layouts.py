"""Compatibility with ptypy's own files, checked against layouts built node by node with plain h5py.

The layouts are the ones measured with ptypy's h5write/h5read (ptypy/io/h5rw.py,
core/ptycho.py, core/data.py; see docs/ptypy-compatibility.md): what
``Ptycho.save_run`` writes and ``Ptycho.load_run`` / ``PtydScan`` read.
ptypy itself is not needed.
"""

from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from difframe.commands import plot
from difframe.errors import DataError
from difframe.param import Param
from difframe.plugins.models.recon import load as load_recon
from difframe.ptycho import h5typed
from difframe.ptycho.model import Storage
from difframe.ptycho.ptyd import read_ptyd
from difframe.ptycho.ptyr import iter_info_entry, read_ptyr, write_ptyr

RNG = np.random.default_rng(7)


def typed(group, name, value, kind, **kw):
    node = group.create_dataset(name, data=value, **kw)
    node.attrs["type"] = kind
    return node


def typed_group(group, name, kind):
    node = group.create_group(name)
    node.attrs["type"] = kind
    return node


def text(node) -> str:
    """A ptypy 'string' node as ptypy's h5read returns it under h5py 3 (bytes decoded)."""
    return node[()].decode("utf-8")


# ------------------------------------------------------------- difframe writes, ptypy reads


@pytest.fixture
def ours(tmp_path):
    obj = Storage(data=(RNG.normal(size=(1, 20, 22)) + 1j).astype(np.complex64), psize=np.array([1e-7, 1e-7]),
                  origin=np.array([-1e-6, -1.1e-6]), energy_kev=6.2)
    probe = Storage(data=RNG.normal(size=(2, 8, 8)).astype(np.complex64), psize=obj.psize,
                    origin=np.array([-4e-7, -4e-7]), energy_kev=6.2)
    model = SimpleNamespace(objects={"scan1": obj}, probes={"scan1": probe},
                            scans=[SimpleNamespace(label="scan1", positions=np.array([[0.0, 1e-7], [2e-7, 3e-7]]))])
    params = Param({"run": "t", "io": {"autosave": {"active": True, "interval": 4}},
                    "engines": {"e1": {"name": "DM", "numiter": 2}}})
    runtime = {"run": "t", "start": "now", "iter_info": [
        iter_info_entry(1, "DM", 0.1, {"fourier_error": 3.0, "likelihood": 2.0, "exit_change": 1.0}),
        iter_info_entry(2, "DM", 0.1, {"fourier_error": 1.5}, iterations=2, numiter=2)]}
    path = tmp_path / "ours.ptyr"
    write_ptyr(path, model, params, runtime)
    return path, model


def test_ptyr_has_the_types_ptypys_load_run_reads_as_attributes(ours):
    path, model = ours
    with h5py.File(path) as f:
        assert text(f["header/kind"]) == "minimal"
        content = f["content"]
        # load_run reads content.pars, P.runtime.iter_info: groups typed 'param' become ptypy Params
        assert content.attrs["type"] == "param"
        assert content["pars"].attrs["type"] == "param" and content["pars/io/autosave"].attrs["type"] == "param"
        assert content["runtime"].attrs["type"] == "param"
        assert content["obj"].attrs["type"] == "dict" and content["obj/scan1"].attrs["type"] == "dict"
        info = content["runtime/iter_info"]
        assert info.attrs["type"] == "list" and sorted(info) == ["00000", "00001"]
        last = info["00001"]
        assert last["iterations"][()] == 2 and last["numiter"][()] == 2 and text(last["engine"]) == "DM"
        assert last["error"].shape == (3,) and last["error"][0] == 1.5 and np.isnan(last["error"][1])


@pytest.mark.parametrize("kind", ["obj", "probe"])
def test_ptyr_storages_carry_what_ptypys_storage_from_dict_needs(ours, kind):
    path, model = ours
    st = getattr(model, "objects" if kind == "obj" else "probes")["scan1"]
    with h5py.File(path) as f:
        node = f[f"content/{kind}/scan1"]
        assert text(node["ID"]) == "Sscan1"  # 'S' is ptypy's Storage prefix: kept as the ID
        flags = {k: node[k][()] for k in ("padding", "padonly", "_is_scattered", "model_initialized",
                                          "DataTooSmall")}
        assert flags == {"padding": 0, "padonly": False, "_is_scattered": False, "model_initialized": True,
                         "DataTooSmall": False}
        assert all(node[k].attrs["type"] == "scalar" for k in flags)
        np.testing.assert_array_equal(node["data"][()], st.data)
        assert node["shape"].attrs["type"] == "arraytuple" and tuple(node["shape"][()]) == st.data.shape
        assert node["layermap"].attrs["type"] == "arraylist"
        np.testing.assert_allclose(node["_center"][()], -st.origin / st.psize)
        np.testing.assert_allclose(node["_origin"][()], st.origin)


def test_ptyr_read_back_gives_attribute_access_and_run_counts(ours):
    rec = read_ptyr(ours[0])
    assert isinstance(rec.params, Param) and rec.params.io.autosave.interval == 4
    assert [r["iterations"] for r in rec.iter_info] == [1, 2]
    assert rec.probes["scan1"]["ID"] == "Sscan1"


# ------------------------------------------------------------- ptypy writes, difframe reads


def write_ptypy_ptyr(path, kind="minimal"):
    """``Ptycho.save_run`` layout as measured: a Storage._to_dict per ID, Param-typed content/pars/runtime.

    Lists are ``list`` groups of ``%05d`` scalars (ptypy on numpy >= 2); one
    ``error`` is ptypy's ``zeros((1,))`` (an engine without error metrics).
    """
    obj = (RNG.normal(size=(1, 16, 18)) + 1j * RNG.normal(size=(1, 16, 18))).astype(np.complex64)
    probe = RNG.normal(size=(1, 8, 8)).astype(np.complex64)
    with h5py.File(path, "w") as f:
        f.attrs["h5rw_version"] = "0.1"
        header = typed_group(f, "header", "dict")
        typed(header, "kind", kind, "string", dtype=h5py.string_dtype())
        typed(header, "description", "Ptypy .h5 compatible storage format", "string", dtype=h5py.string_dtype())
        content = typed_group(f, "content", "param")
        for group, data in (("obj", obj), ("probe", probe)):
            st = typed_group(typed_group(content, group, "dict"), "S00G00", "dict")
            typed(st, "ID", "S00G00", "string", dtype=h5py.string_dtype())
            typed(st, "numID", 1, "scalar")
            typed_group(st, "_pool", "dict")
            typed_group(st, "_recs", "dict")
            typed(st, "_record", np.array((b"S00G00",), dtype=[("ID", "S16")]), "scalar")
            typed(st, "data", data, "array", compression="gzip")
            shape = typed_group(st, "shape", "tuple")
            for i, n in enumerate(data.shape):
                typed(shape, f"{i:05d}", n, "scalar")
            typed(typed_group(st, "layermap", "list"), "00000", 0, "scalar")
            for name, value in (("_psize", [5e-8, 5e-8]), ("_center", [8.0, 9.0]), ("_origin", [-4e-7, -4.5e-7])):
                typed(st, name, np.array(value), "array")
            for name, value in (("fill_value", 0.0), ("padding", 0), ("nlayers", 1), ("DataTooSmall", False),
                                ("padonly", False), ("model_initialized", True), ("_is_scattered", False)):
                typed(st, name, value, "scalar")
            if kind == "dump":
                grids = np.indices(data.shape[1:])[:, None] * 5e-8
                typed(st, "grids", grids, "arraytuple", compression="gzip")
        pars = typed_group(content, "pars", "param")
        typed(typed_group(pars, "io", "param"), "home", "./", "string", dtype=h5py.string_dtype())
        runtime = typed_group(content, "runtime", "param")
        typed(runtime, "run", "moon", "string", dtype=h5py.string_dtype())
        typed(runtime, "allstop", np.zeros(1), "None")
        info = typed_group(runtime, "iter_info", "list")
        records = [("DM", 1, 1, [3.0, 2.0, 1.0]), ("DM", 2, 2, [2.0, 1.0, 0.5]), ("ML", 1, 3, [0.0])]
        for i, (engine, it, its, err) in enumerate(records if kind == "minimal" else records[-1:]):
            rec = typed_group(info, f"{i:05d}", "dict")
            typed(rec, "engine", engine, "string", dtype=h5py.string_dtype())
            typed(rec, "iteration", it, "scalar")
            typed(rec, "iterations", its, "scalar")
            typed(rec, "numiter", 2, "scalar")
            typed(rec, "duration", 0.01, "scalar")
            typed(rec, "error", np.array(err), "array")
        if kind == "minimal":
            typed(typed_group(content, "positions", "dict"), "S00G00", np.array([[0.0, 0.0], [1e-7, 2e-7]]), "array")
    return obj, probe


def test_reads_a_ptypy_minimal_ptyr(tmp_path):
    path = tmp_path / "moon_ML_0003.ptyr"
    obj, probe = write_ptypy_ptyr(path)
    rec = read_ptyr(path)
    np.testing.assert_array_equal(rec.objects["S00G00"]["data"], obj)
    np.testing.assert_array_equal(rec.probes["S00G00"]["data"], probe)
    assert rec.objects["S00G00"]["shape"] == (1, 16, 18) and rec.objects["S00G00"]["layermap"] == [0]
    # 'iteration' counts within each engine, 'iterations' over the run (as ptypy writes them)
    assert [r["iteration"] for r in rec.iter_info] == [1, 2, 1]
    assert [r["iterations"] for r in rec.iter_info] == [1, 2, 3]
    np.testing.assert_array_equal(rec.iter_info[0]["error"], [3.0, 2.0, 1.0])
    assert rec.iter_info[2]["error"][0] == 0.0 and np.isnan(rec.iter_info[2]["error"][1:]).all()
    assert isinstance(rec.runtime, Param) and rec.runtime.run == "moon" and rec.runtime.allstop is None
    np.testing.assert_array_equal(rec.positions["S00G00"], [[0.0, 0.0], [1e-7, 2e-7]])


def test_plot_draws_a_ptypy_ptyr(tmp_path, capsys):
    path = tmp_path / "moon_ML_0003.ptyr"
    write_ptypy_ptyr(path)
    out = tmp_path / "moon.png"
    assert plot.main(SimpleNamespace(file=str(path), output=str(out))) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_ptypy_dump_keeps_its_grids_as_arrays(tmp_path):
    path = tmp_path / "moon_DM_0002.ptyr"
    obj, _ = write_ptypy_ptyr(path, kind="dump")
    rec = read_ptyr(path)
    grids = rec.objects["S00G00"]["grids"]
    assert isinstance(grids, tuple) and len(grids) == 2 and grids[0].shape == obj.shape
    assert [r["iterations"] for r in rec.iter_info] == [3]


@pytest.mark.parametrize("group", ["probe", "obj"])
def test_recon_model_starts_from_a_ptypy_ptyr(tmp_path, group):
    path = tmp_path / "moon.ptyr"
    obj, probe = write_ptypy_ptyr(path)
    got = load_recon({"rfile": str(path), "ID": "S00G00"}, group, SimpleNamespace(psize=(5e-8, 5e-8)))
    np.testing.assert_array_equal(got, probe if group == "probe" else obj)


# ------------------------------------------------------------- typed-tree details ptypy relies on


def test_param_nodes_round_trip_as_param(tmp_path):
    path = tmp_path / "p.h5"
    h5typed.write(path, {"tree": Param({"io": {"home": "./"}}), "plain": {"a": 1}})
    with h5py.File(path) as f:
        assert f["tree"].attrs["type"] == "param" and f["tree/io"].attrs["type"] == "param"
        assert f["plain"].attrs["type"] == "dict"
    back = h5typed.read(path)
    assert isinstance(back["tree"], Param) and back["tree"].io.home == "./"
    assert type(back["plain"]) is dict


def test_read_array_accepts_every_form_ptypy_stores_a_list_in(tmp_path):
    path = tmp_path / "l.h5"
    with h5py.File(path, "w") as f:
        typed(f, "arraylist", np.arange(3), "arraylist")
        group = typed_group(f, "listgroup", "list")  # ptypy on numpy >= 2
        for i in range(3):
            typed(group, f"{i:05d}", i, "scalar")
        nones = typed_group(f, "nones", "list")  # ptypy's positions when a scan has none
        typed(nones, "00000", np.zeros(1), "None")
    with h5py.File(path) as f:
        for name in ("arraylist", "listgroup"):
            np.testing.assert_array_equal(h5typed.read_array(f[name]), [0, 1, 2])
        with pytest.raises(DataError, match=r"/nones: expected numbers, found list"):
            h5typed.read_array(f["nones"], source="l.h5")


def write_ptypy_ptyd(path, frames, *, indices_as_group=False, legacy_weight2d=None):
    """``PtyScan`` 'append' layout as measured; ptypy on numpy >= 2 writes indices as a list group,
    and the layout of ptypy's doc/rst/ptyd.rst keeps one detector weight in meta with empty chunk weights."""
    n, h, w = frames.shape
    with h5py.File(path, "w") as f:
        for name in ("chunks", "meta", "info"):
            typed_group(f, name, "dict")
        meta = f["meta"]
        for name, value, kind in (("version", 0.1, "scalar"), ("num_frames", n, "scalar"),
                                  ("label", np.zeros(1), "None"), ("shape", np.array([h, w]), "array"),
                                  ("psize", np.array([172e-6, 172e-6]), "array"), ("energy", 6.2, "scalar"),
                                  ("center", np.array([h / 2, w / 2]), "array"), ("distance", 7.19, "scalar")):
            typed(meta, name, value, kind)
        chunk = typed_group(f["chunks"], "0", "dict")
        typed(chunk, "data", frames, "array")
        typed(chunk, "positions", np.arange(2.0 * n).reshape(n, 2) * 1e-7, "array")
        if indices_as_group:
            group = typed_group(chunk, "indices", "list")
            for i in range(n):
                typed(group, f"{i:05d}", i, "scalar")
        else:
            typed(chunk, "indices", np.arange(n), "arraylist")
        if legacy_weight2d is None:
            typed(chunk, "weights", np.ones(frames.shape), "array")
        else:
            typed(chunk, "weights", np.array([]), "array")
            typed(meta, "weight2d", legacy_weight2d, "array")


def test_reads_a_ptypy_ptyd_with_array_indices(tmp_path):
    frames = RNG.poisson(5.0, size=(4, 8, 8)).astype(np.int32)
    write_ptypy_ptyd(tmp_path / "a.ptyd", frames)
    raw = read_ptyd(tmp_path / "a.ptyd")
    np.testing.assert_array_equal(raw.frames, frames)
    assert raw.mask.all() and raw.energy_kev == 6.2 and raw.center == (4.0, 4.0)


def test_reads_a_ptypy_ptyd_written_under_numpy2(tmp_path):
    frames = RNG.poisson(5.0, size=(4, 8, 8)).astype(np.int32)
    write_ptypy_ptyd(tmp_path / "b.ptyd", frames, indices_as_group=True)
    np.testing.assert_array_equal(read_ptyd(tmp_path / "b.ptyd").frames, frames)


def test_a_legacy_ptyd_keeps_its_detector_mask(tmp_path):
    frames = RNG.poisson(5.0, size=(4, 8, 8)).astype(np.int32)
    weight2d = np.pad(np.ones((6, 6)), 1)
    write_ptypy_ptyd(tmp_path / "c.ptyd", frames, legacy_weight2d=weight2d)
    mask = read_ptyd(tmp_path / "c.ptyd").mask
    assert mask is not None and (np.broadcast_to(mask, frames.shape) == (weight2d > 0)).all()


def test_our_ptyd_chunks_hold_only_datasets_as_ptydscan_check_needs(tmp_path):
    """PtydScan.check takes ``.shape`` of every child of chunk 0 and slices each one frame by frame."""
    from difframe.ptycho.data import PreparedData
    from difframe.ptycho.ptyd import write_ptyd

    frames = RNG.poisson(5.0, size=(3, 8, 8)).astype(float)
    prepared = PreparedData(data=frames, mask=np.ones((8, 8), bool), positions=np.zeros((3, 2)), label="s",
                            psize_m=(172e-6, 172e-6), energy_kev=6.2, distance_m=7.19, center=(4.0, 4.0))
    path = Path(write_ptyd(tmp_path / "s.ptyd", prepared))
    with h5py.File(path) as f:
        chunk = f["chunks/0"]
        assert all(isinstance(chunk[k], h5py.Dataset) and chunk[k].shape[0] == 3 for k in chunk)
        assert sorted(f["meta"]) == sorted(["version", "num_frames", "label", "shape", "psize", "energy",
                                            "center", "distance"])
