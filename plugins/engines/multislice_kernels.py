"""e3PIE's sequential epoch fused in numba (FFTs inside the loop: difframe.ptycho.frame_fft).

One call visits the frames of one scan in the given order.  For each frame
the probe modes are the waves incident on slice 1; each slice multiplies the
wave reaching it and the slab transfer function (angular spectrum over the
slice spacing) carries the product to the next slice; the last exit wave is
propagated to the detector (far field: unitary FFT; near field: the scan's
transfer function) and projected onto the measured moduli with the model
intensity scale x sum |Psi|^2 + background
(:func:`difframe.ptycho.projection.project_frame`).  The change of the exit wave then
goes back slice by slice, each slice and the wave incident on it updated from
their old values with ePIE's steps:

    O_s   += alpha sum_p conj(psi_ps) dchi_ps / max sum_p |psi_ps|^2
    dpsi_ps = beta conj(O_s) dchi_ps / max |O_s|^2,   dchi_p,s-1 = D_-dz[dpsi_ps],   P += dpsi_p1

No Python runs between frames.  The numpy statement of the same maths is in
tests/plugins/engines/test_multislice.py.
"""

from __future__ import annotations

import numba
import numpy as np

from difframe.ptycho.frame_fft import convolve, from_detector, to_detector
from difframe.ptycho.kernels import FAST, weight_rows
from difframe.ptycho.projection import project_frame


@numba.njit(cache=True, fastmath=FAST, nogil=True, error_model="numpy")
def multislice_epoch(probe, obj, corners, order, intensity, weights, scale, background, transfer, slab,
                     alpha, beta, update_probe, tiny, err, dev, change, bg_sums, scale_sums, plans=None):
    """One sequential pass over the frames ``order`` of a scan; slices ``obj`` (S, Ho, Wo) and probe
    (P, H, W) are updated in place.

    Per frame n (the model before its update): err[n] = mean squared
    amplitude error over valid pixels, dev[n] = Poisson deviance (sum over
    valid pixels), change[n] = sum |dchi|^2 of the last exit wave; with
    ``bg_sums`` (2, H, W) the Poisson gradient and curvature with respect to
    the background are added, with ``scale_sums`` (N, 2) those with respect to
    the frame's scale (empty arrays: not fitted).  ``transfer`` (H, W) is the
    scan's near-field transfer function, empty in far field; ``slab`` (H, W)
    the transfer function from one slice to the next; ``plans`` FFTW's for the (P, H, W) stack
    (:func:`difframe.ptycho.frame_fft.plans`; None: rocket-fft).
    """
    n_probe, h, w = probe.shape[0], probe.shape[1], probe.shape[2]
    n_slices = obj.shape[0]
    real = intensity.dtype.type
    zero, rtiny = real(0), real(tiny)
    a_o, a_p = real(alpha), real(beta)
    wrow = weight_rows(weights, intensity.shape[0])
    transfer_back, slab_back = np.conj(transfer), np.conj(slab)
    waves = np.empty((n_slices, n_probe, h, w), probe.dtype)  # the wave incident on each slice
    chi = np.empty((n_probe, h, w), probe.dtype)
    old = np.empty((h, w), obj.dtype)
    model = np.empty(w, intensity.dtype)
    d1 = np.empty(w, intensity.dtype)
    d2 = np.empty(w, intensity.dtype)
    for t in range(order.shape[0]):
        n = order[t]
        y, x = corners[n, 0], corners[n, 1]
        waves[0] = probe
        for s in range(n_slices):
            for p in range(n_probe):
                for i in range(h):
                    wa, ob, ch = waves[s, p, i], obj[s, y + i, x:x + w], chi[p, i]
                    for j in range(w):
                        ch[j] = wa[j] * ob[j]
            if s + 1 < n_slices:
                waves[s + 1] = convolve(chi, slab, plans)
        field = to_detector(chi, transfer, plans)
        err[n], dev[n] = project_frame(field, n, intensity, weights, wrow, scale, background, tiny, bg_sums,
                                       scale_sums, model, d1, d2)
        dchi = from_detector(field, transfer_back, plans)
        c_sum = 0.0
        for p in range(n_probe):
            for i in range(h):
                d = dchi[p, i]
                c_row = zero
                for j in range(w):
                    c_row += d[j].real * d[j].real + d[j].imag * d[j].imag
                c_sum += c_row
        change[n] = c_sum
        for s in range(n_slices - 1, -1, -1):
            w_max, o_max = zero, zero
            for i in range(h):
                ob = obj[s, y + i, x:x + w]
                for j in range(w):
                    total = zero
                    for p in range(n_probe):
                        wa = waves[s, p, i, j]
                        total += wa.real * wa.real + wa.imag * wa.imag
                    w_max = max(w_max, total)
                    o_max = max(o_max, ob[j].real * ob[j].real + ob[j].imag * ob[j].imag)
            step_o = a_o / max(w_max, rtiny)
            step_p = a_p / max(o_max, rtiny)
            for i in range(h):
                ob, ol = obj[s, y + i, x:x + w], old[i]
                for j in range(w):
                    ol[j] = ob[j]
                for p in range(n_probe):
                    wa, d = waves[s, p, i], dchi[p, i]
                    for j in range(w):
                        ob[j] += step_o * (np.conj(wa[j]) * d[j])
            if s == 0 and not update_probe:
                break
            for p in range(n_probe):  # dchi becomes the change of the incident wave
                for i in range(h):
                    ol, d = old[i], dchi[p, i]
                    for j in range(w):
                        d[j] = step_p * (np.conj(ol[j]) * d[j])
            if s > 0:
                dchi = convolve(dchi, slab_back, plans)
            else:
                probe += dchi
