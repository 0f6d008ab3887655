""".ptyd files: round trips in every save mode, files laid out as ptypy writes them, bad files."""

import os
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from difframe.errors import DataError
from difframe.param import Param
from difframe.plugins.recipes.ptyd import prepare as file_recipe
from difframe.ptycho.data import PreparedData
from difframe.ptycho.ptyd import read_ptyd, write_ptyd

CTX = SimpleNamespace(label="moon", positions=None, plugins=None, params=None, data_type="single", dry_run=False)


def prepared(n=7):
    rng = np.random.default_rng(1)
    mask = np.ones((16, 12), bool)
    mask[3, 4] = False
    return PreparedData(label="moon", data=rng.poisson(5.0, (n, 16, 12)), mask=mask,
                        positions=rng.normal(0, 1e-6, (n, 2)), energy_kev=6.2, distance_m=7.19,
                        psize_m=(172e-6, 172e-6), center=(8, 6), propagation="nearfield")


def read_back(path):
    return file_recipe(Param({"data": {"dfile": str(path)}, "geometry": {}}), CTX)


@pytest.mark.parametrize("save, chunks", [("append", 3), ("link", 3), ("merge", 1)])
def test_round_trip_in_each_save_mode(tmp_path, save, chunks):
    src = prepared()
    path = write_ptyd(tmp_path / "moon.ptyd", src, save=save, frames_per_chunk=3, info={"shape": 16})
    with h5py.File(path) as f:
        assert sorted(f["chunks"]) == [str(i) for i in range(chunks)]
        assert f["chunks/0/data"].dtype == np.int32 and f["meta"].attrs["type"] == "dict"
        if save == "link":
            assert isinstance(f["chunks"].get("1", getlink=True), h5py.ExternalLink)
    if save == "link":
        assert (tmp_path / "moon.ptyd.chunk01").is_file()
    back = read_back(path)
    np.testing.assert_array_equal(back.data, src.data)
    np.testing.assert_array_equal(back.positions, src.positions)
    assert back.mask.shape == (16, 12) and not back.mask[3, 4]  # the 7 alike weight maps read as one
    assert back.frame_mask().sum() == src.mask.sum() * 7
    assert (back.energy_kev, back.distance_m, back.psize_m, back.center) == (6.2, 7.19, (172e-6, 172e-6), (8, 6))
    assert back.propagation == "nearfield"


def test_weight_maps_that_differ_stay_one_per_frame(tmp_path):
    src = prepared()
    masks = np.broadcast_to(src.mask, src.data.shape).copy()
    masks[5, 0, 0] = False
    path = write_ptyd(tmp_path / "m.ptyd", PreparedData(**{**src.__dict__, "mask": masks}), frames_per_chunk=3)
    back = read_back(path)
    np.testing.assert_array_equal(back.mask, masks)


def test_link_files_move_together(tmp_path):
    write_ptyd(tmp_path / "a" / "s.ptyd", prepared(), save="link", frames_per_chunk=4)
    os.rename(tmp_path / "a", tmp_path / "b")
    assert read_back(tmp_path / "b" / "s.ptyd").num_frames == 7


def test_an_earlier_file_is_kept(tmp_path):
    path = tmp_path / "s.ptyd"
    write_ptyd(path, prepared(3))
    write_ptyd(path, prepared(5))
    write_ptyd(path, prepared(6))
    assert [read_ptyd(p).frames.shape[0] for p in (path, str(path) + ".old", str(path) + ".old1")] == [6, 3, 5]


def test_prepare_saves_dfile_when_asked(tmp_path):
    from difframe.ptycho.prepare import RawScan, prepare

    src = prepared()
    raw = RawScan(frames=src.data, positions=src.positions, energy_kev=6.2, distance_m=1.0,
                  psize_m=(1e-4, 1e-4), center=(8, 6))
    out = prepare(raw, Param({"data": {"dfile": str(tmp_path / "x.ptyd"), "save": "link", "shape": 8}}), CTX)
    back = read_back(tmp_path / "x.ptyd")
    np.testing.assert_array_equal(back.data, out.data)
    assert out.shape == (8, 8)


