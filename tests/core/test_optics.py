"""Propagators against analytic optics: Parseval, Gaussian beams, round trips, sampling."""

import os

import numpy as np
import pytest

from difframe import fft, optics
from difframe.errors import ParameterError


def gaussian(shape, psize, w, x0=0.0):
    y, x = optics.coordinates(shape, psize)
    return np.exp(-((y[:, None]) ** 2 + (x[None, :] - x0) ** 2) / w**2).astype(np.complex128)


def rms_radius(field, psize):
    """1/e^2 intensity radius w of a centred Gaussian: <r^2> = w^2 / 2."""
    y, x = optics.coordinates(field.shape, psize)
    inten = np.abs(field) ** 2
    r2 = y[:, None] ** 2 + x[None, :] ** 2
    return np.sqrt(2 * (inten * r2).sum() / inten.sum())


def test_energy_wavelength_roundtrip_and_known_value():
    assert optics.energy_to_wavelength(12.398419843320026) == pytest.approx(1e-10, rel=1e-12)
    assert optics.wavelength_to_energy(optics.energy_to_wavelength(6.2)) == pytest.approx(6.2)
    with pytest.raises(ParameterError, match="energy"):
        optics.energy_to_wavelength(-1)


def test_farfield_sampling_relation():
    lam = optics.energy_to_wavelength(6.2)
    got = optics.farfield_object_psize(lam, 7.19, (128, 256), 172e-6)
    assert got == pytest.approx([lam * 7.19 / (128 * 172e-6), lam * 7.19 / (256 * 172e-6)])


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
@pytest.mark.parametrize("centred", [True, False])
def test_farfield_parseval_roundtrip_and_dtype(dtype, centred):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(3, 2, 32, 48)) + 1j * rng.normal(size=(3, 2, 32, 48))).astype(dtype)
    ff = optics.FarField((32, 48), centred=centred)
    y = ff.forward(x)
    assert y.dtype == dtype and y.shape == x.shape
    tol = 1e-5 if dtype == np.complex64 else 1e-12
    np.testing.assert_allclose((np.abs(y) ** 2).sum(axis=(-2, -1)), (np.abs(x) ** 2).sum(axis=(-2, -1)), rtol=tol)
    np.testing.assert_allclose(ff.backward(y), x, atol=tol * 10)


def test_farfield_centred_delta_is_flat_and_shift_is_phase_ramp():
    n = 16
    x = np.zeros((n, n), complex)
    x[n // 2, n // 2] = 1
    y = optics.FarField((n, n)).forward(x)
    np.testing.assert_allclose(y, np.full((n, n), 1 / n), atol=1e-14)
    x2 = np.zeros((n, n), complex)
    x2[n // 2, n // 2 + 1] = 1  # one pixel along x: phase -2 pi k / n along x
    y2 = optics.FarField((n, n)).forward(x2)
    k = np.arange(n) - n // 2
    np.testing.assert_allclose(y2, np.exp(-2j * np.pi * k / n)[None, :] / n * np.ones((n, 1)), atol=1e-14)


@pytest.mark.parametrize("kind", ["angular_spectrum", "fresnel"])
def test_nearfield_gaussian_beam_width_follows_analytic_law(kind):
    lam, w0, psize, n = 1e-10, 2e-6, 5e-8, 256
    z_r = np.pi * w0**2 / lam
    field = gaussian((n, n), psize, w0)
    out = optics.fresnel_propagate(field, psize, lam, z_r, kind=kind)
    assert rms_radius(out, psize) == pytest.approx(w0 * np.sqrt(2), rel=1e-3)
    # Gouy phase at the Rayleigh range is -pi/4 on axis (relative to the plane wave)
    assert np.angle(out[n // 2, n // 2]) == pytest.approx(-np.pi / 4, abs=1e-3)
    np.testing.assert_allclose((np.abs(out) ** 2).sum(), (np.abs(field) ** 2).sum(), rtol=1e-10)


def test_nearfield_backward_undoes_forward_and_keeps_single_precision():
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(4, 64, 64)) + 1j * rng.normal(size=(4, 64, 64))).astype(np.complex64)
    nf = optics.NearField((64, 64), 1e-7, 1e-10, 1e-3, dtype=np.complex64, kind="fresnel")
    y = nf.forward(x)
    assert y.dtype == np.complex64
    np.testing.assert_allclose(nf.backward(y), x, atol=1e-4)


def test_single_step_fresnel_focus_matches_far_field_gaussian_width():
    lam, w0, psize, n, z = 1e-10, 20e-6, 1e-6, 256, 5.0
    out, new_psize = optics.fresnel_single_step(gaussian((n, n), psize, w0), psize, lam, z)
    assert new_psize == pytest.approx(lam * z / (n * psize))
    w_far = w0 * np.sqrt(1 + (z / (np.pi * w0**2 / lam)) ** 2)
    assert rms_radius(out, new_psize) == pytest.approx(w_far, rel=1e-3)


def test_bad_dtype_name_is_named():
    with pytest.raises(ParameterError, match="data_type"):
        optics.dtypes_for("half")


def test_threads_are_shared_among_the_ranks_of_a_node(monkeypatch):
    monkeypatch.delenv("OMPI_COMM_WORLD_LOCAL_SIZE", raising=False)
    monkeypatch.delenv("MPI_LOCALNRANKS", raising=False)
    alone = fft.fft_workers()
    assert alone == len(os.sched_getaffinity(0))
    monkeypatch.setenv("MPI_LOCALNRANKS", "2")
    assert fft.fft_workers() == max(1, alone // 2)
    monkeypatch.setenv("MPI_LOCALNRANKS", str(4 * alone))
    assert fft.fft_workers() == 1


@pytest.mark.parametrize("make", [lambda: optics.FarField((16, 12), centred=False),
                                  lambda: optics.NearField((16, 12), (1e-7, 1e-7), 1e-10, 1e-3)],
                         ids=["farfield", "nearfield"])
def test_overwrite_transforms_in_place(make):
    """Engines rely on it: ML keeps its detector fields in the buffer it hands to the propagator."""
    prop = make()
    x = (np.random.default_rng(0).normal(size=(3, 2, 16, 12)) + 0j).astype(np.complex64)
    expected = prop.forward(x.copy())
    y = prop.forward(x, overwrite=True)
    assert y is x
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-6)
    assert prop.backward(x, overwrite=True) is x


@pytest.mark.parametrize("make", [lambda: optics.FarField((16, 12), centred=False),
                                  lambda: optics.FarField((16, 12), centred=True),
                                  lambda: optics.NearField((16, 12), (1e-7, 1e-7), 1e-10, 1e-3)],
                         ids=["farfield", "farfield-centred", "nearfield"])
def test_unscaled_transforms_leave_out_the_gain(make):
    """The projection engines apply the transforms' factor in their kernels: forward and backward with
    ``scaled=False`` times ``gain`` are the unitary transforms, against numpy's own FFT for the far field."""
    prop = make()
    x = (np.random.default_rng(1).normal(size=(3, 16, 12)) + 1j).astype(np.complex128)
    for name in ("forward", "backward"):
        unitary = getattr(prop, name)(x.copy())
        np.testing.assert_allclose(prop.gain * getattr(prop, name)(x.copy(), scaled=False), unitary, atol=1e-12)
    if isinstance(prop, optics.FarField) and not prop.centred:
        np.testing.assert_allclose(prop.forward(x, scaled=False), np.fft.fft2(x), atol=1e-9)
        np.testing.assert_allclose(prop.backward(x, scaled=False), np.fft.ifft2(x) * x[0].size, atol=1e-9)
