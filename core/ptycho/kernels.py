"""Fused, threaded loops over frames for the ptychography engines (numba).

With numpy every operation is one pass over the whole stack of frames on one
core; a DM iteration on 1000 frames of 128 x 128 then spent twice as long in
those passes as in its FFTs.  Each kernel here does in one pass, with threads
over frames (or over bands of object or probe rows where frames overlap, so
no two threads add into the same pixel and results do not depend on the
thread count), what took several numpy calls.  numpy references for each
kernel are in tests/core/ptycho/test_kernels.py.

Layouts: probe (P, H, W), object (O, Ho, Wo), frame stacks (N, P*O, H, W)
with pod k = p*O + o, corners (N, 2) integer top-left pixels of the windows.
Kernels are compiled on first use per dtype and cached on disk.
"""

from __future__ import annotations

import math
import os

import numba
import numpy as np

from difframe.optics import fft_workers

if "NUMBA_THREADING_LAYER" not in os.environ:
    # OpenMP's threads spin after each kernel and slow the FFT threads that run next by half (DM: FFTs 0.16 s
    # instead of 0.09 s per iteration); the workqueue pool sleeps
    numba.config.THREADING_LAYER = "workqueue"
# as many threads as the FFTs use: under mpiexec the node's CPUs are shared among its ranks
numba.set_num_threads(min(fft_workers(), numba.config.NUMBA_NUM_THREADS))

# every fast-math flag except nnan/ninf: a NaN must still come out as a NaN
_FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}

#: likelihood codes of the ML kernels
LIKELIHOODS = {"gaussian": 0, "poisson": 1, "euclid": 2}


def _jit(fn):
    return numba.njit(parallel=True, cache=True, fastmath=_FAST, nogil=True)(fn)


# -- waves at the sample ---------------------------------------------------------------------


@_jit
def pods(probe, obj, corners, out):
    """out[n, p*O + o] = probe[p] x window n of object mode o."""
    n_obj, h, w = obj.shape[0], probe.shape[1], probe.shape[2]
    for n in numba.prange(corners.shape[0]):
        y, x = corners[n, 0], corners[n, 1]
        for p in range(probe.shape[0]):
            for o in range(n_obj):
                for i in range(h):
                    pr, ob, ou = probe[p, i], obj[o, y + i, x:x + w], out[n, p * n_obj + o, i]
                    for j in range(w):
                        ou[j] = pr[j] * ob[j]


@_jit
def dm_relaxed(probe, obj, corners, exits, alpha, out):
    """out = (1 + alpha) pods - alpha exits: the wave DM sends to the detector."""
    n_obj, h, w = obj.shape[0], probe.shape[1], probe.shape[2]
    for n in numba.prange(corners.shape[0]):
        y, x = corners[n, 0], corners[n, 1]
        for p in range(probe.shape[0]):
            for o in range(n_obj):
                k = p * n_obj + o
                for i in range(h):
                    pr, ob, ex, ou = probe[p, i], obj[o, y + i, x:x + w], exits[n, k, i], out[n, k, i]
                    for j in range(w):
                        pod = pr[j] * ob[j]
                        ou[j] = pod + alpha * (pod - ex[j])


@_jit
def dm_exit_update(probe, obj, corners, back, exits, change):
    """exits += back - pods (DM's exit-wave update); change[n] = |back - pods|^2 of frame n."""
    n_obj, h, w = obj.shape[0], probe.shape[1], probe.shape[2]
    zero = probe.real.dtype.type(0)
    for n in numba.prange(corners.shape[0]):
        y, x = corners[n, 0], corners[n, 1]
        total = 0.0
        for p in range(probe.shape[0]):
            for o in range(n_obj):
                k = p * n_obj + o
                for i in range(h):
                    pr, ob, bk, ex = probe[p, i], obj[o, y + i, x:x + w], back[n, k, i], exits[n, k, i]
                    row = zero
                    for j in range(w):
                        d = bk[j] - pr[j] * ob[j]
                        ex[j] += d
                        row += d.real * d.real + d.imag * d.imag
                    total += row
        change[n] = total


@_jit
def ml_line_pods(probe, dprobe, obj, dobj, corners, first, second):
    """Pod changes along a search direction: first = dP O + P dO, second = dP dO."""
    n_obj, h, w = obj.shape[0], probe.shape[1], probe.shape[2]
    for n in numba.prange(corners.shape[0]):
        y, x = corners[n, 0], corners[n, 1]
        for p in range(probe.shape[0]):
            for o in range(n_obj):
                k = p * n_obj + o
                for i in range(h):
                    pr, dpr = probe[p, i], dprobe[p, i]
                    ob, dob = obj[o, y + i, x:x + w], dobj[o, y + i, x:x + w]
                    fi, se = first[n, k, i], second[n, k, i]
                    for j in range(w):
                        fi[j] = dpr[j] * ob[j] + pr[j] * dob[j]
                        se[j] = dpr[j] * dob[j]


