"""Illumination and sample models against analytic answers, known materials and round trips."""

import h5py
import numpy as np
import pytest

from difframe.errors import DataError, ParameterError, UsageError
from difframe.manager import PluginManager
from difframe.optics import FarField, fresnel_propagate
from difframe.ptycho import h5typed
from difframe.ptycho.data import PreparedData
from difframe.ptycho.models import ModelContext, build_illumination, build_sample


@pytest.fixture(scope="module")
def plugins():
    return PluginManager()


def ctx(shape=(64, 64), psize=1e-7, **kw):
    return ModelContext(shape=shape, psize=(psize, psize), energy_kev=8.0, distance_m=1.0, **kw)


def test_flat_probe_carries_the_photons(plugins):
    probe = build_illumination({"photons": 1e6}, ctx(), plugins)
    assert probe.shape == (1, 64, 64) and probe.dtype == np.complex64
    assert (np.abs(probe) ** 2).sum() == pytest.approx(1e6, rel=1e-5)
    assert np.ptp(np.abs(probe)) < 1e-6


def test_aperture_areas_stop_and_offset(plugins):
    c = ctx(shape=(128, 128))
    circ = np.abs(build_illumination({"aperture": {"form": "circ", "size": 8e-6, "edge": 0}}, c, plugins)[0]) ** 2
    assert circ.sum() == pytest.approx(np.pi * 40**2, rel=0.02)
    rect = build_illumination({"aperture": {"form": "rect", "size": (4e-6, 6e-6), "edge": 0}}, c, plugins)[0]
    assert (np.abs(rect) > 0.5).sum() == pytest.approx(41 * 61, abs=100)
    stop = build_illumination({"aperture": {"form": "circ", "size": 8e-6, "edge": 0, "central_stop": 0.5}},
                              c, plugins)[0]
    assert (np.abs(stop) ** 2).sum() == pytest.approx(0.75 * np.pi * 40**2, rel=0.03)
    shifted = np.abs(build_illumination({"aperture": {"form": "circ", "size": 4e-6, "edge": 2,
                                                      "offset": (1e-6, -2e-6)}}, c, plugins)[0]) ** 2
    rows, cols = np.indices(shifted.shape)
    centroid = ((rows * shifted).sum() / shifted.sum(), (cols * shifted).sum() / shifted.sum())
    assert centroid == (pytest.approx(64 + 10, abs=0.05), pytest.approx(64 - 20, abs=0.05))
    smooth = build_illumination({"aperture": {"form": "circ", "size": 7.3e-6, "edge": 0},
                                 "propagation": {"antialiasing": 4}}, c, plugins)[0]
    assert (np.abs(smooth) ** 2).sum() == pytest.approx(np.pi * 36.5**2, rel=0.01)
    assert np.unique(np.round(np.abs(smooth), 3)).size > 3  # grey edge pixels


def test_focussed_spot_has_the_airy_width(plugins):
    c = ctx(shape=(128, 128), psize=2e-8)
    spot, f = 1e-6, 0.1
    probe = build_illumination({"aperture": {"form": "circ", "edge": 0},
                                "propagation": {"focussed": f, "spot_size": spot}}, c, plugins)[0]
    profile = np.abs(probe[64]) ** 2
    above = np.flatnonzero(profile >= profile.max() / 2)
    fwhm = (above[-1] - above[0] + 1) * 2e-8
    assert fwhm == pytest.approx(1.029 * spot / 2.44, rel=0.12)  # Airy FWHM = 1.029 lambda f / D


def test_parallel_propagation_uses_the_optics_propagator(plugins):
    c = ctx()
    p = {"aperture": {"form": "rect", "size": 2e-6, "edge": 1}}
    near = build_illumination(p, c, plugins)[0]
    far = build_illumination({**p, "propagation": {"parallel": 2e-4}}, c, plugins)[0]
    expected = fresnel_propagate(near.astype(complex), c.psize, c.wavelength_m, 2e-4)
    np.testing.assert_allclose(far, expected, atol=1e-5 * np.abs(expected).max())
    assert (np.abs(far) ** 2).sum() == pytest.approx((np.abs(near) ** 2).sum(), rel=1e-3)


