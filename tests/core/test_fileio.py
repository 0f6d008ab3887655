"""atomic_path: results honour the umask whichever library writes them; failures leave nothing behind."""

import json
import os
import stat

import fabio
import h5py
import numpy as np
import pytest
from PIL import Image

from difframe.fileio import atomic_path


def _text(tmp):
    tmp.write_text(json.dumps({"a": 1}))


def _hdf5(tmp):
    with h5py.File(tmp, "w") as f:
        f["x"] = np.arange(3)


def _png(tmp):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp, format="PNG")


def _cbf(tmp):
    fabio.cbfimage.CbfImage(data=np.zeros((4, 4), np.int32)).write(str(tmp))


def _matplotlib(tmp):
    from matplotlib.figure import Figure

    Figure(figsize=(1, 1)).savefig(tmp, format="png")


@pytest.fixture
def umask():
    """Set the process umask for one test, restoring it afterwards."""
    old = os.umask(0o022)
    yield lambda value: os.umask(value)
    os.umask(old)


@pytest.mark.parametrize("writer", [_text, _hdf5, _png, _cbf, _matplotlib])
@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, writer, mask, mode):
    umask(mask)
    target = tmp_path / "sub" / "result.out"
    with atomic_path(target) as tmp:
        writer(tmp)
    assert stat.S_IMODE(target.stat().st_mode) == mode
    assert [p.name for p in target.parent.iterdir()] == ["result.out"]


def test_replacing_a_private_file_gives_the_umask_mode(tmp_path, umask):
    umask(0o022)
    target = tmp_path / "old.json"
    target.write_text("old")
    target.chmod(0o600)
    with atomic_path(target) as tmp:
        _text(tmp)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644 and json.loads(target.read_text()) == {"a": 1}


def test_a_failed_write_keeps_the_earlier_file_and_leaves_no_part(tmp_path):
    target = tmp_path / "kept.txt"
    target.write_text("earlier")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".kept.txt.") and tmp.name.endswith(".part")
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "earlier" and sorted(p.name for p in tmp_path.iterdir()) == ["kept.txt"]


def test_difframe_writers_follow_the_umask(tmp_path, umask):
    """The result writers themselves (.ptyr, PNG, parametri/JSON/HDF5 fit results, harvest) under umask 027."""
    from types import SimpleNamespace

    from difframe.param import Param
    from difframe.ptycho.model import Storage
    from difframe.ptycho.plotting import save_png
    from difframe.ptycho.ptyr import write_ptyr
    from difframe.tds.harvest import Harvest, write_harvest
    from difframe.tds.results import write_all
    from test_nexus import _fit_result

    umask(0o027)
    st = Storage(data=np.ones((1, 8, 8), np.complex64), psize=np.array([1e-7, 1e-7]), origin=np.zeros(2),
                 energy_kev=6.2)
    write_ptyr(tmp_path / "r.ptyr", SimpleNamespace(objects={"S": st}, probes={"S": st}, scans=[]), Param({}),
               {"iter_info": []})
    save_png(tmp_path / "p.png", {"S": st}, {"S": st}, [])
    write_all(_fit_result(), tmp_path)
    write_harvest(Harvest(Q=np.zeros((2, 3)), intensity=np.ones(2), spot=np.zeros(2, int), frame=np.zeros(2, int),
                          pixel=np.zeros((2, 2), int), hkl=np.array([[1, 1, 1]]), G=np.ones((1, 3)),
                          centroid=np.zeros((1, 3)), excluded_frames=np.zeros(0, int)), tmp_path / "h.h5")
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert set(modes) == {"r.ptyr", "p.png", "parametri.txt", "fit_results.json", "fit_results.h5", "h.h5"}
    assert set(modes.values()) == {0o640}, modes
