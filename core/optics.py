"""Geometry and wave propagation shared by recipes, models and engines.

All propagators act on stacks ``(..., H, W)`` at once (batched FFTs through
FFTW, :mod:`difframe.fft`) and keep the precision of their input:
complex64 in, complex64 out.  Transforms are unitary (``norm="ortho"``) so the
integrated intensity is the same in both planes (Parseval), which is what lets
engines compare model intensities directly with photon counts.

Conventions: arrays are (y, x); pixel sizes and coordinates are in metres;
energies in keV; the optical axis sits at pixel ``N // 2`` (the "centred"
convention of ``numpy.fft.fftshift``).
"""

from __future__ import annotations

import numpy as np
import scipy.fft

from difframe import fft, frame_threads
from difframe.errors import ParameterError

__all__ = [
    "HC_KEV_M",
    "energy_to_wavelength",
    "wavelength_to_energy",
    "dtypes_for",
    "farfield_object_psize",
    "coordinates",
    "FarField",
    "NearField",
    "fresnel_transfer",
    "fresnel_propagate",
    "fresnel_single_step",
]

#: h c in keV m (CODATA 2018: 12.398419843320026 keV Angstrom)
HC_KEV_M = 1.2398419843320026e-9


def energy_to_wavelength(energy_kev: float) -> float:
    """Wavelength [m] of a photon of ``energy_kev`` [keV]."""
    if energy_kev is None or not np.isfinite(energy_kev) or energy_kev <= 0:
        raise ParameterError(f"photon energy must be a positive number of keV, got {energy_kev!r}")
    return HC_KEV_M / float(energy_kev)


def wavelength_to_energy(wavelength_m: float) -> float:
    """Photon energy [keV] for ``wavelength_m`` [m]."""
    if wavelength_m is None or not np.isfinite(wavelength_m) or wavelength_m <= 0:
        raise ParameterError(f"wavelength must be a positive number of metres, got {wavelength_m!r}")
    return HC_KEV_M / float(wavelength_m)


def dtypes_for(data_type: str) -> tuple[np.dtype, np.dtype]:
    """(complex dtype, real dtype) for the ``data_type`` parameter ('single' or 'double')."""
    if data_type == "single":
        return np.dtype(np.complex64), np.dtype(np.float32)
    if data_type == "double":
        return np.dtype(np.complex128), np.dtype(np.float64)
    raise ParameterError(f"data_type must be 'single' or 'double', got {data_type!r}")


def _pair(value, name: str) -> np.ndarray:
    arr = np.broadcast_to(np.asarray(value, dtype=float), (2,)).copy()
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ParameterError(f"{name} must be positive, got {value!r}")
    return arr


def farfield_object_psize(wavelength: float, distance: float, shape, det_psize) -> np.ndarray:
    """Object-plane pixel (y, x) [m] of a far-field geometry: lambda z / (N psize)."""
    shape = np.broadcast_to(np.asarray(shape, dtype=float), (2,))
    return wavelength * float(distance) / (shape * _pair(det_psize, "detector pixel size"))