def test_diversity_modes_power_noise_and_seed(plugins):
    c = ctx(num_modes=3, seed=4)
    p = {"model": "moon", "photons": 1e4, "diversity": {"power": (0.5, 0.25), "noise": (0.5, 2.0)}}
    probe = build_illumination(p, c, plugins)
    powers = (np.abs(probe) ** 2).sum(axis=(1, 2))
    assert powers.sum() == pytest.approx(1e4, rel=1e-4)
    assert powers[1] / powers[0] == pytest.approx(0.5, rel=1e-4) and powers[2] / powers[0] == pytest.approx(0.25, rel=1e-4)
    assert not np.allclose(np.angle(probe[1][np.abs(probe[0]) > 1]), np.angle(probe[0][np.abs(probe[0]) > 1]))
    np.testing.assert_array_equal(probe, build_illumination(p, c, plugins))
    with pytest.raises(ParameterError, match="diversity.power"):
        build_illumination({"diversity": {"power": (0.5,) * 1 + (0.1,)}}, ctx(num_modes=4), plugins)


def test_builtin_images_and_unknown_names(plugins):
    moon = build_illumination({"model": "moon"}, ctx(), plugins)[0]
    assert 0 <= np.abs(moon).min() and np.abs(moon).max() <= 1 and np.abs(moon[42, 26]) > 0.9 and np.abs(moon[30, 38]) < 0.3
    flower = build_sample({"model": "flower"}, ctx(), plugins)[0]
    assert np.abs(flower).min() >= 0.2 - 1e-6 and np.ptp(np.angle(flower)) > 1
    with pytest.raises(UsageError, match="no illumination model named 'mooon'"):
        build_illumination({"model": "mooon"}, ctx(), plugins)


def test_arrays_from_python(plugins):
    arr = np.arange(16.0).reshape(4, 4) + 1j
    obj = build_sample({"model": arr, "fill": 1.0}, ctx(shape=(8, 8)), plugins)[0]
    np.testing.assert_allclose(obj[2:6, 2:6], arr) and np.testing.assert_allclose(obj[0], 1.0)
    with pytest.raises(ParameterError, match="model array"):
        build_sample({"model": np.zeros((2, 2, 2, 2))}, ctx(), plugins)


def test_recon_by_id_and_layer(tmp_path, plugins):
    probe = (np.arange(2 * 64 * 64).reshape(2, 64, 64) * (1 + 1j)).astype(np.complex64)
    path = tmp_path / "r.ptyr"
    h5typed.write(path, {"header": {"kind": "fullflat"}, "content": {"probe": {
        "Sscan00G00": {"data": probe, "_psize": np.array([1e-7, 1e-7])}}}})
    out = build_illumination({"model": "recon", "recon": {"rfile": str(tmp_path / "*.ptyr"), "layer": 1}},
                             ctx(), plugins)
    np.testing.assert_allclose(out[0], probe[1])
    both = build_illumination({"model": "recon", "recon": {"rfile": str(path), "ID": "Sscan00G00"}},
                              ctx(num_modes=2), plugins)
    np.testing.assert_allclose(both, probe)
    with pytest.raises(DataError, match="no probe storage 'nope'"):
        build_illumination({"model": "recon", "recon": {"rfile": str(path), "ID": "nope"}}, ctx(), plugins)
    with pytest.raises(DataError, match="not a .ptyr"):
        build_sample({"model": "recon", "recon": {"rfile": str(path)}}, ctx(), plugins)
    with h5py.File(path, "a") as f:
        f["content/probe/Sscan00G00/data"].attrs["type"] = "pickle"
    with pytest.raises(DataError, match="never unpickles"):
        build_illumination({"model": "recon", "recon": {"rfile": str(path)}}, ctx(), plugins)


def test_stxm_probe_reproduces_the_mean_diffraction(plugins):
    rng = np.random.default_rng(0)
    probe = np.exp(-np.hypot(*np.indices((32, 32)) - 16) ** 2 / 20)
    obj = np.exp(1j * rng.uniform(0, 1, (5, 32, 32)))
    frames = np.abs(FarField((32, 32)).forward(probe * obj)) ** 2
    data = PreparedData(label="a", data=frames, mask=np.ones((32, 32)), positions=np.zeros((5, 2)),
                        energy_kev=8, distance_m=1, psize_m=(1e-4, 1e-4), center=(16, 16))
    est = build_illumination({"model": "stxm"}, ctx(shape=(32, 32), data=data), plugins)[0]
    np.testing.assert_allclose(np.abs(FarField((32, 32)).forward(est.astype(complex))) ** 2,
                               frames.mean(0), rtol=1e-4, atol=1e-4 * frames.max())


