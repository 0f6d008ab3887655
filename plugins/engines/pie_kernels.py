"""The PIE family's sequential epoch, fused in numba (FFTs inside the loop: difframe.ptycho.frame_fft).

One call visits the frames of one scan in the given order and, for each,
forms the pods psi = P_p O_o of its window, propagates them (far field:
unitary FFT; near field: the scan's transfer function), projects the
detector-plane waves onto the measured moduli with the model intensity
scale x sum |Psi|^2 + background (the core's
:func:`difframe.ptycho.projection.project_frame`), propagates the change back and updates
object and probe at once from their old values:

    O_o += alpha  sum_p conj(P_p) dpsi_po / D_O,   D_O = (1 - r_O) |P|^2 + r_O max |P|^2
    P_p += beta   sum_o conj(O_o) dpsi_po / D_P,   D_P = (1 - r_P) |O|^2 + r_P max |O|^2

|P|^2 = sum_p |P_p|^2 and |O|^2 = sum_o |O_o|^2 over the window; r = 1 is
ePIE (Maiden & Rodenburg 2009), r < 1 rPIE's regularised denominator
(Maiden, Johnson & Li 2017).  No Python runs between frames.  The numpy
statement of the same maths is in tests/plugins/engines/test_pie.py.
"""

from __future__ import annotations

import numba
import numpy as np

from difframe.ptycho.frame_fft import from_detector, to_detector
from difframe.ptycho.kernels import FAST, weight_rows
from difframe.ptycho.projection import project_frame


@numba.njit(cache=True, fastmath=FAST, nogil=True, error_model="numpy")
def pie_epoch(probe, obj, corners, order, intensity, weights, scale, background, transfer,
              alpha, beta, reg_object, reg_probe, update_object, update_probe, tiny,
              err, dev, change, bg_sums, scale_sums, plans=None):
    """One sequential pass over the frames ``order`` of a scan; object and probe are updated in place.

    Per frame n (the model before its update): err[n] = mean squared
    amplitude error over valid pixels, dev[n] = Poisson deviance (sum over
    valid pixels), change[n] = sum |dpsi|^2; with ``bg_sums`` (2, H, W) the
    Poisson gradient and curvature with respect to the background are added,
    with ``scale_sums`` (N, 2) those with respect to the frame's scale (empty
    arrays: not fitted).  ``transfer`` (H, W) is the near-field transfer
    function, empty in far field; ``plans`` FFTW's for the (pods, H, W) stack
    (:func:`difframe.ptycho.frame_fft.plans`; None: rocket-fft).
    """
    n_probe, h, w = probe.shape[0], probe.shape[1], probe.shape[2]
    n_obj = obj.shape[0]
    pods = n_probe * n_obj
    real = intensity.dtype.type
    one, zero, rtiny = real(1), real(0), real(tiny)
    a_o, a_p = real(alpha), real(beta)
    r_o, r_p = real(reg_object), real(reg_probe)
    wrow = weight_rows(weights, intensity.shape[0])
    transfer_back = np.conj(transfer)  # once per epoch, not per frame
    psi = np.empty((pods, h, w), probe.dtype)
    p2 = np.empty((h, w), intensity.dtype)
    o2 = np.empty((h, w), intensity.dtype)
    model = np.empty(w, intensity.dtype)
    d1 = np.empty(w, intensity.dtype)
    d2 = np.empty(w, intensity.dtype)
    step_o = np.empty(w, intensity.dtype)
    step_p = np.empty(w, intensity.dtype)
    old = np.empty((n_obj, w), obj.dtype)
    # every inner loop runs over one contiguous row, so it vectorises; modes are the outer loops
    for t in range(order.shape[0]):
        n = order[t]
        y, x = corners[n, 0], corners[n, 1]
        p_max, o_max = zero, zero
        for i in range(h):
            sp, so = p2[i], o2[i]
            sp[:] = zero
            so[:] = zero
            for p in range(n_probe):
                pr = probe[p, i]
                for j in range(w):
                    sp[j] += pr[j].real * pr[j].real + pr[j].imag * pr[j].imag
            for o in range(n_obj):
                ob = obj[o, y + i, x:x + w]
                for j in range(w):
                    so[j] += ob[j].real * ob[j].real + ob[j].imag * ob[j].imag
                for p in range(n_probe):
                    pr, ps = probe[p, i], psi[p * n_obj + o, i]
                    for j in range(w):
                        ps[j] = pr[j] * ob[j]
            for j in range(w):
                p_max = max(p_max, sp[j])
                o_max = max(o_max, so[j])
        field = to_detector(psi, transfer, plans)
        err[n], dev[n] = project_frame(field, n, intensity, weights, wrow, scale, background, tiny, bg_sums,
                                       scale_sums, model, d1, d2)
        dpsi = from_detector(field, transfer_back, plans)
        c_sum = 0.0
        for i in range(h):
            sp, so = p2[i], o2[i]
            for j in range(w):
                step_o[j] = a_o / ((one - r_o) * sp[j] + r_o * p_max + rtiny)
                step_p[j] = a_p / ((one - r_p) * so[j] + r_p * o_max + rtiny)
            for o in range(n_obj):
                old[o] = obj[o, y + i, x:x + w]
            for k in range(pods):
                d = dpsi[k, i]
                c_row = zero
                for j in range(w):
                    c_row += d[j].real * d[j].real + d[j].imag * d[j].imag
                c_sum += c_row
            if update_object:
                for o in range(n_obj):
                    ob = obj[o, y + i, x:x + w]
                    for p in range(n_probe):
                        pr, d = probe[p, i], dpsi[p * n_obj + o, i]
                        for j in range(w):
                            ob[j] += step_o[j] * (np.conj(pr[j]) * d[j])
            if update_probe:
                for p in range(n_probe):
                    pr = probe[p, i]
                    for o in range(n_obj):
                        ob, d = old[o], dpsi[p * n_obj + o, i]
                        for j in range(w):
                            pr[j] += step_p[j] * (np.conj(ob[j]) * d[j])
        change[n] = c_sum
