"""Refinement of scan positions against the current object and probe, for every engine.

The model's windows sit at integer object pixels (``ScanViews.corners``), so a
position is refined on that grid: for every frame the data misfit is evaluated
with the window at its current corner and at the 8 corners ``step`` pixels
around it.  A better neighbour becomes the frame's corner; where the current
corner is the best, the minimum of a 2-D quadratic fitted to the 3 x 3 values
is the sub-pixel position.  :func:`apply_shifts` stores the continuous
estimates in ``scan.positions`` and rounds them into ``scan.corners``; called
again, the search is centred on the new corner, so repeated refinements settle
where the rounded window fits best while the positions keep the sub-pixel
minimum.  A shift common to all frames is not determined by the data (object
and probe absorb it), so nothing here removes or fixes one.  The search is
local: a frame further off than about the object's feature size may settle in
another minimum.  ``step`` > 1 searches wider but only to half a pixel; end
with 1.  Through sub-pixel windows (an engine with exact positions) the grid
is centred on each exact position and only 6 of its 9 candidates are
evaluated (:func:`_refine_exact`).

Every frame's 9 candidates are propagated together, chunk by chunk like the
engines (``PtychoModel.chunks``), so memory stays bounded and there is no
per-frame Python loop.
"""

from __future__ import annotations

import numba
import numpy as np

from difframe.errors import DataError, ParameterError
from difframe.ptycho import kernels
from difframe.ptycho.model import PtychoModel, ScanViews, corners_of, exit_waves, intensity
from difframe.ptycho.vlog import vlog

#: the 3 x 3 grid of candidate offsets (dy, dx) in steps, row-major; the centre is index 4
OFFSETS = np.stack(np.meshgrid([-1, 0, 1], [-1, 0, 1], indexing="ij"), axis=-1).reshape(9, 2)
#: f = a + b y + c x + d y^2 + e y x + g x^2 at the grid points: f = _DESIGN @ (a, b, c, d, e, g)
_DESIGN = np.stack([np.ones(9), OFFSETS[:, 0], OFFSETS[:, 1], OFFSETS[:, 0] ** 2, OFFSETS[:, 0] * OFFSETS[:, 1],
                    OFFSETS[:, 1] ** 2], axis=1)
#: least-squares fit of that quadratic on the grid: coef = f @ _FIT.T
_FIT = np.linalg.pinv(_DESIGN)
#: through sub-pixel windows: the centre and its four neighbours along the axes, then one diagonal
_CROSS = np.array([4, 1, 7, 3, 5])
#: per diagonal (index into OFFSETS), the exact fit of the quadratic through the cross and that diagonal
_FIT_SIX = {d: np.linalg.inv(_DESIGN[[*_CROSS, d]]) for d in (0, 2, 6, 8)}
LIKELIHOODS = ("poisson", "gaussian")
#: half a pixel, less what keeps np.rint from rounding a clipped estimate into the next corner
_CELL = 0.5 - 1e-6


def misfit(model: PtychoModel, scan: ScanViews, corners: np.ndarray | None = None,
           likelihood: str = "poisson") -> np.ndarray:
    """Data misfit (n_held,) of every held frame with its window at ``corners`` (default: the current ones).

    ``poisson``: the deviance ``2 sum w (I_m - I + I log(I / I_m))`` (about 1
    per pixel at the noise level); ``gaussian``: ``sum w (I_m - I)^2 / (I + 1)``
    as the engines' likelihood metric.  ``I_m = scale x sum over pods of
    |propagate(probe x object window)|^2 + background``.  This is what
    :func:`refine_scan` minimises.
    """
    corners = scan.corners if corners is None else np.asarray(corners, dtype=np.int64)
    return _misfits(model, scan, corners[:, None], likelihood)[:, 0]