# -- detector plane --------------------------------------------------------------------------


@numba.njit(inline="always", fastmath=_FAST)
def _row_intensity(fields, n, i, out):
    """out[j] = sum over pods of |fields[n, k, i, j]|^2."""
    f = fields[n, 0, i]
    for j in range(out.shape[0]):
        out[j] = f[j].real * f[j].real + f[j].imag * f[j].imag
    for k in range(1, fields.shape[1]):
        f = fields[n, k, i]
        for j in range(out.shape[0]):
            out[j] += f[j].real * f[j].real + f[j].imag * f[j].imag


@_jit
def dm_fourier_modulus(fields, intensity, weights, count, bound, err, ll):
    """Partial projection of the detector fields onto the measured amplitudes, frame by frame.

    err[n]: mean squared amplitude error over the valid pixels, ll[n]: mean of
    (I_model - I)^2 / (I + 1) over them.  Where err[n] > bound[n], amplitudes
    move toward the data until the error equals the bound; invalid pixels
    (weight 0) keep the model.  ``weights`` is (1, H, W) for a mask shared by
    all frames, else (N, H, W).
    """
    h, w = fields.shape[2], fields.shape[3]
    real = intensity.dtype.type
    one, zero = real(1), real(0)
    wrow = _weight_rows(weights, fields.shape[0])
    for n in numba.prange(fields.shape[0]):
        model = np.empty(w, intensity.dtype)
        e_sum = 0.0
        l_sum = 0.0
        for i in range(h):
            _row_intensity(fields, n, i, model)
            meas, wt = intensity[n, i], weights[wrow[n], i]
            e_row, l_row = zero, zero
            for j in range(w):
                valid = one if wt[j] > 0 else zero
                d = np.sqrt(model[j]) - np.sqrt(meas[j])
                e_row += valid * d * d
                d = model[j] - meas[j]
                l_row += valid * d * d / (meas[j] + one)
            e_sum += e_row
            l_sum += l_row
        e_sum /= count[n]
        err[n] = e_sum
        ll[n] = l_sum / count[n]
        renorm = real(math.sqrt(bound[n] / e_sum) if e_sum > bound[n] else 1.0)
        for i in range(h):
            _row_intensity(fields, n, i, model)
            meas, wt = intensity[n, i], weights[wrow[n], i]
            for j in range(w):  # model becomes the factor that takes each amplitude where it must go
                amp, a = np.sqrt(meas[j]), np.sqrt(model[j])
                model[j] = (amp + (a - amp) * renorm) / (a + real(1e-10)) if wt[j] > 0 else one
            for k in range(fields.shape[1]):
                f = fields[n, k, i]
                for j in range(w):
                    f[j] *= model[j]


@numba.njit(cache=True)
def _weight_rows(weights, frames):
    """Row of ``weights`` each frame uses: 0 for a (1, H, W) mask shared by all, else its own."""
    return np.arange(frames) * (weights.shape[0] != 1)


