"""OPR's sequential epoch, fused in numba: an rPIE pass in which each frame's probe is shared + its own deviation.

One call visits the frames of one scan in the given order; frame n is lit
by P_n = probe + deviations[n].  Per frame: psi = P_n O_n is
propagated (far field: unitary FFT; near field: the transfer function),
projected onto the measured moduli with the model intensity
scale x |Psi|^2 + background (:func:`difframe.ptycho.projection.project_frame`),
propagated back, and object and probe are updated at once from their old
values with rPIE's denominators (r = 1: ePIE):

    O += alpha conj(P_n) dpsi / ((1 - r_O) |P_n|^2 + r_O max |P_n|^2)
    dP = beta  conj(O)   dpsi / ((1 - r_P) |O|^2   + r_P max |O|^2)

and dP goes to the shared probe (as in rPIE, so every later frame profits)
and, times ``deviation_step`` (0: not at all), to the frame's own deviation
(which the engine then keeps low-rank).  One probe mode and one object mode
(OPR's relaxed probe is one coherent mode per frame).  The numpy statement of the
same maths is in tests/plugins/engines/test_opr.py.
"""

from __future__ import annotations

import numba
import numpy as np

from difframe.ptycho.frame_fft import from_detector, to_detector
from difframe.ptycho.kernels import FAST, weight_rows
from difframe.ptycho.projection import project_frame


@numba.njit(cache=True, fastmath=FAST, nogil=True, error_model="numpy")
def opr_epoch(probe, deviations, deviation_step, obj, corners, order, intensity, weights, scale,
              background, transfer, alpha, beta, reg_object, reg_probe, update_probe, tiny, err, dev, change,
              bg_sums, scale_sums, plans=None):
    """One sequential pass over the frames ``order``; ``obj`` (Ho, Wo), ``probe`` (H, W) and ``deviations``
    (M, H, W) change in place.

    Per frame n: err[n] = mean squared amplitude error over valid pixels,
    dev[n] = Poisson deviance (sum over valid pixels), change[n] = sum
    |dpsi|^2, all of the model before its update; with ``bg_sums`` (2, H, W)
    the Poisson gradient and curvature with respect to the background are
    added, with ``scale_sums`` (N, 2) those with respect to the frame's scale
    (empty arrays: not fitted).  ``transfer`` is empty in far field; ``plans`` FFTW's for one
    (H, W) frame (:func:`difframe.ptycho.frame_fft.plans`; None: rocket-fft).
    """
    h, w = probe.shape[0], probe.shape[1]
    real = intensity.dtype.type
    one, zero, rtiny = real(1), real(0), real(tiny)
    a_o, a_p = real(alpha), real(beta)
    r_o, r_p = real(reg_object), real(reg_probe)
    g = real(deviation_step)
    relax = deviation_step > 0
    wrow = weight_rows(weights, intensity.shape[0])
    transfer_back = np.conj(transfer)  # once per epoch, not per frame
    lit = np.empty((h, w), probe.dtype)
    psi = np.empty((h, w), probe.dtype)
    model = np.empty(w, intensity.dtype)
    d1 = np.empty(w, intensity.dtype)
    d2 = np.empty(w, intensity.dtype)
    step_o = np.empty(w, intensity.dtype)
    step_p = np.empty(w, intensity.dtype)
    for t in range(order.shape[0]):
        n = order[t]
        y, x = corners[n, 0], corners[n, 1]
        own = deviations[n]
        p_max, o_max = zero, zero
        for i in range(h):
            pr, ob, ps, sh, dv = lit[i], obj[y + i, x:x + w], psi[i], probe[i], own[i]
            for j in range(w):
                pr[j] = sh[j] + dv[j]
                ps[j] = pr[j] * ob[j]
                p_max = max(p_max, pr[j].real * pr[j].real + pr[j].imag * pr[j].imag)
                o_max = max(o_max, ob[j].real * ob[j].real + ob[j].imag * ob[j].imag)
        field = to_detector(psi, transfer, plans)
        err[n], dev[n] = project_frame(field.reshape((1, h, w)), n, intensity, weights, wrow, scale, background,
                                       tiny, bg_sums, scale_sums, model, d1, d2)
        dpsi = from_detector(field, transfer_back, plans)
        c_sum = 0.0
        for i in range(h):
            pr, ob, d, sh, dv = lit[i], obj[y + i, x:x + w], dpsi[i], probe[i], own[i]
            c_row = zero
            for j in range(w):
                p2 = pr[j].real * pr[j].real + pr[j].imag * pr[j].imag
                o2 = ob[j].real * ob[j].real + ob[j].imag * ob[j].imag
                step_o[j] = a_o / ((one - r_o) * p2 + r_o * p_max + rtiny)
                step_p[j] = a_p / ((one - r_p) * o2 + r_p * o_max + rtiny)
                c_row += d[j].real * d[j].real + d[j].imag * d[j].imag
            c_sum += c_row
            if update_probe:
                for j in range(w):
                    dp = step_p[j] * (np.conj(ob[j]) * d[j])
                    sh[j] += dp
                    if relax:
                        dv[j] += g * dp
            for j in range(w):
                ob[j] += step_o[j] * (np.conj(pr[j]) * d[j])
        change[n] = c_sum
