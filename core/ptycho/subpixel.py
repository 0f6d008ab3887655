"""Sub-pixel windows: the object seen through each frame's window at its exact position.

The model's windows sit at integer object pixels (``ScanViews.corners``); a
position between pixels is rounded, up to half a pixel off.  On the real P25
scan the frames whose positions lie within 0.15 px of the grid fit the data
markedly better than those near half a pixel, and the residual alternates
across the star's spoke edges: a registration error.  Here each window is
interpolated at its frame's fractional offset with a separable Lanczos
kernel of ``TAPS`` taps per axis (sinc(x) sinc(x / 3): exact at integer
offsets, about 1 % from band-limited truth up to half the Nyquist frequency,
and local, so no wrap-around as with a Fourier shift of a window).  The
adjoint, which takes a gradient back to the object, uses the same weights.
"""

from __future__ import annotations

import numpy as np

from difframe.ptycho import kernels

#: taps per axis: offsets -2 .. 3 around the pixel below the exact position
TAPS = 6
_LOW = TAPS // 2 - 1


def offsets(scan, storage) -> np.ndarray:
    """Fractional offsets (n_held, 2) [object pixels] of the held frames' positions from their windows' corners."""
    held = scan.positions[scan.first:scan.first + scan.num_frames]
    centre = (held - storage.origin) / storage.psize
    return (centre - np.asarray(scan.shape) // 2 - scan.corners).astype(float)


def _weights(shifts: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(whole-pixel part (n, 2) int, Lanczos weights (n, 2, TAPS)) of ``shifts`` (n, 2); weights sum to 1."""
    whole = np.floor(shifts)
    frac = shifts - whole
    x = frac[:, :, None] - (np.arange(TAPS) - _LOW)[None, None, :]
    w = np.sinc(x) * np.sinc(x / 3.0) * (np.abs(x) < 3)
    w /= w.sum(axis=-1, keepdims=True)
    return whole.astype(np.int64), w.astype(dtype)


def views(obj: np.ndarray, corners: np.ndarray, shifts: np.ndarray, shape) -> np.ndarray:
    """Windows (n, modes, H, W) of ``obj`` (modes, Ho, Wo) at ``corners`` + ``shifts``: view(r) = obj(corner + r + shift).

    Beyond the object's edge the field is taken as zero.
    """
    from difframe.ptycho.model import gather

    h, w = shape
    whole, wt = _weights(shifts, obj.real.dtype)
    pad = TAPS
    big = gather(np.pad(obj, ((0, 0), (pad, pad), (pad, pad))), corners + whole - _LOW + pad,
                 (h + TAPS - 1, w + TAPS - 1))
    rows = np.zeros((*big.shape[:2], h, big.shape[-1]), obj.dtype)
    for k in range(TAPS):
        rows += wt[:, 0, k, None, None, None] * big[..., k:k + h, :]
    out = np.zeros((*big.shape[:2], h, w), obj.dtype)
    for k in range(TAPS):
        out += wt[:, 1, k, None, None, None] * rows[..., k:k + w]
    return out


def add_back(target: np.ndarray, stack: np.ndarray, corners: np.ndarray, shifts: np.ndarray) -> None:
    """The adjoint of :func:`views`: target (modes, Ho, Wo) += every window of ``stack`` moved back onto the object."""
    n, modes, h, w = stack.shape
    whole, wt = _weights(shifts, stack.real.dtype)
    rows = np.zeros((n, modes, h, w + TAPS - 1), stack.dtype)
    for k in range(TAPS):
        rows[..., k:k + w] += wt[:, 1, k, None, None, None] * stack
    big = np.zeros((n, modes, h + TAPS - 1, w + TAPS - 1), stack.dtype)
    for k in range(TAPS):
        big[..., k:k + h, :] += wt[:, 0, k, None, None, None] * rows
    pad = TAPS
    padded = np.zeros((target.shape[0], target.shape[1] + 2 * pad, target.shape[2] + 2 * pad), target.dtype)
    ones = np.ones((1, *big.shape[-2:]), target.dtype)
    kernels.add_object_update(padded, None, ones, None, big, corners + whole - _LOW + pad)  # threaded scatter-add
    target += padded[:, pad:-pad, pad:-pad]
