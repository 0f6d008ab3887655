"""Every HDF5 result opens straight onto a picture: the NeXus default chain walked from the root, as silx does."""

from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from difframe.param import Param
from difframe.ptycho.model import Storage
from difframe.ptycho.ptyr import iter_info_entry, read_ptyr, write_ptyr
from difframe.tds.fit import FitResult
from difframe.tds.harvest import Harvest, Volume, load_harvest, write_harvest, write_volume
from difframe.tds.results import write_hdf5
from nexus_walk import default_plot, silx_default_signal

RNG = np.random.default_rng(11)


def test_ptyr_opens_on_the_object_phase_in_metres(tmp_path):
    yy, xx = np.mgrid[:20, :24]
    phase = 0.05 * xx - 0.04 * yy - 0.3  # a ramp inside (-pi, pi): np.angle gives it back exactly
    amplitude = 0.5 + 0.01 * yy
    obj = Storage(data=(amplitude * np.exp(1j * phase))[None].astype(np.complex64), psize=np.array([8e-8, 9e-8]),
                  origin=np.array([-1e-6, -2e-6]), energy_kev=6.2)
    probe = Storage(data=RNG.normal(size=(2, 8, 8)).astype(np.complex64), psize=obj.psize,
                    origin=np.array([-3.2e-7, -3.6e-7]), energy_kev=6.2)
    model = SimpleNamespace(objects={"S00": obj}, probes={"S00": probe},
                            scans=[SimpleNamespace(label="S00", positions=np.zeros((2, 2)))])
    runtime = {"run": "t", "iter_info": [iter_info_entry(1, "DM", 0.1, {"fourier_error": 1.0})]}
    path = tmp_path / "r.ptyr"
    write_ptyr(path, model, Param({"run": "t"}), runtime)
    plot = default_plot(path)
    assert plot.path == "/entry/object_S00" and plot.names == ["y", "x"]
    np.testing.assert_allclose(plot.signal, phase, atol=1e-6)
    np.testing.assert_allclose(plot.axes["y"], -1e-6 + 8e-8 * np.arange(20))
    np.testing.assert_allclose(plot.axes["x"], -2e-6 + 9e-8 * np.arange(24))
    assert plot.units == {"y": "m", "x": "m"}
    with h5py.File(path) as f:
        assert f["entry/object_S00/phase"].attrs["units"] == "rad"
        np.testing.assert_allclose(f["entry/object_S00/amplitude"][()], amplitude, rtol=1e-6)
        np.testing.assert_allclose(f["entry/probe_S00/amplitude"][()], np.abs(probe.data), rtol=1e-6)
    np.testing.assert_array_equal(read_ptyr(path).objects["S00"]["data"], obj.data)  # ptypy's layout intact
    assert silx_default_signal(path) in (None, "/entry/object_S00/phase")


def _fit_result():
    voigt = np.zeros((6, 6))
    voigt[:3, :3] = 95.2
    voigt[np.diag_indices(3)] = 297.0
    voigt[[3, 4, 5], [3, 4, 5]] = 155.7
    return FitResult(names=["C11", "C12", "C44"], values=np.array([297.0, 95.2, 155.7]),
                     sigma=np.array([0.0, 0.4, 0.7]), fitted=np.array([False, True, True]), voigt=voigt,
                     voigt_sigma=voigt / 300, scale=np.ones(2), baseline=np.zeros(2), cost=1.5, converged=True,
                     message="ok", n_points=100, n_spots=2, reduced_chi2=1.01, reference="C11", backend="numpy",
                     history=[9.0, 3.0, 1.5])


def test_fit_results_open_on_the_voigt_matrix_with_its_sigma(tmp_path):
    result = _fit_result()
    path = write_hdf5(result, tmp_path / "fit_results.h5")
    plot = default_plot(path)
    np.testing.assert_array_equal(plot.signal, result.voigt)
    np.testing.assert_array_equal(plot.axes["row"], np.arange(1, 7))
    with h5py.File(path) as f:
        group = f[plot.path]
        np.testing.assert_array_equal(group["voigt_errors"][()], result.voigt_sigma)
        assert group["voigt"].attrs["units"] == "GPa"
        np.testing.assert_array_equal(f["voigt"][()], result.voigt)  # the original paths stay
        np.testing.assert_array_equal(f["entry/cost/cost"][()], [9.0, 3.0, 1.5])
    assert silx_default_signal(path) in (None, plot.signal_name)


def test_harvest_opens_on_its_points_and_reads_back(tmp_path):
    n = 50
    result = Harvest(Q=RNG.normal(size=(n, 3)), intensity=RNG.uniform(1, 2, n), spot=np.zeros(n, int),
                     frame=np.arange(n), pixel=np.zeros((n, 2), int), hkl=np.array([[2, 0, 0]]),
                     G=np.array([[1.5, 0, 0]]), centroid=np.full((1, 3), np.nan),
                     excluded_frames=np.array([3]), attrs={"unit": "1/Angstrom"})
    path = write_harvest(result, tmp_path / "harvest.h5")
    plot = default_plot(path)
    np.testing.assert_array_equal(plot.signal, result.intensity)
    np.testing.assert_allclose(plot.axes["Qx"], result.Q[:, 0], rtol=1e-6)
    np.testing.assert_allclose(plot.axes["Qy"], result.Q[:, 1], rtol=1e-6)
    assert plot.units["Qx"] == "1/Angstrom"
    back = load_harvest(path)
    np.testing.assert_array_equal(back.Q, result.Q)
    np.testing.assert_array_equal(back.excluded_frames, [3])
    assert silx_default_signal(path) in (None, plot.signal_name)


def test_rough_volume_opens_on_the_binned_volume(tmp_path):
    data = RNG.uniform(size=(4, 4, 4))
    data[0, 0, 0] = np.nan  # an empty voxel
    volume = Volume(data=data, counts=np.ones((4, 4, 4), np.int64), axis=np.linspace(-1.5, 1.5, 4), attrs={})
    path = write_volume(volume, tmp_path / "volume.h5")
    plot = default_plot(path)
    np.testing.assert_array_equal(plot.signal, data)
    assert plot.names == ["x", "y", "z"] and set(plot.units.values()) == {"1/Angstrom"}
    with h5py.File(path) as f:
        np.testing.assert_array_equal(f["volume/data"][()], data)  # the documented path is the same dataset
    assert silx_default_signal(path) in (None, plot.signal_name)


def test_walker_rejects_a_file_without_a_chain(tmp_path):
    with h5py.File(tmp_path / "bare.h5", "w") as f:
        f["data"] = np.zeros((3, 3))
    with pytest.raises((AssertionError, KeyError)):
        default_plot(tmp_path / "bare.h5")