def refine_scan(model: PtychoModel, scan: ScanViews, *, max_shift_px: float, likelihood: str = "poisson",
                step_px: float = 1.0, subpixel_windows: bool = False) -> np.ndarray:
    """Per-frame shifts (n_held, 2) [object pixels, (y, x)] that move the held frames' positions to their best fit.

    The misfit is evaluated on the 3 x 3 grid of window corners ``step_px``
    apart around the current one.  Where a neighbour fits better, the frame
    moves to the best grid corner (every such move lowers the misfit, so
    repeated calls cannot cycle).  Where the current corner is the best, the
    minimum of the quadratic fitted to the 9 values, kept within half a pixel
    per axis so the window stays, is the sub-pixel estimate; a quadratic
    without a minimum leaves the frame at the corner.  Shifts are relative to
    the current ``scan.positions`` (which the windows approximate by rounding)
    and no longer than ``max_shift_px``.  Local to this rank's frames.

    With ``subpixel_windows`` (an engine that places windows at their exact
    positions, difframe.ptycho.subpixel) the grid is centred on each frame's
    exact position and evaluated through interpolated windows, so the
    quadratic's minimum is used wherever it lies within the grid and
    ``step_px`` may be a fraction of a pixel.
    """
    if not max_shift_px >= 0:
        raise ParameterError(f"position refinement max_shift must be >= 0 pixels, got {max_shift_px!r}")
    if subpixel_windows:
        return _refine_exact(model, scan, max_shift_px, likelihood, float(step_px))
    step = int(round(step_px))
    if step < 1 or abs(step - step_px) > 1e-9:
        raise ParameterError(f"position refinement step must be a whole number of pixels >= 1, got {step_px!r}")
    grid = scan.corners[:, None] + step * OFFSETS[None]
    values = _misfits(model, scan, grid, likelihood)

    # inside the centre's cell (rounding keeps the corner): a quadratic minimum beyond it, which the 9 values
    # of a non-quadratic misfit can put there, made frames cycle between two corners
    estimate = _grid_minimum(values, _CELL / step)

    storage = model.objects[scan.object_id]
    held = scan.positions[scan.first:scan.first + scan.num_frames]
    centre_px = scan.corners + np.asarray(scan.shape) // 2
    shifts = centre_px + step * estimate - (held - storage.origin) / storage.psize
    return _within(shifts, max_shift_px)


def _refine_exact(model, scan, max_shift_px: float, likelihood: str, step: float) -> np.ndarray:
    """:func:`refine_scan` through sub-pixel windows: misfits at each exact position, its four neighbours
    along the axes and the diagonal between the better two (6 of the 3 x 3 grid: two thirds of the
    propagations), then the best of them or, where the centre is best, the minimum of the quadratic through
    the six, within one step."""
    from difframe.ptycho import subpixel

    if not step > 0:
        raise ParameterError(f"position refinement step must be > 0 pixels, got {step!r}")
    frac = subpixel.offsets(scan, model.objects[scan.object_id])
    n = len(frac)
    values = np.full((n, 9), np.inf)
    cross = _misfits(model, scan, np.repeat(scan.corners[:, None], 5, axis=1), likelihood,
                     frac[:, None] + step * OFFSETS[_CROSS][None])
    values[:, _CROSS] = cross
    # the diagonal between the better neighbour along each axis: where the quadratic's cross term shows
    diagonal = np.where(values[:, 7] < values[:, 1], 6, 0) + np.where(values[:, 5] < values[:, 3], 2, 0)
    values[np.arange(n), diagonal] = _misfits(model, scan, scan.corners[:, None], likelihood,
                                              frac[:, None] + step * OFFSETS[diagonal][:, None])[:, 0]
    coef = np.full((n, 6), np.nan)
    for d, fit in _FIT_SIX.items():
        rows = (diagonal == d) & np.isfinite(cross).all(axis=1) & np.isfinite(values[:, d])
        coef[rows] = np.concatenate([cross[rows], values[rows, d][:, None]], axis=1) @ fit.T
    return _within(step * _grid_minimum(values, 1.0, coef), max_shift_px)