@numba.njit(inline="always", fastmath=_FAST)
def _row_likelihood(kind, c, model, meas, wt, renorm, tiny, d1, d2):
    """One row's likelihood at model intensity c x model: d1, d2 = dL/dI, d2L/dI2 per pixel; returns sum L.

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
            weight = wt[j] / (meas[j] + inv)
            diff = c * model[j] - meas[j]
            total += weight * diff * diff
            d1[j] = two * weight * diff
            d2[j] = two * weight
    elif kind == 1:  # poisson
        for j in range(model.shape[0]):
            im = max(c * model[j], tiny)
            w = wt[j] * renorm
            total += w * (im - meas[j] * np.log(im))
            d1[j] = w * (one - meas[j] / im)
            d2[j] = w * meas[j] / (im * im)
    else:  # euclid: squared amplitude distance
        for j in range(model.shape[0]):
            im = max(c * model[j], tiny)
            w = wt[j] * renorm
            root, amp = np.sqrt(im), np.sqrt(meas[j])
            total += w * (root - amp) * (root - amp)
            d1[j] = w * (one - amp / root)
            d2[j] = w * amp / (two * im * root)
    return total


@_jit
def ml_gradient_weights(fields, intensity, weights, scale, floating, kind, renorm, tiny, out, err, ll):
    """out = dL/dI x scale x fields per pixel (the detector-plane gradient), frame by frame.

    err[n]: mean (sqrt(I_model) - sqrt(I))^2 over valid pixels; ll[n]: the
    frame's likelihood.  With ``floating`` the frame's scale is first set to
    the least-squares ratio of measured to model intensity.
    """
    h, w = fields.shape[2], fields.shape[3]
    real = intensity.dtype.type
    one, zero = real(1), real(0)
    wrow = _weight_rows(weights, fields.shape[0])
    for n in numba.prange(fields.shape[0]):
        model = np.empty(w, intensity.dtype)
        d1 = np.empty(w, intensity.dtype)
        d2 = np.empty(w, intensity.dtype)
        e_sum = 0.0
        valid = 0.0
        cross = 0.0
        square = 0.0
        for i in range(h):
            _row_intensity(fields, n, i, model)
            meas, wt = intensity[n, i], weights[wrow[n], i]
            e_row, v_row, c_row, s_row = zero, zero, zero, zero
            for j in range(w):
                v = one if wt[j] > 0 else zero
                d = np.sqrt(model[j]) - np.sqrt(meas[j])
                e_row += v * d * d
                v_row += v
                c_row += wt[j] * meas[j] * model[j]
                s_row += wt[j] * model[j] * model[j]
            e_sum += e_row
            valid += v_row
            cross += c_row
            square += s_row
        err[n] = e_sum / max(valid, 1.0)
        if floating:
            scale[n] = cross / max(square, 1e-30)
        c = scale[n]
        l_sum = 0.0
        for i in range(h):
            _row_intensity(fields, n, i, model)
            l_sum += _row_likelihood(kind, c, model, intensity[n, i], weights[wrow[n], i], renorm, tiny, d1, d2)
            g = real(c)
            for j in range(w):
                d1[j] *= g
            for k in range(fields.shape[1]):
                f, o = fields[n, k, i], out[n, k, i]
                for j in range(w):
                    o[j] = f[j] * d1[j]
        ll[n] = l_sum


@_jit
def ml_line_sums(fields, first, second, intensity, weights, scale, kind, renorm, tiny, sums):
    """Per frame the likelihood's first and second derivative along the search direction.

    sums[n] = (b1, b2, change): with a1 = 2 Re(f* first), a2 = |first|^2 +
    2 Re(f* second) summed over pods, b1 = sum d1 c a1 and b2 = sum d1 c a2 +
    d2 (c a1)^2 / 2; change = sum |first|^2.
    """
    h, w = fields.shape[2], fields.shape[3]
    real = intensity.dtype.type
    zero, half, two = real(0), real(0.5), real(2)
    wrow = _weight_rows(weights, fields.shape[0])
    for n in numba.prange(fields.shape[0]):
        c = real(scale[n])
        model = np.empty(w, intensity.dtype)
        a1 = np.empty(w, intensity.dtype)
        a2 = np.empty(w, intensity.dtype)
        g2 = np.empty(w, intensity.dtype)
        d1 = np.empty(w, intensity.dtype)
        d2 = np.empty(w, intensity.dtype)
        b1 = 0.0
        b2 = 0.0
        change = 0.0
        for i in range(h):
            model[:] = zero
            a1[:] = zero
            a2[:] = zero
            g2[:] = zero
            for k in range(fields.shape[1]):
                f, g, q = fields[n, k, i], first[n, k, i], second[n, k, i]
                for j in range(w):
                    model[j] += f[j].real * f[j].real + f[j].imag * f[j].imag
                    a1[j] += f[j].real * g[j].real + f[j].imag * g[j].imag
                    g2[j] += g[j].real * g[j].real + g[j].imag * g[j].imag
                    a2[j] += f[j].real * q[j].real + f[j].imag * q[j].imag
            _row_likelihood(kind, c, model, intensity[n, i], weights[wrow[n], i], renorm, tiny, d1, d2)
            r1, r2, rc = zero, zero, zero
            for j in range(w):
                slope = two * c * a1[j]
                r1 += d1[j] * slope
                r2 += d1[j] * c * (g2[j] + two * a2[j]) + half * d2[j] * slope * slope
                rc += g2[j]
            b1 += r1
            b2 += r2
            change += rc
        sums[n, 0] = b1
        sums[n, 1] = b2
        sums[n, 2] = change


# -- back to object and probe ----------------------------------------------------------------


@_jit
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


@_jit
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
