"""Fused, threaded loops over frames for the ptychography engines (numba).

With numpy every operation is one pass over the whole stack of frames on one
core; a DM iteration on 1000 frames of 128 x 128 then spent twice as long in
those passes as in its FFTs.  Each kernel here does in one pass, with threads
over frames (or over bands of object or probe rows where frames overlap, so
no two threads add into the same pixel and results do not depend on the
thread count), what took several numpy calls.  numpy references for each
kernel are in tests/core/ptycho/test_kernels.py.

The kernels here are the pieces every engine shares (pods, the detector-plane
row helpers, the object and probe sums); the projection engines' Fourier
step is in :mod:`difframe.ptycho.projection`, and every other engine keeps
its own kernels next to its plugin (e.g. plugins/engines/ml_kernels.py),
inlining these row helpers.

Layouts: probe (P, H, W), object (O, Ho, Wo), frame stacks (N, P*O, H, W)
with pod k = p*O + o, corners (N, 2) integer top-left pixels of the windows.
Kernels are compiled on first use per dtype and cached on disk.
"""

from __future__ import annotations

import os

import numba
import numpy as np

from difframe.fft import fft_workers
from difframe.ptycho.vlog import vlog

if "NUMBA_THREADING_LAYER" not in os.environ:
    # OpenMP's threads spin after each kernel and slow the FFT threads that run next by half (DM: FFTs 0.16 s
    # instead of 0.09 s per iteration); the workqueue pool sleeps
    numba.config.THREADING_LAYER = "workqueue"
# as many threads as the FFTs use: under mpiexec the node's CPUs are shared among its ranks
numba.set_num_threads(min(fft_workers(), numba.config.NUMBA_NUM_THREADS))

# every fast-math flag except nnan/ninf: a NaN must still come out as a NaN
FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}
# numpy's error model: a division by zero gives inf or NaN instead of raising, so numba adds no zero test before
# each division, and loops with divisions vectorise (a division loop ran 5x faster); callers keep denominators
# positive (``tiny``) where it matters
ERRORS = "numpy"

#: likelihood codes of the ML kernels
LIKELIHOODS = {"gaussian": 0, "poisson": 1, "euclid": 2}


def jit(fn):
    """A kernel threaded over frames (``numba.prange``)."""
    return numba.njit(parallel=True, cache=True, fastmath=FAST, nogil=True, error_model=ERRORS)(fn)


def serial(fn):
    """A kernel on the calling thread alone: the tasks :mod:`difframe.frame_threads` runs side by side."""
    return numba.njit(cache=True, fastmath=FAST, nogil=True, error_model=ERRORS)(fn)


# -- waves at the sample ---------------------------------------------------------------------


@numba.njit(inline="always")
def _frame_pods(probe, obj, y, x, out):
    """out[p*O + o] = probe[p] x the window of object mode o at top-left pixel (y, x)."""
    n_obj, h, w = obj.shape[0], probe.shape[1], probe.shape[2]
    for p in range(probe.shape[0]):
        for o in range(n_obj):
            for i in range(h):
                pr, ob, ou = probe[p, i], obj[o, y + i, x:x + w], out[p * n_obj + o, i]
                for j in range(w):
                    ou[j] = pr[j] * ob[j]


@jit
def pods(probe, obj, corners, out):
    """out[n, p*O + o] = probe[p] x window n of object mode o."""
    for n in numba.prange(corners.shape[0]):
        _frame_pods(probe, obj, corners[n, 0], corners[n, 1], out[n])


@serial
def pods_serial(probe, obj, corners, out):
    """:func:`pods` on the calling thread."""
    for n in range(corners.shape[0]):
        _frame_pods(probe, obj, corners[n, 0], corners[n, 1], out[n])


@jit
def mix_probe_modes(stack, mixing, n_obj):
    """In place: stack[n, k*O + o] = sum_p stack[n, p*O + o] mixing[p, k] (a change of probe-mode basis)."""
    n_probe, h, w = mixing.shape[0], stack.shape[2], stack.shape[3]
    for n in numba.prange(stack.shape[0]):
        old = np.empty((n_probe, w), stack.dtype)  # one row of every mode, mixed row by row (contiguous loops)
        for o in range(n_obj):
            for i in range(h):
                for p in range(n_probe):
                    src = stack[n, p * n_obj + o, i]
                    for j in range(w):
                        old[p, j] = src[j]
                for k in range(n_probe):
                    row = stack[n, k * n_obj + o, i]
                    first = mixing[0, k]
                    for j in range(w):
                        row[j] = old[0, j] * first
                    for p in range(1, n_probe):
                        weight = mixing[p, k]
                        for j in range(w):
                            row[j] += old[p, j] * weight


