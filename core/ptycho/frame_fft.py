"""Propagation of one frame's waves inside numba kernels (the sequential engines: PIE family, OPR, e3PIE).

The stochastic engines update after every frame, so their whole epoch runs
inside one numba function and transforms there through rocket-fft (importing
it makes scipy.fft callable from numba).  Far field: the unitary FFT;
near field: fixed-sampling convolution with the scan's transfer function,
whose conjugate (taken once per epoch by the caller) propagates back.  An
empty (0, 0) transfer function means far field.
"""

from __future__ import annotations

import numba
import rocket_fft
import scipy.fft

#: the package that makes scipy.fft callable inside numba functions (importing it registers it)
FFT_IN_NUMBA = rocket_fft.__name__


@numba.njit(inline="always")
def convolve(field, transfer):
    """Fixed-sampling propagation of ``field`` (..., H, W) by a transfer function (H, W) in FFT order."""
    spec = scipy.fft.fft2(field, axes=(-2, -1))
    spec *= transfer
    return scipy.fft.ifft2(spec, axes=(-2, -1), overwrite_x=True)


@numba.njit(inline="always")
def to_detector(field, transfer):
    """Detector-plane waves of exit waves ``field`` (..., H, W)."""
    if transfer.shape[0] == 0:
        return scipy.fft.fft2(field, axes=(-2, -1), norm="ortho")
    return convolve(field, transfer)


@numba.njit(inline="always")
def from_detector(field, transfer_back):
    """Exit-plane waves of detector-plane ``field`` (overwritten); ``transfer_back`` = conj(transfer)."""
    if transfer_back.shape[0] == 0:
        return scipy.fft.ifft2(field, axes=(-2, -1), norm="ortho", overwrite_x=True)
    return convolve(field, transfer_back)
