"""CXI input: the real P25 near-field scan, and synthetic files with known values."""

from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from difframe.errors import DataError
from difframe.param import Param
from difframe.plugins.recipes.cxi import prepare as cxi_recipe
from difframe.ptycho.cxi import read_cxi

CTX = SimpleNamespace(label="p25", positions=None, plugins=None, params=None, data_type="single", dry_run=False)
P25 = "PETRAIII_P25_Near_Field_Ptycho.cxi"


def scan_params(path, **cxi):
    return Param({"data": {"recipe": {"cxi": {"cxifile": str(path), **cxi}}},
                  "geometry": {"energy": 6.2, "distance": 7.19, "psize": 172e-6, "prop_type": "nearfield"}})


def test_real_p25_scan(real_data):
    out = cxi_recipe(scan_params(real_data / P25), CTX)
    assert out.data.shape == (200, 100, 100) and out.propagation == "nearfield"
    assert out.distance_m == pytest.approx(1.12) and out.psize_m == pytest.approx((55e-6, 55e-6))
    assert out.wavelength_m == pytest.approx(0.9795e-10, rel=1e-3)
    assert out.mask.sum() == 100 * 100 - 5 and (out.data[:, ~out.mask] == 0).all()
    with h5py.File(real_data / P25) as f:
        t = f["entry_1/sample_1/geometry_1/translation"][()]
    # detector rows run along -y and columns along -x, beam position = -translation
    np.testing.assert_allclose(out.positions, t[:, [1, 0]], rtol=1e-6)


def test_cone_beam_scaling(real_data):
    z1 = 3.65e-3
    out = cxi_recipe(scan_params(real_data / P25, focus_distance=z1), CTX)
    m = (z1 + 1.12) / z1
    assert out.meta["magnification"] == pytest.approx(m)
    assert out.psize_m[0] == pytest.approx(55e-6 / m) and out.distance_m == pytest.approx(1.12 / m)


def write_cxi(path, n=3, shape=(6, 8), translation=None, wavelength=1e-10, basis=None):
    with h5py.File(path, "w") as f:
        d = f.create_group("entry_1/instrument_1/detector_1")
        d["data"] = np.ones((n, *shape), np.float32)
        d["distance"] = 2.0
        d["x_pixel_size"] = 75e-6
        d["y_pixel_size"] = 50e-6
        if basis is not None:
            d["basis_vectors"] = basis
        f["entry_1/instrument_1/source_1/wavelength"] = wavelength
        t = np.zeros((n, 3)) if translation is None else translation
        f["entry_1/sample_1/geometry_1/translation"] = t
    return path


def test_synthetic_geometry_and_basis(tmp_path):
    t = np.array([[1, 2, 0], [3, 4, 0], [5, 6, 0]], float) * 1e-6
    raw = read_cxi(write_cxi(tmp_path / "a.cxi", translation=t, basis=[[5e-5, 0], [0, 7.5e-5], [0, 0]]))
    np.testing.assert_allclose(raw.positions, -t[:, :2])  # rows along +x, columns along +y
    assert raw.psize_m == (50e-6, 75e-6) and raw.energy_kev == pytest.approx(12.398419843320026)
    assert raw.mask is None


def test_bad_cxi_files(tmp_path):
    with pytest.raises(DataError, match="translation has shape"):
        read_cxi(write_cxi(tmp_path / "b.cxi", translation=np.zeros((2, 3))))
    path = write_cxi(tmp_path / "nan.cxi")
    with h5py.File(path, "a") as f:
        f["entry_1/instrument_1/detector_1/data"][1, 0, 0] = np.nan
    with pytest.raises(DataError, match=r"frames \[1\] contain NaN"):
        read_cxi(path)
    with pytest.raises(DataError, match="no entry_2/instrument_1/detector_1/data"):
        read_cxi(write_cxi(tmp_path / "c.cxi"), entry="entry_2")
    (tmp_path / "t.cxi").write_text("x")
    with pytest.raises(DataError, match="not an HDF5 file"):
        read_cxi(tmp_path / "t.cxi")