def test_stxm_sample_is_the_scanning_transmission(plugins):
    pos = np.array([[10, 10], [10, 20], [20, 10], [20, 20]], float)
    totals = np.array([100.0, 25.0, 100.0, 100.0])
    frames = np.ones((4, 4, 4)) * (totals / 16)[:, None, None]
    data = PreparedData(label="a", data=frames, mask=np.ones((4, 4)), positions=pos * 1e-7,
                        energy_kev=8, distance_m=1, psize_m=(1e-4, 1e-4), center=(2, 2))
    obj = build_sample({"model": "stxm"}, ctx(shape=(31, 31), data=data, positions_px=pos), plugins)[0]
    assert abs(obj[10, 20]) < abs(obj[10, 10]) and abs(obj[20, 20]) == pytest.approx(1.0, abs=0.05)
    with pytest.raises(ParameterError, match="view positions"):
        build_sample({"model": "stxm"}, ctx(data=data), plugins)


def test_sample_projection_through_xraydb_and_ref_index(plugins):
    base = np.zeros((32, 32), complex)
    base[8:24, 8:24] = 1.0
    c = ctx(shape=(32, 32))
    silicon = build_sample({"model": base, "process": {"formula": "Si", "density": 2.33, "thickness": 1e-6,
                                                       "smoothing": 0}}, c, plugins)[0]
    k = 2 * np.pi / c.wavelength_m
    # Henke tables, Si at 8 keV: delta = 7.6e-6, beta = 1.7e-7 (independent of xraydb)
    assert np.angle(silicon[16, 16]) == pytest.approx(-k * 7.6e-6 * 1e-6, rel=0.03)
    assert -np.log(abs(silicon[16, 16])) == pytest.approx(k * 1.7e-7 * 1e-6, rel=0.1)
    assert silicon[0, 0] == pytest.approx(1.0)
    phase = build_sample({"model": base, "process": {"ref_index": 0.3 + 0.1j, "thickness": 1e-6, "smoothing": 0}},
                         c, plugins)[0]
    assert phase[16, 16] == pytest.approx(np.exp(1j * (0.3 + 0.1j)))
    zoomed = build_sample({"model": base, "process": {"zoom": 0.5, "offset": (4, 0), "thickness": None}},
                          c, plugins)[0]
    assert abs(zoomed).sum() == pytest.approx(8 * 8 + (32 * 32 - 16 * 16), rel=0.02)  # zoomed square + fill
    with pytest.raises(ParameterError, match="formula"):
        build_sample({"model": base, "process": {"formula": "Qq9"}}, c, plugins)


def test_default_processing_keeps_flat_fill_and_complex_fields(plugins):
    """A resolved tree always carries sample.process defaults: they must not spoil these models."""
    defaults = {"offset": (0, 0), "zoom": None, "formula": None, "density": 1.0, "thickness": 1e-06,
                "ref_index": 0.5 + 0j, "smoothing": 2}
    flat = build_sample({"model": None, "fill": 0.8, "process": defaults}, ctx(), plugins)
    np.testing.assert_allclose(flat, 0.8)
    plain = build_sample({"model": "flower"}, ctx(), plugins)
    np.testing.assert_allclose(build_sample({"model": "flower", "process": defaults}, ctx(), plugins), plain)
    real = build_sample({"model": np.abs(plain[0]), "process": {**defaults, "smoothing": 0}}, ctx(), plugins)[0]
    np.testing.assert_allclose(np.abs(real), 1.0, rtol=1e-6)  # a real map becomes a phase object
    assert np.ptp(np.angle(real)) == pytest.approx(0.5, rel=1e-4)


def test_probe_photons_default_to_the_brightest_frame(plugins):
    frames = np.ones((3, 8, 8)) * np.array([1.0, 5.0, 2.0])[:, None, None]
    data = PreparedData(label="a", data=frames, mask=np.ones((8, 8)), positions=np.zeros((3, 2)),
                        energy_kev=8, distance_m=1, psize_m=(1e-4, 1e-4), center=(4, 4))
    probe = build_illumination({"model": "moon"}, ctx(shape=(8, 8), data=data), plugins)
    assert (np.abs(probe) ** 2).sum() == pytest.approx(5.0 * 64, rel=1e-5)