def coordinates(shape, psize) -> tuple[np.ndarray, np.ndarray]:
    """Centred (y, x) coordinate vectors [m] of a grid: pixel N//2 is 0."""
    psize = _pair(psize, "pixel size")
    ny, nx = int(shape[0]), int(shape[1])
    return (np.arange(ny) - ny // 2) * psize[0], (np.arange(nx) - nx // 2) * psize[1]


def _frequencies(shape, psize) -> tuple[np.ndarray, np.ndarray]:
    """Spatial frequencies (fy column, fx row) [1/m] in unshifted FFT order."""
    psize = _pair(psize, "pixel size")
    fy = scipy.fft.fftfreq(int(shape[0]), psize[0])[:, None]
    fx = scipy.fft.fftfreq(int(shape[1]), psize[1])[None, :]
    return fy, fx


class FarField:
    """Fraunhofer propagation between object and detector planes.

    ``forward`` maps exit waves to detector amplitudes, ``backward`` returns.
    With ``centred=True`` both planes have their axis at pixel N//2 (what a
    detector frame looks like); with ``centred=False`` the detector plane is in
    FFT order (axis at pixel 0), which skips two shifts per transform and is
    what engines use on data stored once in that order.  Sampling of the
    object plane is ``farfield_object_psize``.  Uncentred, with ``overwrite``
    on a C-contiguous complex array, the result is written into the input and
    the input returned (engines keep fields in their own buffers this way).
    """

    def __init__(self, shape, centred: bool = True):
        self.shape = (int(shape[0]), int(shape[1]))
        self.centred = centred
        #: what ``scaled=False`` leaves out of either transform (unitary: 1 / sqrt(H W))
        self.gain = 1.0 / np.sqrt(self.shape[0] * self.shape[1])

    def forward(self, x: np.ndarray, overwrite: bool = False, scaled: bool = True) -> np.ndarray:
        """Detector-plane field of exit waves ``x`` (..., H, W); with ``scaled=False`` divided by
        :attr:`gain`, for a kernel that applies it in a pass it makes anyway (one pass over the stack fewer)."""
        return self._transform(x, overwrite, inverse=False, scaled=scaled)

    def backward(self, y: np.ndarray, overwrite: bool = False, scaled: bool = True) -> np.ndarray:
        """Exit waves of detector-plane fields ``y`` (..., H, W); ``scaled`` as in :meth:`forward`."""
        return self._transform(y, overwrite, inverse=True, scaled=scaled)

    def _transform(self, x: np.ndarray, overwrite: bool, inverse: bool, scaled: bool) -> np.ndarray:
        norm = "ortho" if scaled else ("forward" if inverse else "backward")  # numpy's names: no factor here
        if self.centred:
            x = scipy.fft.ifftshift(x, axes=(-2, -1))
            overwrite = True
        if overwrite and frame_threads.splits(x):
            y = frame_threads.in_chunks(lambda piece: fft.fft2(piece, inverse=inverse, norm=norm, overwrite=True), x)
        else:
            y = fft.fft2(x, inverse=inverse, norm=norm, overwrite=overwrite)
        return scipy.fft.fftshift(y, axes=(-2, -1)) if self.centred else y


def angular_spectrum_transfer(shape, psize, wavelength: float, distance: float, dtype=np.complex128) -> np.ndarray:
    """Exact free-space transfer function exp(i 2 pi z sqrt(1/lambda^2 - f^2)), FFT order.

    Evanescent frequencies (f > 1/lambda) are set to zero.  The constant phase
    2 pi z / lambda is removed so that a plane wave along the axis is unchanged.
    """
    fy, fx = _frequencies(shape, psize)
    arg = 1.0 / wavelength**2 - fy**2 - fx**2
    kz = np.sqrt(np.clip(arg, 0.0, None))
    h = np.exp(2j * np.pi * distance * (kz - 1.0 / wavelength))
    h[arg < 0] = 0.0
    return h.astype(dtype)


def fresnel_transfer(shape, psize, wavelength: float, distance: float, dtype=np.complex128) -> np.ndarray:
    """Paraxial (Fresnel) transfer function exp(-i pi lambda z f^2), FFT order."""
    fy, fx = _frequencies(shape, psize)
    return np.exp(-1j * np.pi * wavelength * distance * (fy**2 + fx**2)).astype(dtype)


class NearField:
    """Near-field propagation over ``distance`` at fixed sampling (object and detector pixel equal).

    ``kind`` is ``"angular_spectrum"`` (exact, evanescent waves dropped) or
    ``"fresnel"`` (paraxial).  Unitary apart from the dropped evanescent part.
    With ``overwrite`` on a C-contiguous complex array, the result is written
    into the input and the input returned.
    """

    def __init__(self, shape, psize, wavelength: float, distance: float, dtype=np.complex64,
                 kind: str = "angular_spectrum"):
        builders = {"angular_spectrum": angular_spectrum_transfer, "fresnel": fresnel_transfer}
        if kind not in builders:
            raise ParameterError(f"near-field kind must be one of {sorted(builders)}, got {kind!r}")
        self.shape = (int(shape[0]), int(shape[1]))
        self.kernel = builders[kind](self.shape, psize, wavelength, distance, dtype)
        # the inverse FFT's 1/N rides on the transfer function (one pass over the stack fewer)
        scale = self.kernel.real.dtype.type(1.0 / (self.shape[0] * self.shape[1]))
        self._forward_kernel = self.kernel * scale
        self._backward_kernel = np.conj(self.kernel) * scale

    def _apply(self, x: np.ndarray, kernel: np.ndarray, overwrite: bool) -> np.ndarray:
        if overwrite and frame_threads.splits(x):
            return frame_threads.in_chunks(lambda piece: self._apply_whole(piece, kernel, True), x)
        return self._apply_whole(x, kernel, overwrite)

    @staticmethod
    def _apply_whole(x: np.ndarray, kernel: np.ndarray, overwrite: bool) -> np.ndarray:
        y = fft.fft2(x, overwrite=overwrite)
        y *= kernel
        return fft.ifft2(y, norm="forward", overwrite=True)

    #: the near-field transforms' factors ride on the transfer function: ``scaled=False`` leaves out nothing
    gain = 1.0

    def forward(self, x: np.ndarray, overwrite: bool = False, scaled: bool = True) -> np.ndarray:
        """Field at the detector of exit waves ``x`` (..., H, W) (``scaled``: see :meth:`FarField.forward`)."""
        return self._apply(x, self._forward_kernel, overwrite)

    def backward(self, y: np.ndarray, overwrite: bool = False, scaled: bool = True) -> np.ndarray:
        """Back-propagated (adjoint) field of ``y`` (..., H, W) (``scaled``: see :meth:`FarField.forward`)."""
        return self._apply(y, self._backward_kernel, overwrite)


def fresnel_propagate(field: np.ndarray, psize, wavelength: float, distance: float,
                      kind: str = "angular_spectrum") -> np.ndarray:
    """Propagate ``field`` (..., H, W) over ``distance`` keeping its sampling (probe generation)."""
    field = np.asarray(field)
    dtype = field.dtype if np.iscomplexobj(field) else np.result_type(field.dtype, np.complex64)
    prop = NearField(field.shape[-2:], psize, wavelength, distance, dtype=dtype, kind=kind)
    return prop.forward(field.astype(dtype, copy=True), overwrite=True)


def fresnel_single_step(field: np.ndarray, psize, wavelength: float, distance: float) -> tuple[np.ndarray, np.ndarray]:
    """One-FFT Fresnel propagation over a long ``distance`` (focus, far zone).

    Returns (field, new pixel size) with new pixel = lambda z / (N psize); the
    result is centred and the transform unitary.  Used to take an aperture to
    its focus, where the fixed-sampling propagator would need a huge grid.
    """
    field = np.asarray(field)
    dtype = field.dtype if np.iscomplexobj(field) else np.result_type(field.dtype, np.complex64)
    shape = field.shape[-2:]
    y, x = coordinates(shape, psize)
    chirp_in = np.exp(1j * np.pi / (wavelength * distance) * (y[:, None] ** 2 + x[None, :] ** 2))
    new_psize = farfield_object_psize(wavelength, distance, shape, psize)
    y2, x2 = coordinates(shape, new_psize)
    chirp_out = np.exp(1j * np.pi / (wavelength * distance) * (y2[:, None] ** 2 + x2[None, :] ** 2))
    out = FarField(shape).forward((field * chirp_in).astype(dtype), overwrite=True)
    out *= chirp_out.astype(dtype)
    return out, new_psize