@jit
def divide_by_map(num, den, out):
    """out[o] = num[o] / den: the overlap update's quotient, its (H, W) denominator shared by the modes
    (numpy divides complex by complex there: 3x the time)."""
    for i in numba.prange(den.shape[0]):
        inv = den[i]
        for o in range(num.shape[0]):
            src, dst = num[o, i], out[o, i]
            for j in range(inv.shape[0]):
                dst[j] = src[j] * (1 / inv[j])


@jit
def scale_separable(stack, rows, cols):
    """In place: stack[n, i, j] *= rows[i] x cols[j] (a separable filter's transfer function)."""
    for i in numba.prange(stack.shape[1]):
        r = rows[i]
        for n in range(stack.shape[0]):
            line = stack[n, i]
            for j in range(line.shape[0]):
                line[j] *= r * cols[j]


# -- detector plane: row helpers the engines' own kernels inline ---------------------------------
#
# The model intensity of frame n is I_n = scale[n] x sum over pods |field|^2 + background (incoherent
# counts per frame); rows are the unit so that each inner loop vectorises.


@numba.njit(inline="always", fastmath=FAST)
def row_intensity(fields, n, i, out):
    """out[j] = sum over pods of |fields[n, k, i, j]|^2."""
    f = fields[n, 0, i]
    for j in range(out.shape[0]):
        out[j] = f[j].real * f[j].real + f[j].imag * f[j].imag
    for k in range(1, fields.shape[1]):
        f = fields[n, k, i]
        for j in range(out.shape[0]):
            out[j] += f[j].real * f[j].real + f[j].imag * f[j].imag


@numba.njit(cache=True)
def weight_rows(weights, frames):
    """Row of ``weights`` each frame uses: 0 for a (1, H, W) mask shared by all, else its own."""
    return np.arange(frames) * (weights.shape[0] != 1)


@numba.njit(inline="always", fastmath=FAST)
def row_likelihood(kind, c, model, bg, meas, wt, renorm, tiny, d1, d2):
    """One row's likelihood at model intensity c x model + bg: d1, d2 = dL/dI, d2L/dI2 per pixel; returns sum L.

    Written per likelihood over whole rows in the row's precision, so each
    loop vectorises (the choice of likelihood is made once per row).
    """
    real = model.dtype.type
    c, renorm, tiny = real(c), real(renorm), real(tiny)
    one, two, zero = real(1), real(2), real(0)
    total = zero
    if kind == 0:  # gaussian, variance I + 1/renorm
        inv = one / renorm
        for j in range(model.shape[0]):
            weight = wt[j] / (max(meas[j], zero) + inv)  # masked pixels may hold negative markers
            diff = c * model[j] + bg[j] - meas[j]
            total += weight * diff * diff
            d1[j] = two * weight * diff
            d2[j] = two * weight
    elif kind == 1:  # poisson
        for j in range(model.shape[0]):
            im = max(c * model[j] + bg[j], tiny)
            w = wt[j] * renorm
            total += w * (im - meas[j] * vlog(im))
            d1[j] = w * (one - meas[j] / im)
            d2[j] = w * meas[j] / (im * im)
    else:  # euclid: squared amplitude distance
        for j in range(model.shape[0]):
            im = max(c * model[j] + bg[j], tiny)
            w = wt[j] * renorm
            root, amp = np.sqrt(im), np.sqrt(max(meas[j], zero))
            total += w * (root - amp) * (root - amp)
            d1[j] = w * (one - amp / root)
            d2[j] = w * amp / (two * im * root)
    return total


