"""Distance of a reconstruction from a known truth, up to what ptychography cannot determine.

A reconstructed object or probe is only defined up to a global complex factor,
a shift (object and probe shift against each other) and a linear phase ramp
(in far field a ramp on the object moves the probe's diffraction pattern, and
the probe absorbs it).  :func:`aligned_error` removes all three before it
measures, so simulations can report how close a reconstruction came.
"""

from __future__ import annotations

import numpy as np

from difframe.errors import DataError


def _shifted(array: np.ndarray, shift) -> np.ndarray:
    """``array`` moved by an integer ``shift`` (dy, dx), with zeros coming in."""
    out = np.zeros_like(array)
    dy, dx = int(shift[0]), int(shift[1])
    h, w = array.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = array[max(-dy, 0):h - max(dy, 0),
                                                                     max(-dx, 0):w - max(dx, 0)]
    return out


def aligned_error(recon: np.ndarray, truth: np.ndarray, region: np.ndarray | None = None,
                  max_shift: int = 4) -> tuple[float, tuple[int, int]]:
    """(relative error, shift) of a 2-D complex ``recon`` against ``truth`` over ``region``.

    Tries every integer shift of ``recon`` up to ``max_shift`` pixels; for each,
    fits a global complex factor and a linear phase ramp over the region (least
    squares on the phase of recon x conj(truth), then the best complex scale)
    and keeps the smallest ||scale x recon' - truth|| / ||truth||.
    """
    recon, truth = np.asarray(recon), np.asarray(truth)
    if recon.shape != truth.shape or recon.ndim != 2:
        raise DataError(f"reconstruction {recon.shape} and truth {truth.shape} must be 2-D arrays of one shape")
    region = np.ones(truth.shape, bool) if region is None else np.asarray(region, bool)
    yy, xx = np.nonzero(region)
    if yy.size < 3:
        raise DataError("the comparison region holds fewer than 3 pixels")
    design = np.stack([np.ones_like(yy), yy - yy.mean(), xx - xx.mean()], axis=1).astype(float)
    b = truth[region]
    best = (np.inf, (0, 0))
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            a = _shifted(recon, (dy, dx))[region]
            ratio = a * np.conj(b)
            if not np.any(ratio):
                continue
            offset = np.angle(ratio.sum())
            coef, *_ = np.linalg.lstsq(design, np.angle(ratio * np.exp(-1j * offset)), rcond=None)
            a = a * np.exp(-1j * (design @ coef + offset))
            scale = np.vdot(a, b) / np.vdot(a, a)
            err = float(np.linalg.norm(scale * a - b) / np.linalg.norm(b))
            if err < best[0]:
                best = (err, (dy, dx))
    return best
