"""Projection engines' shared machinery: the Fourier projection and the overlap update (numba + numpy).

DM and RAAR (plugins/engines/dm.py, raar.py) are both built from two
projections of the exit waves psi: P_F onto the measured moduli and P_O onto
waves that one probe and one object explain.  With DM's detector-plane copy
Phi = F psi and F(PO) of the current probe x object, one kernel does both
engines' Fourier step:

    psi <- psi + mix [P_F((1 + alpha) PO - alpha psi) - PO] + (1 - mix) (PO - psi)

``mix`` = 1 is the difference map, ``alpha`` = 1 and ``mix`` = beta is RAAR
(Luke 2005): beta/2 (R_F R_O + I) psi + (1 - beta) P_O psi, with R = 2P - I.
The change is linear, so it is formed at the detector, added to Phi and
transformed back once.  :func:`object_update` and :func:`probe_update` are
the overlap projection (with inertia terms) both engines iterate.

The detector-plane rows every engine's data step is made of live here too:
:func:`row_fit` (a row's Poisson deviance and its gradient and curvature with
respect to the background and the frame scale) and :func:`row_modulus` (the
factor that takes each amplitude onto the data, or toward it by ``renorm``),
which the projection engines' :func:`fourier_projection` and the stochastic
engines' :func:`project_frame` (PIE family, OPR, e3PIE: one frame's waves
replaced by their change under the modulus constraint) inline.  numpy
references: tests/plugins/engines/test_engine_kernels.py, test_raar.py,
tests/core/ptycho/test_projection_rows.py and each stochastic engine's test.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from difframe.ptycho import model as pm
from difframe.ptycho.kernels import (FAST, add_row, row_deviance, row_intensity, row_likelihood, serial,
                                     weight_rows)

POISSON = 1


@numba.njit(inline="always", fastmath=FAST)
def row_fit(s, model, bg, meas, wt, tiny, bg_sums, i, fit_scale, d1, d2):
    """Row ``i`` of a frame's data fit at model intensity s x model + bg (valid pixels: weight > 0).

    Returns (Poisson deviance of the row, d/ds and d2/ds2 of the Poisson
    likelihood, the last two 0 unless ``fit_scale``); with ``bg_sums`` (2, H, W)
    not empty the likelihood's gradient and curvature with respect to the
    background are added to its row ``i``.  ``d1``, ``d2``: scratch rows.
    """
    deviance = row_deviance(s, model, bg, meas, wt, tiny)
    g_scale, h_scale = 0.0, 0.0
    if bg_sums.shape[0] > 0 or fit_scale:
        real = model.dtype.type
        row_likelihood(POISSON, s, model, bg, meas, wt, real(1), tiny, d1, d2)
        if bg_sums.shape[0] > 0:
            add_row(bg_sums[0, i], d1)
            add_row(bg_sums[1, i], d2)
        if fit_scale:
            gs, hs = real(0), real(0)
            for j in range(model.shape[0]):
                gs += d1[j] * model[j]
                hs += d2[j] * model[j] * model[j]
            g_scale, h_scale = float(gs), float(hs)
    return deviance, g_scale, h_scale


@numba.njit(inline="always", fastmath=FAST)
def row_modulus(s, model, bg, meas, wt, renorm, tiny, factor):
    """factor[j] = the amplitude factor that moves row pixel j of model intensity s x model + bg onto the
    measured amplitude (``renorm`` 0), or that fraction of the way back toward the model (renorm in (0, 1]);
    1 where the weight is 0.  Returns (sum of squared amplitude errors, number of valid pixels)."""
    real = model.dtype.type
    one, zero, renorm, tiny = real(1), real(0), real(renorm), real(tiny)
    e_row, valid = zero, zero
    for j in range(model.shape[0]):
        amp, am = np.sqrt(max(meas[j], zero)), np.sqrt(max(s * model[j] + bg[j], tiny))
        ok = wt[j] > zero
        e_row += real(ok) * (am - amp) * (am - amp)
        valid += real(ok)
        factor[j] = (amp + (am - amp) * renorm) / am if ok else one
    return e_row, valid


@numba.njit(inline="always", fastmath=FAST)
def project_frame(field, n, intensity, weights, wrow, scale, background, tiny, bg_sums, scale_sums, model, d1,
                  d2):
    """The stochastic engines' modulus constraint on frame ``n``'s detector-plane waves ``field`` (K, H, W).

    In place: field <- P_F(field) - field, each amplitude taken onto the
    measured one with the model intensity scale[n] x sum_k |field_k|^2 +
    background (pixels with weight 0 keep the model: change 0).  Returns
    (mean squared amplitude error over valid pixels, Poisson deviance summed
    over them), both of the model before the change; the background's and
    (with ``scale_sums`` (N, 2) not empty) the frame scale's likelihood
    gradient and curvature are accumulated as :func:`row_fit` says.
    ``model``, ``d1``, ``d2``: scratch rows of width W.
    """
    h = field.shape[1]
    real = intensity.dtype.type
    one = real(1)
    s = real(scale[n])
    fit_scale = scale_sums.shape[0] > 0
    e_sum, d_sum, g_scale, h_scale, valid = 0.0, 0.0, 0.0, 0.0, 0.0
    fields = field.reshape((1, field.shape[0], h, field.shape[2]))
    for i in range(h):
        row_intensity(fields, 0, i, model)
        meas, wt, bg = intensity[n, i], weights[wrow[n], i], background[i]
        dv, gs, hs = row_fit(s, model, bg, meas, wt, tiny, bg_sums, i, fit_scale, d1, d2)
        d_sum += dv
        g_scale += gs
        h_scale += hs
        e_row, v_row = row_modulus(s, model, bg, meas, wt, 0.0, tiny, model)
        e_sum += e_row
        valid += v_row
        for k in range(field.shape[0]):
            f = field[k, i]
            for j in range(f.shape[0]):
                f[j] *= model[j] - one
    if fit_scale:
        scale_sums[n, 0] = g_scale
        scale_sums[n, 1] = h_scale
    return e_sum / max(valid, 1.0), d_sum


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


@numba.njit(inline="always", fastmath=FAST)
def _row_amplitudes(s, relaxed, bg, meas, wt, tiny, amp, am):
    """amp[j], am[j] = measured and model amplitudes of a row at model intensity s x relaxed + bg (valid pixels:
    weight > 0; others get 1 and 1, so that any factor (amp + (am - amp) r) / am leaves them exactly alone);
    returns the sum of squared amplitude errors."""
    real = relaxed.dtype.type
    zero, one, tiny = real(0), real(1), real(tiny)
    e_row = zero
    for j in range(relaxed.shape[0]):
        ok = wt[j] > zero
        data, model = np.sqrt(max(meas[j], zero)), np.sqrt(max(s * relaxed[j] + bg[j], tiny))
        e_row += real(ok) * (model - data) * (model - data)
        amp[j] = data if ok else one
        am[j] = model if ok else one
    return e_row


@serial
def fourier_projection(fpo, phi, intensity, weights, scale, background, alpha, mix, gain, count, bound, tiny,
                       err, dev, bg_sums, scale_sums):
    """The projection engines' Fourier step on detector-plane waves, frame by frame.

    In: ``fpo`` = F(PO) of the current probe and object divided by ``gain``
    (the propagator's transform without its factor, which is applied here
    rather than in a pass of its own), ``phi`` = F psi.  The
    relaxed wave r = (1 + alpha) F(PO) - alpha Phi is projected onto the data
    with the model I = scale x |r|^2 + background: each amplitude is multiplied
    by sqrt(I_target / I_model), I_target moved from the model toward the
    measured counts just far enough to bring the frame's mean squared amplitude
    error within ``bound[n]`` (all the way when bound is 0); pixels with
    weight 0 keep the model.  Out: ``fpo`` holds the change
    mix (P_F(r) - F(PO)) + (1 - mix) (F(PO) - Phi), which is also added to
    ``phi``; err[n] = the relaxed wave's mean squared amplitude error; dev[n]
    = the Poisson deviance of the current PO model (sum over valid pixels).
    With ``bg_sums`` (1, 2, H, W) the Poisson gradient and curvature of the
    deviance with respect to the background are added to it, with
    ``scale_sums`` (N, 2) those with respect to each frame's scale (empty
    arrays: not fitted).  One thread: the engines run it on cache-sized chunks,
    several at once (:mod:`difframe.frame_threads`).  The first pass
    over a frame keeps each pixel's measured and model amplitudes for the
    second (a frame's worth, in cache), which then needs one division a pixel.
    """
    h, w = fpo.shape[2], fpo.shape[3]
    real = intensity.dtype.type
    g, g2 = real(gain), real(gain * gain)
    a, a1g = real(alpha), real((1 + alpha) * gain)
    m1, m0 = real(mix), real(1 - mix)
    wrow = weight_rows(weights, fpo.shape[0])
    fit_scale = scale_sums.shape[0] > 0
    sums = bg_sums[0] if bg_sums.shape[0] > 0 else np.empty((0, 0, 0), bg_sums.dtype)
    model = np.empty(w, intensity.dtype)
    relaxed = np.empty(w, intensity.dtype)
    d1 = np.empty(w, intensity.dtype)
    d2 = np.empty(w, intensity.dtype)
    amp = np.empty((h, w), intensity.dtype)
    am = np.empty((h, w), intensity.dtype)
    for n in range(fpo.shape[0]):
        s = real(scale[n])
        e_sum = 0.0
        d_sum = 0.0
        g_scale = 0.0
        h_scale = 0.0
        for i in range(h):
            row_intensity(fpo, n, i, model)
            for j in range(w):
                model[j] *= g2
            _row_relaxed_intensity(fpo, phi, n, i, a1g, a, relaxed)
            meas, wt, bg = intensity[n, i], weights[wrow[n], i], background[i]
            e_sum += _row_amplitudes(s, relaxed, bg, meas, wt, tiny, amp[i], am[i])
            dv, gs, hs = row_fit(s, model, bg, meas, wt, tiny, sums, i, fit_scale, d1, d2)
            d_sum += dv
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
            data, mod, factor = amp[i], am[i], relaxed
            for j in range(w):
                factor[j] = (data[j] + (mod[j] - data[j]) * renorm) / mod[j]
            for k in range(fpo.shape[1]):
                f, q = fpo[n, k, i], phi[n, k, i]
                for j in range(w):
                    po = g * f[j]
                    change = m1 * (factor[j] * (a1g * f[j] - a * q[j]) - po) + m0 * (po - q[j])
                    q[j] += change
                    f[j] = change


@serial
def add_exit_change(back, exits, gain, change):
    """exits += gain x back (the exit-wave change at the sample, ``back`` from the propagator's transform
    without its factor ``gain``); change[n] = |gain x back|^2 of frame n (one thread)."""
    g = back.real.dtype.type(gain)
    for n in range(back.shape[0]):
        total = 0.0
        for k in range(back.shape[1]):
            for i in range(back.shape[2]):
                bk, ex = back[n, k, i], exits[n, k, i]
                row = bk.real.dtype.type(0)
                for j in range(back.shape[3]):
                    ex[j] += g * bk[j]
                    row += bk[j].real * bk[j].real + bk[j].imag * bk[j].imag
                total += row
        change[n] = total * gain * gain


# -- the overlap projection ----------------------------------------------------------------------


def object_update(model: pm.PtychoModel, exits: dict, inertia: float, smooth_std, clip) -> None:
    """Every object from the exit waves (label -> (N, pods, H, W)) at the current probes, with an inertia
    term ``inertia`` x (the object, blurred by ``smooth_std`` pixels when given) counted once over the ranks."""
    from difframe.ptycho import kernels

    m = model
    sums = {}
    for oid, st in m.objects.items():
        if not m.ranks.is_root:
            sums[oid] = (np.zeros_like(st.data), np.zeros(st.data.shape[-2:], m.rdtype))
            continue
        base = pm.gaussian_smooth(st.data, smooth_std, inertia) if smooth_std else inertia * st.data
        sums[oid] = (base, np.full(st.data.shape[-2:], inertia, m.rdtype))
    for scan in m.scans:
        probe = m.probes[scan.probe_id].data
        pconj = np.conj(probe) * scan.object_power
        pden = pm.intensity(probe[None])[0] * scan.object_power
        kernels.add_object_update(*sums[scan.object_id], pconj, pden, exits[scan.label], scan.corners)
    for oid, (num, den) in sums.items():
        m.ranks.sum_arrays(num, den)
        obj = m.objects[oid].data
        kernels.divide_by_map(num, den, obj)
        pm.clip_amplitude(obj, clip)


def _mean_power(a: np.ndarray) -> float:
    """Mean |a|^2, in one pass without temporaries (a sixth of ``np.mean(np.abs(a) ** 2)``'s time)."""
    flat = a.reshape(-1)
    return float(np.vdot(flat, flat).real) / max(flat.size, 1)


def probe_update(model: pm.PtychoModel, exits: dict, inertia: float, supports: dict) -> float:
    """Every probe from the exit waves at the current objects, with an inertia term ``inertia`` x frames x
    the mean object power; the probe is cut to ``supports[id]`` (None: no support).  Returns the largest
    relative probe change."""
    from difframe.ptycho import kernels

    m = model
    frames = {pid: 0 for pid in m.probes}
    for scan in m.scans:
        frames[scan.probe_id] += len(scan.positions)  # all ranks' frames
    sums = {}
    for pid, st in m.probes.items():
        if not m.ranks.is_root:
            sums[pid] = (np.zeros_like(st.data), np.zeros(st.data.shape[-2:], m.rdtype))
            continue
        obj_power = np.mean([_mean_power(m.objects[s.object_id].data) for s in m.scans if s.probe_id == pid])
        weight = float(inertia * frames[pid] * obj_power)  # a Python float keeps the sums in the probe's precision
        sums[pid] = (weight * st.data, np.full(st.data.shape[-2:], weight, m.rdtype))
    for scan in m.scans:
        kernels.add_probe_update(*sums[scan.probe_id], m.objects[scan.object_id].data, exits[scan.label],
                                 scan.corners, weight=scan.probe_power)
    change = 0.0
    for pid, (num, den) in sums.items():
        m.ranks.sum_arrays(num, den)
        num /= den
        if supports[pid] is not None:
            num *= supports[pid]
        old = m.probes[pid].data
        change = max(change, float(np.linalg.norm(num - old) / max(np.linalg.norm(num), 1e-30)))
        old[...] = num
    return change