@numba.njit(inline="always", fastmath=FAST)
def row_deviance(c, model, bg, meas, wt, tiny):
    """Poisson deviance 2 [I_m - I + I ln(I / I_m)] of one row, summed over valid pixels (weight > 0).

    The engines' common data-fit measure: about 1 per pixel when the model
    explains the counts down to their Poisson noise, whatever the engine.
    """
    real = model.dtype.type
    c, tiny = real(c), real(tiny)
    zero, two = real(0), real(2)
    total = zero
    for j in range(model.shape[0]):
        im = max(c * model[j] + bg[j], tiny)
        m = max(meas[j], zero)  # masked pixels may hold negative markers: every term stays finite
        total += real(wt[j] > zero) * (im - m + m * vlog(max(m, tiny) / im))  # m = 0: the log's term is 0
    return two * total


@numba.njit(inline="always")
def add_row(target, values):
    """target[j] += values[j]: one row of a per-thread sum over frames (background gradients)."""
    for j in range(values.shape[0]):
        target[j] += values[j]


# -- back to object and probe ----------------------------------------------------------------


@jit
def _add_object(num, den, probe_conj, probe_power, stack, corners, bands):
    n_obj, h, w = num.shape[0], stack.shape[2], stack.shape[3]
    with_den = den.shape[0] > 0
    for b in numba.prange(bands.shape[0] - 1):
        for n in range(corners.shape[0]):
            y, x = corners[n, 0], corners[n, 1]
            for r in range(max(y, bands[b]), min(y + h, bands[b + 1])):
                i = r - y
                for o in range(n_obj):
                    target = num[o, r, x:x + w]
                    for p in range(probe_conj.shape[0]):
                        pc, st = probe_conj[p, i], stack[n, p * n_obj + o, i]
                        for j in range(w):
                            target[j] += pc[j] * st[j]
                if with_den:
                    target, pw = den[r, x:x + w], probe_power[i]
                    for j in range(w):
                        target[j] += pw[j]


@jit
def _add_probe(num, den, obj, stack, corners, weight, bands):
    n_obj, w = obj.shape[0], stack.shape[3]
    with_den = den.shape[0] > 0
    for b in numba.prange(bands.shape[0] - 1):
        for n in range(corners.shape[0]):
            y, x = corners[n, 0], corners[n, 1]
            for i in range(bands[b], bands[b + 1]):
                for o in range(n_obj):
                    ob = obj[o, y + i, x:x + w]
                    for p in range(num.shape[0]):
                        target, st = num[p, i], stack[n, p * n_obj + o, i]
                        for j in range(w):
                            target[j] += weight * (np.conj(ob[j]) * st[j])
                    if with_den:
                        target = den[i]
                        for j in range(w):
                            target[j] += weight * (ob[j].real * ob[j].real + ob[j].imag * ob[j].imag)


def row_bands(starts: np.ndarray, height: int, rows: int, parts: int) -> np.ndarray:
    """Cuts of ``rows`` into at most ``parts`` bands holding about equal numbers of window rows.

    Frame n covers rows starts[n] .. starts[n] + height - 1; one thread per band.
    """
    cover = np.zeros(rows + 1, np.int64)
    np.add.at(cover, starts, 1)
    np.add.at(cover, starts + height, -1)
    load = np.cumsum(np.cumsum(cover[:rows]))
    cuts = np.searchsorted(load, load[-1] * np.arange(1, parts) / parts)
    return np.unique(np.concatenate([[0], cuts, [rows]])).astype(np.int64)


def add_object_update(num, den, probe_conj, probe_power, stack, corners) -> None:
    """num[o, window n] += sum_p probe_conj[p] stack[n, p*O+o]; den[window n] += probe_power.

    ``den`` None skips the denominator (ML's object gradient; ``probe_power`` is then not used).
    """
    bands = row_bands(corners[:, 0], stack.shape[2], num.shape[1], numba.get_num_threads())
    if den is None:
        den = probe_power = np.empty((0, 0), num.real.dtype)
    _add_object(num, den, probe_conj, probe_power, stack, corners, bands)


def add_probe_update(num, den, obj, stack, corners, weight: float = 1.0) -> None:
    """num[p] += weight sum_o conj(window n[o]) stack[n, p*O+o]; den += weight sum_o |window n[o]|^2.

    ``den`` None skips the denominator (ML's probe gradient).
    """
    h = num.shape[1]
    bands = np.unique(np.linspace(0, h, min(h, numba.get_num_threads()) + 1).astype(np.int64))
    den = np.empty((0, 0), num.real.dtype) if den is None else den
    _add_probe(num, den, obj, stack, corners, num.real.dtype.type(weight), bands)