def _within(shifts: np.ndarray, radius: float) -> np.ndarray:
    """``shifts`` (n, 2) shortened to at most ``radius`` each, directions kept."""
    length = np.hypot(shifts[:, 0], shifts[:, 1])
    return shifts * np.minimum(1.0, radius / np.maximum(length, 1e-300))[:, None]


def _grid_minimum(values: np.ndarray, reach: float, coef: np.ndarray | None = None) -> np.ndarray:
    """Per frame, the offset (in grid steps) of the best of its 3 x 3 misfits ``values`` (n, 9; inf: not
    evaluated or off the object); where the centre is best, the minimum of the quadratic ``coef`` (n, 6; by
    default fitted to the 9 values; NaN: none), within ``reach`` steps per axis (a quadratic without a minimum,
    or a frame off the object, keeps the centre)."""
    best = np.argmin(values, axis=1)
    estimate = OFFSETS[best].astype(float)
    if coef is None:
        finite = np.isfinite(values).all(axis=1)
        coef = np.where(np.isfinite(values), values, 0.0) @ _FIT.T
    else:
        finite = np.isfinite(coef).all(axis=1)
        coef = np.where(finite[:, None], coef, 0.0)
    gy, gx, hyy, hyx, hxx = coef[:, 1], coef[:, 2], 2 * coef[:, 3], coef[:, 4], 2 * coef[:, 5]
    det = hyy * hxx - hyx**2
    settled = (best == 4) & finite & (det > 0) & (hyy > 0)
    safe = np.where(settled, det, 1.0)
    quad = np.stack([(hyx * gx - hxx * gy) / safe, (hyx * gy - hyy * gx) / safe], axis=1)
    estimate[settled] = np.clip(quad[settled], -reach, reach)
    return estimate


def apply_shifts(model: PtychoModel, scan: ScanViews, shifts_px: np.ndarray, *, max_shift_px: float,
                 original_positions: np.ndarray) -> dict:
    """Move the scan's positions by ``shifts_px`` (n_held, 2) [object pixels] and recompute its corners.

    Collective under MPI: every rank passes its held frames' shifts and all
    ranks end with the same ``scan.positions`` (metres, all frames).  The total
    displacement from ``original_positions`` is clipped to a radius of
    ``max_shift_px`` (direction kept, so diagonals move no further than axes).
    Positions keep the continuous estimates; ``scan.corners`` are their rounded
    windows (the model's windows are whole pixels).  A frame whose window would
    leave the object is a DataError naming scan and frame, and nothing changes.
    Returns ``{"rms_shift_px", "max_shift_px"}`` of the moves made by this call.
    """
    storage = model.objects[scan.object_id]
    shifts_px = np.asarray(shifts_px, dtype=float)
    if shifts_px.shape != (scan.num_frames, 2):
        raise ValueError(f"scan {scan.label!r}: shifts of shape {shifts_px.shape}, expected ({scan.num_frames}, 2)")
    moves = np.zeros(scan.positions.shape)
    moves[scan.first:scan.first + scan.num_frames] = shifts_px
    model.ranks.sum_arrays(moves)

    original = np.asarray(original_positions, dtype=float)
    total = (scan.positions - original) / storage.psize + moves
    total = _within(total, max_shift_px)
    positions = original + total * storage.psize

    corners = corners_of(positions, storage, scan.shape)
    beyond = np.asarray(storage.data.shape[-2:]) - scan.shape
    off = np.flatnonzero((corners < 0).any(axis=1) | (corners > beyond).any(axis=1))
    if off.size:
        n = int(off[0])
        raise DataError(f"scan {scan.label!r}: position refinement would move frame {n} (window corner "
                        f"{corners[n].tolist()}, {off.size} frames in all) off object {scan.object_id!r} of shape "
                        f"{tuple(storage.data.shape[-2:])}; lower max_shift or pad the object")
    applied = np.hypot(*((positions - scan.positions) / storage.psize).T)
    scan.positions = positions
    scan.corners = corners[scan.first:scan.first + scan.num_frames]
    return {"rms_shift_px": float(np.sqrt(np.mean(applied**2))), "max_shift_px": float(applied.max(initial=0.0))}


