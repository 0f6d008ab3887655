"""The difference-map engine's own fused kernels (numba); shared pieces are in :mod:`difframe.ptycho.kernels`.

DM keeps each exit wave twice: at the sample (psi, for the overlap update)
and at the detector (Phi = F psi).  With the detector-plane waves of the
current probe x object, F(PO), one forward transform per iteration gives both
the relaxed wave DM projects, (1 + alpha) F(PO) - alpha Phi (linear), and the
honest data fit of the current PO; one inverse transform of the change
P_F(relaxed) - F(PO) updates psi.  numpy references are in
tests/plugins/engines/test_engine_kernels.py.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from difframe.ptycho.kernels import add_row, jit, row_deviance, row_intensity, row_likelihood, weight_rows

POISSON = 1


@numba.njit(inline="always")
def _row_relaxed_intensity(fpo, phi, n, i, a1, a, out):
    """out[j] = sum over pods of |(1 + alpha) F(PO) - alpha Phi|^2 (a1 = 1 + alpha, a = alpha)."""
    for j in range(out.shape[0]):
        out[j] = 0
    for k in range(fpo.shape[1]):
        f, q = fpo[n, k, i], phi[n, k, i]
        for j in range(out.shape[0]):
            r = a1 * f[j] - a * q[j]
            out[j] += r.real * r.real + r.imag * r.imag


@jit
def dm_fourier(fpo, phi, intensity, weights, scale, background, alpha, count, bound, tiny,
               err, dev, bg_sums, scale_sums):
    """DM's Fourier step on detector-plane waves, frame by frame.

    In: ``fpo`` = F(PO) of the current probe and object, ``phi`` = F psi.  The
    relaxed wave r = (1 + alpha) F(PO) - alpha Phi is projected onto the data
    with the model I = scale x |r|^2 + background: each amplitude is multiplied
    by sqrt(I_target / I_model), I_target moved from the model toward the
    measured counts just far enough to bring the frame's mean squared amplitude
    error within ``bound[n]`` (all the way when bound is 0); pixels with
    weight 0 keep the model.  Out: ``fpo`` holds the change P_F(r) - F(PO),
    which is also added to ``phi``; err[n] = the relaxed wave's mean squared
    amplitude error; dev[n] = the Poisson deviance of the current PO model
    (sum over valid pixels).  With ``bg_sums`` (threads, 2, H, W) the Poisson
    gradient and curvature of the deviance with respect to the background are
    added per thread, with ``scale_sums`` (N, 2) those with respect to each
    frame's scale (empty arrays: not fitted).
    """
    h, w = fpo.shape[2], fpo.shape[3]
    real = intensity.dtype.type
    one, zero, eps = real(1), real(0), real(1e-10)
    a1, a = real(1 + alpha), real(alpha)
    wrow = weight_rows(weights, fpo.shape[0])
    fit_bg = bg_sums.shape[0] > 0
    fit_scale = scale_sums.shape[0] > 0
    for n in numba.prange(fpo.shape[0]):
        tid = numba.get_thread_id()
        s = real(scale[n])
        model = np.empty(w, intensity.dtype)
        relaxed = np.empty(w, intensity.dtype)
        d1 = np.empty(w, intensity.dtype)
        d2 = np.empty(w, intensity.dtype)
        e_sum = 0.0
        d_sum = 0.0
        g_scale = 0.0
        h_scale = 0.0
        for i in range(h):
            row_intensity(fpo, n, i, model)
            _row_relaxed_intensity(fpo, phi, n, i, a1, a, relaxed)
            meas, wt, bg = intensity[n, i], weights[wrow[n], i], background[i]
            e_row = zero
            for j in range(w):
                d = np.sqrt(s * relaxed[j] + bg[j]) - np.sqrt(meas[j])
                e_row += d * d if wt[j] > zero else zero
            e_sum += e_row
            d_sum += row_deviance(s, model, bg, meas, wt, tiny)
            if fit_bg or fit_scale:
                row_likelihood(POISSON, s, model, bg, meas, wt, one, tiny, d1, d2)
                if fit_bg:
                    add_row(bg_sums[tid, 0, i], d1)
                    add_row(bg_sums[tid, 1, i], d2)
                if fit_scale:
                    gs, hs = zero, zero
                    for j in range(w):
                        gs += d1[j] * model[j]
                        hs += d2[j] * model[j] * model[j]
                    g_scale += gs
                    h_scale += hs
        e_sum /= count[n]
        err[n] = e_sum
        dev[n] = d_sum
        if fit_scale:
            scale_sums[n, 0] = g_scale
            scale_sums[n, 1] = h_scale
        renorm = real(math.sqrt(bound[n] / e_sum) if e_sum > bound[n] else 1.0)
        for i in range(h):
            _row_relaxed_intensity(fpo, phi, n, i, a1, a, relaxed)
            meas, wt, bg = intensity[n, i], weights[wrow[n], i], background[i]
            for j in range(w):  # relaxed becomes the factor that takes each amplitude where it must go
                amp, am = np.sqrt(meas[j]), np.sqrt(s * relaxed[j] + bg[j])
                relaxed[j] = (amp + (am - amp) * renorm) / (am + eps) if wt[j] > zero else one
            for k in range(fpo.shape[1]):
                f, q = fpo[n, k, i], phi[n, k, i]
                for j in range(w):
                    change = relaxed[j] * (a1 * f[j] - a * q[j]) - f[j]
                    q[j] += change
                    f[j] = change


@jit
def add_exit_change(back, exits, change):
    """exits += back (the exit-wave change at the sample); change[n] = |back|^2 of frame n."""
    for n in numba.prange(back.shape[0]):
        total = 0.0
        for k in range(back.shape[1]):
            for i in range(back.shape[2]):
                bk, ex = back[n, k, i], exits[n, k, i]
                row = bk.real.dtype.type(0)
                for j in range(back.shape[3]):
                    ex[j] += bk[j]
                    row += bk[j].real * bk[j].real + bk[j].imag * bk[j].imag
                total += row
        change[n] = total
