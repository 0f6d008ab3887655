"""Hostile and faulty CXI and beamline HDF5 files for the ``cxi`` and ``hdf5`` recipes (issue 10)."""

from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from difframe.errors import DataError
from difframe.param import Param
from difframe.parallel import Ranks
from difframe.plugins.recipes.cxi import prepare as cxi_recipe
from difframe.plugins.recipes.hdf5 import prepare as hdf5_recipe

CTX = SimpleNamespace(label="t", positions=None, plugins=None, params=None, data_type="single", dry_run=True,
                      ranks=Ranks())
GEOMETRY = {"energy": 6.2, "distance": 7.19, "psize": 172e-6, "prop_type": "nearfield"}
DET = "entry_1/instrument_1/detector_1"


def write_cxi(path, n=5, shape=(8, 8)):
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f.create_dataset(f"{DET}/data", data=rng.poisson(20.0, (n, *shape)).astype(np.int32), chunks=(1, *shape),
                         compression="gzip")
        f[f"{DET}/distance"] = 2.0
        f[f"{DET}/x_pixel_size"] = 75e-6
        f[f"{DET}/y_pixel_size"] = 75e-6
        f["entry_1/instrument_1/source_1/wavelength"] = 1e-10
        f["entry_1/sample_1/geometry_1/translation"] = rng.normal(0, 1e-6, (n, 3))
        f["entry_1/positions"] = rng.normal(0, 1e-6, (n, 2))  # for the hdf5 recipe
    return path


def cxi(path):
    return cxi_recipe(Param({"data": {"recipe": {"cxi": {"cxifile": str(path)}}}, "geometry": GEOMETRY}), CTX)


def hdf5(path, **p):
    return hdf5_recipe(Param({"data": {"recipe": {"hdf5": {"file": str(path), "intensities": f"{DET}/data",
                                                           "positions": "entry_1/positions", "distance": 1.0,
                                                           "psize": 75e-6, **p}}},
                              "geometry": GEOMETRY}), CTX)


def test_the_plain_files_read(tmp_path):
    path = write_cxi(tmp_path / "ok.cxi")
    assert cxi(path).data.shape == (5, 8, 8)
    assert hdf5(path).data.shape == (5, 8, 8)


@pytest.mark.parametrize("target", ["../secret.h5", "/etc/passwd"])
def test_frames_linked_from_outside_the_folder_are_refused(tmp_path, target):
    write_cxi(tmp_path / "secret.h5")
    (tmp_path / "in").mkdir()
    path = write_cxi(tmp_path / "in" / "x.cxi")
    with h5py.File(path, "a") as f:
        del f[f"{DET}/data"]
        f[f"{DET}/data"] = h5py.ExternalLink(target, f"/{DET}/data")
    for read in (cxi, hdf5):
        with pytest.raises(DataError, match=f"{path}:/{DET}/data: external link to '{target}'"):
            read(path)


def test_nan_translations_say_so(tmp_path):
    path = write_cxi(tmp_path / "nan.cxi")
    with h5py.File(path, "a") as f:
        f["entry_1/sample_1/geometry_1/translation"][1, 0] = np.nan
    with pytest.raises(DataError, match=r"geometry_1/translation: rows \[1\] are NaN or infinite"):
        cxi(path)


def test_declared_sizes_are_refused(tmp_path, monkeypatch):
    path = write_cxi(tmp_path / "big.cxi")
    with h5py.File(path, "a") as f:  # a few kB declaring 30 GiB of frames and a 6 GiB mask
        del f[f"{DET}/data"]
        f.create_dataset(f"{DET}/data", shape=(5, 40000, 40000), dtype="i4", chunks=(1, 1000, 1000),
                         compression="gzip")
        f.create_dataset("entry_1/pixel_mask", shape=(40000, 40000), dtype="u4", chunks=(1000, 1000),
                         compression="gzip")
    monkeypatch.setenv("DIFFRAME_MEMORY_LIMIT", "2G")
    with pytest.raises(DataError, match=rf"{path}:/{DET}/data: frames 0..4 of shape \(40000, 40000\) needs 67.1 GiB"):
        cxi(path)
    with pytest.raises(DataError, match=rf"{path}:/entry_1/pixel_mask \(shape \(40000, 40000\), uint32\) needs "
                                        r"5.96 GiB of memory, over the budget of 2 GiB"):
        hdf5(path, mask="entry_1/pixel_mask")
    with pytest.raises(DataError, match=rf"{path}:/{DET}/data: frames 0..4 .* needs 67.1 GiB"):
        hdf5(path)


def test_a_corrupt_frame_chunk_names_file_and_node(tmp_path):
    path = write_cxi(tmp_path / "bad.cxi")
    with h5py.File(path) as f:
        info = f[f"{DET}/data"].id.get_chunk_info(2)
    with open(path, "r+b") as raw:
        raw.seek(info.byte_offset + 2)
        raw.write(b"\x00\xff" * (info.size // 2 - 1))
    for read in (cxi, hdf5):
        with pytest.raises(DataError, match=f"{path}:/{DET}/data: cannot read"):
            read(path)
