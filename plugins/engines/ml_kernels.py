"""The maximum-likelihood engine's own fused kernels (numba); shared pieces are in :mod:`difframe.ptycho.kernels`.

The model intensity of frame n is scale[n] x sum over pods |field|^2 +
background; the three likelihoods enter through their first and second
derivatives with respect to it (``row_likelihood``).  numpy references are in
tests/plugins/engines/test_engine_kernels.py.
"""

from __future__ import annotations

import numba
import numpy as np

from difframe.ptycho.kernels import (add_row, jit, row_deviance, row_intensity, row_likelihood, serial,
                                     weight_rows)


@numba.njit(inline="always")
def _frame_line_pods(probe, dprobe, obj, dobj, y, x, first, second):
    """One frame's pod changes (pods, H, W) along a search direction, window at top-left pixel (y, x)."""
    n_obj, h, w = obj.shape[0], probe.shape[1], probe.shape[2]
    for p in range(probe.shape[0]):
        for o in range(n_obj):
            k = p * n_obj + o
            for i in range(h):
                pr, dpr = probe[p, i], dprobe[p, i]
                ob, dob = obj[o, y + i, x:x + w], dobj[o, y + i, x:x + w]
                fi, se = first[k, i], second[k, i]
                for j in range(w):
                    fi[j] = dpr[j] * ob[j] + pr[j] * dob[j]
                    se[j] = dpr[j] * dob[j]


@jit
def ml_line_pods(probe, dprobe, obj, dobj, corners, first, second):
    """Pod changes along a search direction: first = dP O + P dO, second = dP dO."""
    for n in numba.prange(corners.shape[0]):
        _frame_line_pods(probe, dprobe, obj, dobj, corners[n, 0], corners[n, 1], first[n], second[n])


@serial
def ml_line_pods_serial(probe, dprobe, obj, dobj, corners, first, second):
    """:func:`ml_line_pods` on the calling thread (a frame thread's chunk)."""
    for n in range(corners.shape[0]):
        _frame_line_pods(probe, dprobe, obj, dobj, corners[n, 0], corners[n, 1], first[n], second[n])


@numba.njit(inline="always")
def _frame_gradient_weights(fields, intensity, weights, wrow, scale, floating, background, kind, renorm, tiny,
                            out, err, ll, dev, sums, n):
    """Frame ``n`` of :func:`ml_gradient_weights`; ``sums`` (2, H, W) this thread's background sums, or empty."""
    h, w = fields.shape[2], fields.shape[3]
    real = intensity.dtype.type
    zero = real(0)
    fit_bg = sums.shape[0] > 0
    model = np.empty(w, intensity.dtype)
    d1 = np.empty(w, intensity.dtype)
    d2 = np.empty(w, intensity.dtype)
    valid = 0.0
    cross = 0.0
    square = 0.0
    for i in range(h):
        row_intensity(fields, n, i, model)
        meas, wt, bg = intensity[n, i], weights[wrow[n], i], background[i]
        v_row, c_row, s_row = zero, zero, zero
        for j in range(w):
            v_row += real(wt[j] > zero)
            c_row += wt[j] * (meas[j] - bg[j]) * model[j]
            s_row += wt[j] * model[j] * model[j]
        valid += v_row
        cross += c_row
        square += s_row
    if floating:
        scale[n] = max(cross, 0.0) / max(square, 1e-30)
    c = scale[n]
    cr = real(c)
    e_sum = 0.0
    l_sum = 0.0
    d_sum = 0.0
    for i in range(h):
        row_intensity(fields, n, i, model)
        meas, wt, bg = intensity[n, i], weights[wrow[n], i], background[i]
        e_row = zero
        for j in range(w):
            d = np.sqrt(cr * model[j] + bg[j]) - np.sqrt(max(meas[j], zero))
            e_row += real(wt[j] > zero) * d * d
        e_sum += e_row
        l_sum += row_likelihood(kind, c, model, bg, meas, wt, renorm, tiny, d1, d2)
        d_sum += row_deviance(c, model, bg, meas, wt, tiny)
        if fit_bg:
            add_row(sums[0, i], d1)
            add_row(sums[1, i], d2)
        for j in range(w):
            d1[j] *= cr
        for k in range(fields.shape[1]):
            f, o = fields[n, k, i], out[n, k, i]
            for j in range(w):
                o[j] = f[j] * d1[j]
    err[n] = e_sum / max(valid, 1.0)
    ll[n] = l_sum
    dev[n] = d_sum


