"""Relaxed averaged alternating reflections (``RAAR``, Luke 2005) on DM's machinery.

RAAR mixes the difference map with the overlap projection:

    psi <- beta/2 (R_F R_O + I) psi + (1 - beta) P_O psi
         = psi + beta [P_F(2 PO - psi) - PO] + (1 - beta) (PO - psi)

with P_O psi = PO the probe x object the overlap update makes of the exit
waves and R = 2P - I.  beta = 1 is the difference map; smaller beta pulls the
exit waves toward what one probe and object explain, which damps DM's
wandering on noisy data.  Everything else is DM's: exit waves held at the
sample and at the detector, one forward transform of the current PO per
iteration (relaxed wave and data fit), the Fourier relaxation bound, the
model's background and frame scales, the overlap loop with inertia terms and
the probe support: :class:`difframe.ptycho.projection_engine.ProjectionEngine`.
One default differs: the Fourier relaxation bound is off (fourier_relax_factor
0).  Any bound makes every estimate whose frames are all within it a fixed
point; RAAR, damped by beta < 1, settles at the first one it reaches, short
of the data wherever the counts put the bound above the noise.  DM needs the
bound against wandering on noise, which beta < 1 already stops
(docs/ptycho-engines.md, RAAR, has the measurements).
"""

from __future__ import annotations

import difframe
from difframe.ptycho.projection_engine import ProjectionEngine
from difframe.types import EngineSpec, Parameter

PARAMETERS = {
    "beta": Parameter(
        type="float", default=0.8, lowlim=0.0, uplim=1.0, help="RAAR relaxation parameter",
        doc="psi <- beta/2 (R_F R_O + I) psi + (1 - beta) P_O psi. 1 is the difference map; lower values "
            "pull the exit waves toward the overlap projection every iteration: steadier on noisy data (where DM "
            "wanders off the truth), but each iteration takes a smaller step toward the data, so convergence at "
            "high counts is slower. 0.8 balances the two (benchmarks/raar_sweep.py; docs/ptycho-engines.md, "
            "RAAR): on the moonflower-like scan (161 frames of 128 x 128, 1e8 photons) 100 iterations reach a "
            "sub-pixel object error of 0.019 against ptypy's 0.75's 0.024 (DM 0.022), while on the tests' scan "
            "at 1e5 photons it stays at 0.035 (0.75: 0.034, 0.85: 0.044, DM climbs from 0.09 to 0.40). Typical "
            "0.7 to 0.9."),
    "probe_update_start": Parameter(type="int", default=2, lowlim=0,
                                    help="Number of iterations before probe update starts",
                                    doc="Counted from the first iteration of this engine."),
    "update_object_first": Parameter(type="bool", default=True,
                                     help="True: object, then probe in each overlap loop (as DM)"),
    "overlap_converge_factor": Parameter(
        type="float", default=0.05, lowlim=0.0, help="Threshold for interruption of the inner overlap loop",
        doc="The overlap loop ends as soon as the relative change of the probe is below this value."),
    "overlap_max_iterations": Parameter(type="int", default=10, lowlim=0,
                                        help="Maximum of iterations for the overlap constraint inner loop"),
    "probe_inertia": Parameter(type="float", default=0.001, lowlim=0.0,
                               help="Weight of the current probe estimate in the update",
                               doc="Relative to the number of frames x the mean object power, as DM."),
    "object_inertia": Parameter(type="float", default=0.1, lowlim=0.0,
                                help="Weight of the current object in the update",
                                doc="Relative to the mean measured power per pixel, as DM."),
    "fourier_relax_factor": Parameter(
        type="float", default=0.0, lowlim=0.0,
        help="If rms error of model vs diffraction data is smaller than this fraction, Fourier constraint is met",
        doc="As DM's: a frame whose mean squared amplitude error is below fourier_relax_factor^2 x its mean "
            "intensity is left alone, others are moved toward the data just far enough to reach that bound. "
            "RAAR's default is 0, the full projection (DM's is 0.01): the bound is there to stop DM wandering "
            "on noise, which beta < 1 already does, and RAAR, which converges, settles where every frame first "
            "comes within the bound, short of the data wherever the counts put the bound above the noise (the "
            "tests' scan at 1e8 photons per frame, 40 iterations: object error 0.026 with 0.01, 0.008 with 0; "
            "equal at 1e5)."),
    "floating_intensities": Parameter(
        type="bool", default=False, help="Fit a per-frame intensity scale (incident flux changes)",
        doc="As DM's: each frame's model intensity has its own factor, one Newton step of the Poisson "
            "likelihood per iteration, kept at mean 1."),
    "obj_smooth_std": Parameter(
        type=("int", "NoneType"), default=20, lowlim=0,
        help="Gaussian smoothing (pixel) of the current object prior to update",
        doc="The object inertia term uses the object blurred by this many pixels (None or 0: not blurred)."),
}

class RAAR(ProjectionEngine):
    """RAAR: the reflected wave 2 F(PO) - Phi projected onto the data, a share ``beta`` of the change taken."""

    name = "RAAR"

    def relaxation(self) -> tuple[float, float]:
        return 1.0, float(self.p.beta)


def factory(params, context):
    """Engine for ``engines.<label>`` with ``name = "RAAR"``; ``context`` is the PtychoModel."""
    return RAAR(params, context)


@difframe.hookimpl
def difframe_engines():
    yield EngineSpec(name="RAAR", summary="relaxed averaged alternating reflections (Luke 2005) on DM's machinery",
                     factory=factory, parameters=PARAMETERS)