def _misfits(model: PtychoModel, scan: ScanViews, corners: np.ndarray, likelihood: str,
             shifts: np.ndarray | None = None) -> np.ndarray:
    """Misfit (n, k) of every held frame with its window at each of its k ``corners`` (n, k, 2); inf off the object.

    With ``shifts`` (n, k, 2) the windows are interpolated that far from their corners (difframe.ptycho.subpixel).
    """
    if likelihood not in LIKELIHOODS:
        raise ParameterError(f"position refinement likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    probe = model.probes[scan.probe_id].data
    obj = model.objects[scan.object_id].data
    n, k = corners.shape[:2]
    h, w = scan.shape
    pods = probe.shape[0] * obj.shape[0]
    inside = ((corners >= 0) & (corners <= np.asarray(obj.shape[-2:]) - (h, w))).all(axis=-1)
    corners = np.clip(corners, 0, np.asarray(obj.shape[-2:]) - (h, w)).astype(np.int64)
    background = getattr(scan, "background", None)
    background = np.zeros((h, w)) if background is None else np.asarray(background, dtype=float)
    scale = getattr(scan, "scale", None)
    scale = np.ones(n) if scale is None else np.asarray(scale, dtype=float)
    out = np.empty((n, k))
    buf = None
    for sl in model.chunks(scan, k * pods):
        m = sl.stop - sl.start
        if buf is None:
            buf = np.empty((m * k, pods, h, w), model.cdtype)
            model_i = np.empty((m * k, h, w), model.rdtype)
        fields = buf[:m * k]
        flat = np.ascontiguousarray(corners[sl].reshape(-1, 2))
        if shifts is None:
            kernels.pods(probe, obj, flat, fields)
        else:
            from difframe.ptycho import subpixel

            views = subpixel.views(obj, flat, shifts[sl].reshape(-1, 2), (h, w))
            exit_waves(probe, views, out=fields.reshape(m * k, probe.shape[0], obj.shape[0], h, w))
        fields = scan.propagator.forward(fields, overwrite=True)
        im = intensity(fields, out=model_i[:m * k]).reshape(m, k, h, w)
        _frame_misfits(im, scan.intensity[sl], scan.weights_of(sl), scale[sl], background,
                       likelihood == "poisson", out[sl])
    out[~inside] = np.inf
    return out


@numba.njit(parallel=True, cache=True, nogil=True, error_model=kernels.ERRORS, fastmath=kernels.FAST)
def _frame_misfits(model_i, meas, weights, scale, background, poisson, out):
    """out[n, c] = misfit of frame n's data against its candidate c, ``scale[n] x model_i[n, c] + background``.

    Summed per pixel in float64 and in the deviance's own form (each term
    small near the fit), so candidates whose misfits differ by a fraction of a
    count per frame are still told apart at high counts.  The sum may be
    reordered (fast-math's reassociation: the loop vectorises, 0.2 of its
    time; in float64 that moves a frame's misfit by ~1e-14 of itself).
    """
    frames, k, h, w = model_i.shape
    own_weights = weights.shape[0] != 1
    for idx in numba.prange(frames * k):
        n, c = idx // k, idx % k
        wn = n if own_weights else 0
        total = 0.0
        for i in range(h):
            for j in range(w):  # branch-free, so that it vectorises; every term finite, masked ones 0
                wt = float(weights[wn, i, j])
                im = scale[n] * float(model_i[n, c, i, j]) + background[i, j]
                d = max(float(meas[n, i, j]), 0.0)  # masked pixels may hold negative markers
                if poisson:
                    im = max(im, 1e-30)
                    total += 2.0 * wt * (im - d + d * vlog(max(d, 1e-30) / im))
                else:
                    total += wt * (im - d) ** 2 / (d + 1.0)
        out[n, c] = total
