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


def truth_errors(obj: np.ndarray, probe: np.ndarray, corners: np.ndarray, truth: dict) -> tuple[float, float]:
    """(object error, probe error) of a single-mode ``obj`` (Ho, Wo) and ``probe`` (H, W) whose windows sit at
    ``corners`` against a simulation's ``truth`` (the ``sim`` recipe's meta["truth"]: object, probe,
    view_corners).

    The truth is placed on the reconstruction's pixel grid by the one offset between the two sets of windows;
    the object is compared where the true probe lights it (over 10 % of the peak summed intensity).
    """
    offset = np.asarray(corners) - truth["view_corners"]
    if np.ptp(offset, axis=0).any():
        raise DataError("reconstruction and truth windows are not one offset apart")
    (dy, dx), t_obj, t_probe = offset[0], truth["object"][0], truth["probe"][0]
    placed = np.zeros_like(obj)  # the truth on the reconstruction's pixel grid
    h, w = min(obj.shape[0] - dy, t_obj.shape[0]), min(obj.shape[1] - dx, t_obj.shape[1])
    placed[dy:dy + h, dx:dx + w] = t_obj[:h, :w]
    light = np.zeros(obj.shape)
    from difframe.ptycho.model import scatter_add

    scatter_add(light, np.broadcast_to(np.abs(t_probe) ** 2, (len(corners), *probe.shape)), corners)
    return aligned_error(obj, placed, light > 0.1 * light.max())[0], aligned_error(probe, t_probe)[0]


def star_contrast(obj: np.ndarray, psize: float, radii: tuple[float, float], spokes: int,
                  search_px: int = 20) -> dict:
    """Phase contrast of a Siemens star: median phase of its spokes minus that of its gaps.

    ``obj`` is the complex 2-D object, ``psize`` its pixel [m], ``radii`` the
    annulus (inner, outer) [m] measured, ``spokes`` the star's spoke count.
    The centre is found as the point (within ``search_px`` of the object's
    middle) around which the annulus' phase has the strongest ``spokes``-fold
    angular harmonic; that harmonic's sign splits the annulus into spoke and
    gap pixels (the half-periods centred on its maxima and minima).  Returns
    {"contrast" [rad], "centre" (row, col), "pixels"}.  The contrast is
    positive by construction (the harmonic's maxima are called spokes): which
    of the two halves holds material depends on the phase sign convention.
    """
    obj = np.asarray(obj)
    phase = np.angle(obj * np.exp(-1j * np.angle(np.median(obj.real) + 1j * np.median(obj.imag))))
    rows, cols = np.indices(obj.shape)
    r_in, r_out = radii[0] / psize, radii[1] / psize
    mid = np.asarray(obj.shape) // 2

    def harmonic(cy, cx):
        dy, dx = rows - cy, cols - cx
        r = np.hypot(dy, dx)
        ring = (r >= r_in) & (r <= r_out)
        theta = np.arctan2(dy[ring], dx[ring])
        values = phase[ring] - np.median(phase[ring])
        return np.sum(values * np.exp(-1j * spokes * theta)), ring, theta, values

    best = max(((abs(harmonic(mid[0] + dy, mid[1] + dx)[0]), (mid[0] + dy, mid[1] + dx))
                for dy in range(-search_px, search_px + 1, 2) for dx in range(-search_px, search_px + 1, 2)),
               key=lambda t: t[0])[1]
    fine = max(((abs(harmonic(best[0] + dy, best[1] + dx)[0]), (best[0] + dy, best[1] + dx))
                for dy in (-1, 0, 1) for dx in (-1, 0, 1)), key=lambda t: t[0])[1]
    coef, ring, theta, values = harmonic(*fine)
    wave = np.cos(spokes * theta - np.angle(coef))
    high, low = values[wave > 0], values[wave < 0]
    if high.size == 0 or low.size == 0:
        raise DataError("the star's annulus lies outside the object")
    return {"contrast": float(np.median(high) - np.median(low)), "centre": tuple(int(v) for v in fine),
            "pixels": int(ring.sum())}
