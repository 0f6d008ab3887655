"""Typed HDF5 trees: round trips, files laid out as ptypy writes them, pickles refused."""

import pickle

import h5py
import numpy as np
import pytest

from difframe.errors import DataError
from difframe.ptycho import h5typed


def test_round_trip_of_nested_values(tmp_path):
    content = {
        "meta": {"label": "scan_00", "shape": np.array([64, 64]), "energy": 6.2, "center": None,
                 "flag": True, "count": 3, "psize": (172e-6, 172e-6), "weird/key": "slash"},
        "mixed": [1, "two", None, {"x": 1.5}],
        "ints": [1, 2, 3],
        "pair": ("a", 2),
        "frames": np.arange(24, dtype=np.int32).reshape(2, 3, 4),
        "cplx": np.array([[1 + 2j]], dtype=np.complex64),
        "empty": {},
    }
    path = tmp_path / "t.h5"
    h5typed.write(path, content)
    back = h5typed.read(path)
    meta = back["meta"]
    assert meta["label"] == "scan_00" and meta["center"] is None and meta["flag"] is True
    assert meta["count"] == 3 and isinstance(meta["count"], int) and meta["energy"] == 6.2
    assert meta["psize"] == (172e-6, 172e-6) and meta["weird/key"] == "slash"
    np.testing.assert_array_equal(meta["shape"], [64, 64])
    assert back["mixed"] == [1, "two", None, {"x": 1.5}]
    assert [int(v) for v in back["ints"]] == [1, 2, 3]
    assert back["pair"] == ("a", 2)
    np.testing.assert_array_equal(back["frames"], content["frames"])
    assert back["frames"].dtype == np.int32 and back["cplx"].dtype == np.complex64
    assert back["empty"] == {}
    with h5py.File(path) as f:  # the layout ptypy expects
        assert f["meta"].attrs["type"] == "dict" and f["meta/center"].attrs["type"] == "None"
        assert f["meta/center"][()].tolist() == [0.0]
        assert f["pair"].attrs["type"] == "tuple" and f["ints"].attrs["type"] == "arraylist"
        assert f["meta/weird_SLASH_key"].attrs["escaped"] == "1"


def test_reads_bytes_attributes_and_untyped_nodes_as_older_ptypy_wrote(tmp_path):
    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("info")
        g.attrs["type"] = b"dict"
        d = g.create_dataset("name", data=np.asarray(b"moon"), dtype=h5py.string_dtype())
        d.attrs["type"] = b"string"
        g.create_dataset("plain", data=[1.0, 2.0])
    assert h5typed.read(path) == {"info": {"name": "moon", "plain": pytest.approx([1.0, 2.0])}}


class _Trap:
    def __reduce__(self):
        return (open, ("/should-never-exist", "w"))


@pytest.mark.parametrize("kind", ["pickle", "record_array"])
def test_pickled_nodes_are_refused_by_name(tmp_path, kind):
    path = tmp_path / "p.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("content")
        g.attrs["type"] = "dict"
        d = g.create_dataset("evil", data=np.void(pickle.dumps(_Trap())))
        d.attrs["type"] = kind
    with pytest.raises(DataError, match=r"/content/evil.*never unpickles"):
        h5typed.read(path)


def test_unsupported_values_and_missing_files(tmp_path):
    with pytest.raises(DataError, match="unsupported type object"):
        h5typed.write(tmp_path / "x.h5", {"o": object()})
    with pytest.raises(DataError, match="no such HDF5 file"):
        h5typed.read(tmp_path / "missing.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(DataError, match="text.h5"):
        h5typed.read(tmp_path / "text.h5")