def write_like_ptypy(path, frames, positions, *, link=False):
    """The layout ptypy's PtyScan writes: bytes type attributes, None as zeros(1), 'indices' per chunk."""
    def typed(group, name, value, kind):
        d = group.create_dataset(name, data=value)
        d.attrs["type"] = kind

    with h5py.File(path, "w") as f:
        for name in ("chunks", "meta", "info"):
            f.create_group(name).attrs["type"] = b"dict"
        m = f["meta"]
        typed(m, "version", 0.1, b"scalar")
        typed(m, "num_frames", len(frames), b"scalar")
        typed(m, "label", np.zeros(1), b"None")
        typed(m, "shape", np.array([frames.shape[1], frames.shape[2]]), b"arraytuple")
        typed(m, "psize", 172e-6, b"scalar")
        typed(m, "energy", 7.2, b"scalar")
        typed(m, "center", np.array([31.0, 30.0]), b"array")
        typed(m, "distance", 7.19, b"scalar")
        typed(f["info"], "weight2d", True, b"scalar")
        halves = [slice(0, 2), slice(2, None)]
        for num, sel in enumerate(halves):
            target = f["chunks"] if not link else None
            if link:
                part = str(path) + ".part%03d" % num
                target = h5py.File(part, "w")
                g = target["/"]
                f["chunks"][str(num)] = h5py.ExternalLink(part, "/")
            else:
                g = target.create_group(str(num))
            g.attrs["type"] = b"dict"
            typed(g, "data", frames[sel][::-1], b"array")
            typed(g, "indices", np.arange(len(frames))[sel][::-1], b"arraylist")  # unordered
            typed(g, "positions", positions[sel][::-1], b"array")
            typed(g, "weights", np.ones_like(frames[sel], dtype=bool), b"array")
            if link:
                target.close()


@pytest.mark.parametrize("link", [False, True])
def test_reads_files_written_by_ptypy(tmp_path, link):
    frames = np.arange(5 * 64 * 62, dtype=np.int32).reshape(5, 64, 62)
    positions = np.arange(10, dtype=float).reshape(5, 2) * 1e-6
    path = tmp_path / "ptypy.ptyd"
    write_like_ptypy(path, frames, positions, link=link)
    back = read_back(path)
    np.testing.assert_array_equal(back.data, frames)  # frames put back in index order
    np.testing.assert_array_equal(back.positions, positions)
    assert back.psize_m == (172e-6, 172e-6) and back.energy_kev == 7.2 and back.center == (31.0, 30.0)
    assert back.mask.all() and back.propagation == "farfield"


def test_bad_files_each_give_one_clear_message(tmp_path):
    good = tmp_path / "good.ptyd"
    write_ptyd(good, prepared(), save="link", frames_per_chunk=3)
    os.remove(str(good) + ".chunk01")
    with pytest.raises(DataError, match="chunk 1 is missing .*good.ptyd.chunk01"):
        read_ptyd(good)

    gap = tmp_path / "gap.ptyd"
    write_ptyd(gap, prepared(), save="append", frames_per_chunk=3)
    with h5py.File(gap, "a") as f:
        del f["chunks/1"]
    with pytest.raises(DataError, match=r"chunk 1 is missing \(chunks present: \[0, 2\]\)"):
        read_ptyd(gap)

    shapes = tmp_path / "shapes.ptyd"
    write_ptyd(shapes, prepared(), save="append", frames_per_chunk=3)
    with h5py.File(shapes, "a") as f:
        del f["chunks/2/data"], f["chunks/2/weights"]
        f["chunks/2"].create_dataset("data", data=np.zeros((1, 16, 10)))
    with pytest.raises(DataError, match="different frame shapes"):
        read_ptyd(shapes)

    nan = tmp_path / "nan.ptyd"
    p = prepared()
    write_ptyd(nan, PreparedData(**{**p.__dict__, "data": p.data + 0.5}), save="append")
    with h5py.File(nan, "a") as f:
        f["chunks/0/data"][4, 0, 0] = np.nan
    with pytest.raises(DataError, match=r"frames \[4\] contain NaN"):
        read_ptyd(nan)

    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = 1
    with pytest.raises(DataError, match="not a .ptyd"):
        read_ptyd(other)
    (tmp_path / "text.ptyd").write_text("hello")
    with pytest.raises(DataError, match="not an HDF5 file"):
        read_ptyd(tmp_path / "text.ptyd")
    with pytest.raises(DataError, match="no such"):
        read_ptyd(tmp_path / "absent.ptyd")