@jit
def ml_gradient_weights(fields, intensity, weights, scale, floating, background, kind, renorm, tiny,
                        out, err, ll, dev, bg_sums):
    """out = dL/dI x scale x fields per pixel (the detector-plane gradient), frame by frame.

    err[n]: mean (sqrt(I_model) - sqrt(I))^2 over valid pixels; ll[n]: the
    frame's likelihood; dev[n]: its Poisson deviance (sum over valid pixels).
    With ``floating`` the frame's scale is first set to the weighted
    least-squares ratio of the measured counts less the background to the
    coherent model intensity.  With ``bg_sums`` (threads, 2, H, W) the
    likelihood's gradient and curvature with respect to the background are
    added per thread (an empty array: not fitted).
    """
    wrow = weight_rows(weights, fields.shape[0])
    no_sums = np.empty((0, 0, 0), bg_sums.dtype)
    for n in numba.prange(fields.shape[0]):
        sums = bg_sums[numba.get_thread_id()] if bg_sums.shape[0] > 0 else no_sums
        _frame_gradient_weights(fields, intensity, weights, wrow, scale, floating, background, kind, renorm, tiny,
                                out, err, ll, dev, sums, n)


@serial
def ml_gradient_weights_serial(fields, intensity, weights, scale, floating, background, kind, renorm, tiny,
                               out, err, ll, dev, bg_sums):
    """:func:`ml_gradient_weights` on the calling thread, ``bg_sums`` (1, 2, H, W) its own (or empty)."""
    wrow = weight_rows(weights, fields.shape[0])
    sums = bg_sums[0] if bg_sums.shape[0] > 0 else np.empty((0, 0, 0), bg_sums.dtype)
    for n in range(fields.shape[0]):
        _frame_gradient_weights(fields, intensity, weights, wrow, scale, floating, background, kind, renorm, tiny,
                                out, err, ll, dev, sums, n)


@numba.njit(inline="always")
def _frame_line_sums(fields, first, second, intensity, weights, wrow, scale, background, kind, renorm, tiny,
                     sums, n):
    """sums[n] of :func:`ml_line_sums` for frame ``n``."""
    h, w = fields.shape[2], fields.shape[3]
    real = intensity.dtype.type
    zero, half, two = real(0), real(0.5), real(2)
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
        row_likelihood(kind, c, model, background[i], intensity[n, i], weights[wrow[n], i], renorm, tiny, d1, d2)
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


@jit
def ml_line_sums(fields, first, second, intensity, weights, scale, background, kind, renorm, tiny, sums):
    """Per frame the likelihood's first and second derivative along the search direction.

    sums[n] = (b1, b2, change): with a1 = 2 Re(f* first), a2 = |first|^2 +
    2 Re(f* second) summed over pods, b1 = sum d1 c a1 and b2 = sum d1 c a2 +
    d2 (c a1)^2 / 2; change = sum |first|^2.
    """
    wrow = weight_rows(weights, fields.shape[0])
    for n in numba.prange(fields.shape[0]):
        _frame_line_sums(fields, first, second, intensity, weights, wrow, scale, background, kind, renorm, tiny,
                         sums, n)


@serial
def ml_line_sums_serial(fields, first, second, intensity, weights, scale, background, kind, renorm, tiny, sums):
    """:func:`ml_line_sums` on the calling thread (a frame thread's chunk)."""
    wrow = weight_rows(weights, fields.shape[0])
    for n in range(fields.shape[0]):
        _frame_line_sums(fields, first, second, intensity, weights, wrow, scale, background, kind, renorm, tiny,
                         sums, n)


@jit
def advance_fields(fields, first, second, step):
    """fields += step first + step^2 second: the detector-plane pods after a line-search step, by linearity."""
    s1 = fields.dtype.type(step)
    s2 = fields.dtype.type(step * step)
    h, w = fields.shape[2], fields.shape[3]
    for n in numba.prange(fields.shape[0]):
        for k in range(fields.shape[1]):
            for i in range(h):
                f, g, q = fields[n, k, i], first[n, k, i], second[n, k, i]
                for j in range(w):
                    f[j] += s1 * g[j] + s2 * q[j]
