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

import numba
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


@kernels.jit
def _interpolate(padded, starts, wt, out):
    """out[n, o] = the window of ``padded`` at starts[n], interpolated with the separable weights wt[n]
    (rows, then columns)."""
    taps, h, w = wt.shape[2], out.shape[2], out.shape[3]
    for n in numba.prange(out.shape[0]):
        y, x = starts[n, 0], starts[n, 1]
        row = np.empty(w + taps - 1, out.dtype)
        for o in range(out.shape[1]):
            for i in range(h):
                for j in range(row.shape[0]):
                    row[j] = 0
                for k in range(taps):
                    src, c = padded[o, y + i + k, x:x + row.shape[0]], wt[n, 0, k]
                    for j in range(row.shape[0]):
                        row[j] += c * src[j]
                dst, c = out[n, o, i], wt[n, 1, 0]
                for j in range(w):
                    dst[j] = c * row[j]
                for k in range(1, taps):
                    c = wt[n, 1, k]
                    for j in range(w):
                        dst[j] += c * row[j + k]


@kernels.jit
def _spread(stack, wt, out):
    """The transpose of :func:`_interpolate` frame by frame: out[n, o] (H + taps - 1, W + taps - 1) = 0 +
    every pixel of stack[n, o] spread over the taps with the same weights."""
    taps, h, w = wt.shape[2], stack.shape[2], stack.shape[3]
    for n in numba.prange(stack.shape[0]):
        row = np.empty(w + taps - 1, stack.dtype)
        for o in range(stack.shape[1]):
            big = out[n, o]
            for r in range(big.shape[0]):
                for j in range(big.shape[1]):
                    big[r, j] = 0
            for i in range(h):
                for j in range(row.shape[0]):
                    row[j] = 0
                src = stack[n, o, i]
                for k in range(taps):
                    c = wt[n, 1, k]
                    for j in range(w):
                        row[j + k] += c * src[j]
                for k in range(taps):
                    c, dst = wt[n, 0, k], big[i + k]
                    for j in range(row.shape[0]):
                        dst[j] += c * row[j]


def views(obj: np.ndarray, corners: np.ndarray, shifts: np.ndarray, shape, out: np.ndarray | None = None) -> np.ndarray:
    """Windows (n, modes, H, W) of ``obj`` (modes, Ho, Wo) at ``corners`` + ``shifts``:
    view(r) = obj(corner + r + shift).

    Beyond the object's edge the field is taken as zero.
    """
    whole, wt = _weights(shifts, obj.real.dtype)
    padded = np.pad(obj, ((0, 0), (TAPS, TAPS), (TAPS, TAPS)))
    if out is None:
        out = np.empty((len(corners), obj.shape[0], *shape), obj.dtype)
    _interpolate(padded, corners + whole - _LOW + TAPS, wt, out)
    return out


def add_back(target: np.ndarray, stack: np.ndarray, corners: np.ndarray, shifts: np.ndarray) -> None:
    """The adjoint of :func:`views`: target (modes, Ho, Wo) += every window of ``stack`` moved back onto the object."""
    n, modes, h, w = stack.shape
    whole, wt = _weights(shifts, stack.real.dtype)
    big = np.empty((n, modes, h + TAPS - 1, w + TAPS - 1), stack.dtype)
    _spread(np.ascontiguousarray(stack), wt, big)
    pad = TAPS
    padded = np.zeros((target.shape[0], target.shape[1] + 2 * pad, target.shape[2] + 2 * pad), target.dtype)
    ones = np.ones((1, *big.shape[-2:]), target.dtype)
    kernels.add_object_update(padded, None, ones, None, big, corners + whole - _LOW + pad)  # threaded scatter-add
    target += padded[:, pad:-pad, pad:-pad]
