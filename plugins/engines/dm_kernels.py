"""The difference-map engine's kernels: the Fourier projection it shares with RAAR, in the core.

DM keeps each exit wave twice: at the sample (psi, for the overlap update)
and at the detector (Phi = F psi).  With the detector-plane waves of the
current probe x object, F(PO), one forward transform per iteration gives both
the relaxed wave DM projects, (1 + alpha) F(PO) - alpha Phi (linear), and the
honest data fit of the current PO; one inverse transform of the change
P_F(relaxed) - F(PO) updates psi.  The fused loops are
:func:`difframe.ptycho.projection.fourier_projection` (DM: ``mix`` = 1) and
``add_exit_change``; numpy references are in
tests/plugins/engines/test_engine_kernels.py.
"""

from __future__ import annotations

from difframe.ptycho.projection import add_exit_change, fourier_projection

__all__ = ["add_exit_change", "dm_fourier"]


def dm_fourier(fpo, phi, intensity, weights, scale, background, alpha, count, bound, tiny,
               err, dev, bg_sums, scale_sums):
    """DM's Fourier step: :func:`difframe.ptycho.projection.fourier_projection` with ``mix`` = 1, i.e.
    ``fpo`` becomes P_F((1 + alpha) F(PO) - alpha Phi) - F(PO), also added to ``phi``."""
    fourier_projection(fpo, phi, intensity, weights, scale, background, alpha, 1.0, count, bound, tiny,
                       err, dev, bg_sums, scale_sums)
