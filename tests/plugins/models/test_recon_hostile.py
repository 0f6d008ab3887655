"""Hostile and faulty ``.ptyr`` files for the ``recon`` model and for reading a reconstruction back (issue 10)."""

import h5py
import numpy as np
import pytest

from difframe.errors import DataError
from difframe.manager import PluginManager
from difframe.ptycho import h5typed
from difframe.ptycho.data import PreparedData
from difframe.ptycho.models import ModelContext, build_illumination, build_sample
from difframe.ptycho.ptyr import read_ptyr


@pytest.fixture(scope="module")
def plugins():
    return PluginManager()


def scan(shape=(64, 64)):
    return PreparedData(label="s", data=np.ones((2, *shape)), mask=np.ones(shape), positions=np.zeros((2, 2)),
                        energy_kev=8.0, distance_m=1.0, psize_m=(1e-4, 1e-4), center=(32, 32))


def ctx(shape=(64, 64), psize=1e-7, **kw):
    return ModelContext(shape=shape, psize=(psize, psize), energy_kev=8.0, distance_m=1.0, data=scan(), **kw)


def ptyr(path, group="probe", shape=(64, 64), psize=1e-7):
    field = np.exp(1j * np.arange(np.prod(shape)).reshape(1, *shape) / 100).astype(np.complex64)
    h5typed.write(path, {"header": {"kind": "minimal"}, "content": {"obj": {}, "probe": {}, group: {
        "Sscan00G00": {"data": field, "_psize": np.array([psize, psize])}}}})
    return path


def test_a_probe_or_object_too_small_for_a_view_is_refused(tmp_path, plugins):
    path = ptyr(tmp_path / "p.ptyr", shape=(17, 33))
    with pytest.raises(DataError, match=rf"{path}:/content/probe/Sscan00G00: a 17 x 33 probe .* cannot hold a "
                                        r"64 x 64 view"):
        build_illumination({"model": "recon", "recon": {"rfile": str(path)}}, ctx(), plugins)
    path = ptyr(tmp_path / "o.ptyr", "obj", shape=(2, 2))
    with pytest.raises(DataError, match=r"a 2 x 2 obj .* cannot hold a 64 x 64 view"):
        build_sample({"model": "recon", "recon": {"rfile": str(path)}}, ctx(shape=(200, 200)), plugins)
    # a probe one pixel short of the frame after resampling (zoom rounding) is padded, as before
    path = ptyr(tmp_path / "r.ptyr", shape=(63, 64), psize=1e-7)
    assert build_illumination({"model": "recon", "recon": {"rfile": str(path)}}, ctx(), plugins).shape == (1, 64, 64)


def test_a_pixel_size_lie_is_refused_before_resampling(tmp_path, plugins, monkeypatch):
    path = ptyr(tmp_path / "lie.ptyr", psize=1e-2)  # 10^5 times the scan's pixel: 6.4e6 x 6.4e6 after zooming
    with pytest.raises(DataError, match=rf"{path}:/content/probe/Sscan00G00: resampling its 64 x 64 pixels of "
                                        r"\[0.01, 0.01\] m .* \(to 6.4e\+06 x 6.4e\+06\) needs 1.75 PiB"):
        build_illumination({"model": "recon", "recon": {"rfile": str(path)}}, ctx(), plugins)
    for bad in (0.0, -1e-7, np.nan):
        with h5py.File(path, "a") as f:
            f["content/probe/Sscan00G00/_psize"][...] = bad
        with pytest.raises(DataError, match=r"/_psize = \[.*\]: expected one or two positive pixel sizes"):
            build_illumination({"model": "recon", "recon": {"rfile": str(path)}}, ctx(), plugins)


def test_reading_a_reconstruction_back_refuses_cycles_links_and_sizes(tmp_path, monkeypatch):
    path = ptyr(tmp_path / "run.ptyr")
    with h5py.File(path, "a") as f:
        f["content/probe/Sscan00G00"]["me"] = f["content/probe"]  # a self-linked group
    with pytest.raises(DataError, match=f"{path}:/content/probe/Sscan00G00/me: link cycle"):
        read_ptyr(path)
    with h5py.File(path, "a") as f:
        del f["content/probe/Sscan00G00/me"]
        f["content/pars"] = h5py.ExternalLink("/etc/passwd", "/")
    with pytest.raises(DataError, match=f"{path}:/content/pars: external link to '/etc/passwd'"):
        read_ptyr(path)
    with h5py.File(path, "a") as f:
        del f["content/pars"]
        f["content/obj"].create_dataset("Sbig/data", shape=(1, 2**20, 2**20), dtype="c8", chunks=(1, 64, 64))
    monkeypatch.setenv("DIFFRAME_MEMORY_LIMIT", "4G")
    with pytest.raises(DataError, match=rf"{path}:/content/obj/Sbig/data \(shape \(1, 1048576, 1048576\), complex64"):
        read_ptyr(path)
