"""Hostile and faulty ``.ptyd`` files (issue 10): each refused up front with one message naming file, node, size."""

import os
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from difframe.errors import DataError
from difframe.param import Param
from difframe.plugins.recipes.ptyd import prepare as file_recipe
from difframe.ptycho import h5typed
from difframe.ptycho.data import PreparedData
from difframe.ptycho.ptyd import write_ptyd

CTX = SimpleNamespace(label="moon", positions=None, plugins=None, params=None, data_type="single", dry_run=False)


def prepared(n=7, data=None, positions=None):
    rng = np.random.default_rng(1)
    return PreparedData(label="moon", data=rng.poisson(5.0, (n, 16, 12)) if data is None else data,
                        mask=np.ones((16, 12), bool),
                        positions=rng.normal(0, 1e-6, (n, 2)) if positions is None else positions,
                        energy_kev=6.2, distance_m=7.19, psize_m=(172e-6, 172e-6), center=(8, 6))


def read_back(path):
    return file_recipe(Param({"data": {"dfile": str(path)}, "geometry": {}}), CTX)


def test_a_small_file_declaring_huge_frames_is_refused_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "huge.ptyd"
    h5typed.write(path, {"meta": {"version": 0.1, "num_frames": 6, "shape": np.array([10000, 10000]),
                                  "psize": np.array([172e-6, 172e-6]), "energy": 6.2, "distance": 7.19},
                         "chunks": {"0": {"indices": np.arange(6), "positions": np.zeros((6, 2))}}})
    with h5py.File(path, "a") as f:  # 6 frames of 10^4 x 10^4 declared, none written
        f["chunks/0"].create_dataset("data", shape=(6, 10000, 10000), dtype="i4", chunks=(1, 1000, 1000),
                                     compression="gzip").attrs["type"] = "array"
    assert os.path.getsize(path) < 600_000
    monkeypatch.setenv("DIFFRAME_MEMORY_LIMIT", "1G")
    with pytest.raises(DataError, match=rf"{path}: frames 0..5 of shape \(10000, 10000\) needs 5.03 GiB of memory, "
                                        rf"over the budget of 1 GiB"):
        read_back(path)


def test_a_declared_array_of_terabytes_in_meta_is_refused(tmp_path):
    path = write_ptyd(tmp_path / "m.ptyd", prepared())
    with h5py.File(path, "a") as f:
        del f["meta/center"]
        f["meta"].create_dataset("center", shape=(2**22, 2**22), dtype="f8", chunks=(64, 64), compression="gzip")
        f["meta/center"].attrs["type"] = "array"
    with pytest.raises(DataError, match=rf"{path}:/meta/center \(shape \(4194304, 4194304\), float64.*needs 128 TiB"):
        read_back(path)


@pytest.mark.parametrize("target", ["../elsewhere/s.ptyd.chunk00", "/etc/passwd", "/proc/self/mem"])
def test_chunk_links_leaving_the_folder_are_refused(tmp_path, target):
    (tmp_path / "elsewhere").mkdir()
    write_ptyd(tmp_path / "elsewhere" / "s.ptyd", prepared(), save="link")  # a real chunk one folder away
    (tmp_path / "here").mkdir()
    path = write_ptyd(tmp_path / "here" / "s.ptyd", prepared(), save="link")
    with h5py.File(path, "a") as f:
        del f["chunks/0"]
        f["chunks/0"] = h5py.ExternalLink(target, "/")
    with pytest.raises(DataError, match=f"{path}:/chunks/0: external link to '{target}'"):
        read_back(path)


def test_a_soft_link_cycle_in_info_is_refused(tmp_path):
    path = write_ptyd(tmp_path / "c.ptyd", prepared(), info={"shape": 16})
    with h5py.File(path, "a") as f:
        f["info/loop"] = h5py.SoftLink("/info")
    with pytest.raises(DataError, match=f"{path}:/info/loop: link cycle"):
        read_back(path)


def test_nan_positions_say_so(tmp_path):
    positions = np.random.default_rng(2).normal(0, 1e-6, (97, 2))
    path = write_ptyd(tmp_path / "p.ptyd", prepared(97, positions=positions), frames_per_chunk=50)
    with h5py.File(path, "a") as f:
        f["chunks/1/positions"][3, 1] = np.nan
        f["chunks/1/positions"][5, 0] = np.inf
    with pytest.raises(DataError, match=rf"{path}:/chunks/1/positions: rows \[3, 5\] are NaN or infinite"):
        read_back(path)


def test_negative_and_empty_counts_are_refused(tmp_path):
    data = np.random.default_rng(3).poisson(5.0, (7, 16, 12))
    data[4, 2, 3] = -7
    path = write_ptyd(tmp_path / "neg.ptyd", prepared(data=data))
    with pytest.raises(DataError, match=rf"{path}: frames \[4\] have negative counts on valid pixels \(lowest -7"):
        read_back(path)
    path = write_ptyd(tmp_path / "zero.ptyd", prepared(data=np.zeros((7, 16, 12))))
    with pytest.raises(DataError, match=f"{path}: the 7 frames hold no counts"):
        read_back(path)
    with h5py.File(path, "a") as f:  # counts only where the weights mask the pixel out: still nothing
        f["chunks/0/data"][:, 0, 0] = 100
        f["chunks/0/weights"][:, 0, 0] = 0
    with pytest.raises(DataError, match="hold no counts on their valid pixels"):
        read_back(path)


def test_one_position_at_one_metre_is_refused_by_the_object_frame(tmp_path):
    path = write_ptyd(tmp_path / "far.ptyd", prepared())
    with h5py.File(path, "a") as f:
        f["chunks/0/positions"][2] = (1.0, 1.0)
    # lambda z / (N psize): 2.0e-10 m x 7.19 m / (16 x 172 um) = 5.22e-7 m per object pixel along y
    with pytest.raises(DataError, match=rf"scan 'moon' \({path}\): the object frame of 1.914e\+06 x 1.436e\+06 "
                                        r"pixels \(positions spanning 1 x 1 m at an object pixel of "
                                        r"5.22e-07 x 6.97e-07"):
        read_back(path)


def test_a_corrupt_chunk_names_file_and_node(tmp_path):
    path = write_ptyd(tmp_path / "z.ptyd", prepared(7, data=np.random.default_rng(5).poisson(50.0, (7, 16, 12))))
    with h5py.File(path) as f:
        info = f["chunks/0/data"].id.get_chunk_info(3)
    with open(path, "r+b") as raw:
        raw.seek(info.byte_offset + 2)
        raw.write(b"\x00\xff" * (info.size // 2 - 1))
    with pytest.raises(DataError, match=f"{path}:/chunks/0/data: cannot read"):
        read_back(path)
