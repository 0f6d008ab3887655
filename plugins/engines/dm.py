"""Difference map engine (``DM``, Thibault et al. 2009): projections between data and overlap constraints.

The machinery (exit waves at sample and detector, one forward transform of the
current probe x object per iteration for the relaxed wave and the data fit,
the overlap loop, background and frame scales) is the core's
:class:`difframe.ptycho.projection_engine.ProjectionEngine`, which RAAR shares;
DM relaxes with ``alpha``.
"""

from __future__ import annotations

import difframe
from difframe.ptycho.projection_engine import ProjectionEngine
from difframe.types import EngineSpec, Parameter

_GARBLED = "\n\nThe reference gives this {kind} node a limit (>0.0), which cannot apply; it is not enforced."

PARAMETERS = {
    "alpha": Parameter(type="int", default=1, lowlim=0, help="Difference map parameter",
                       doc="Relaxation of the data projection: the exit wave is projected from "
                           "(1 + alpha) P O - alpha psi. 1 is the classic difference map."),
    "probe_update_start": Parameter(type="int", default=2, lowlim=0,
                                    help="Number of iterations before probe update starts",
                                    doc="Counted from the first iteration of this engine."),
    "update_object_first": Parameter(
        type="bool", default=True, help="If False update object before probe",
        doc="The reference's one-line help inverts the name; difframe follows the name (and ptypy's code): "
            "True updates the object first in each overlap loop, False the probe first."
            + _GARBLED.format(kind="bool")),
    "overlap_converge_factor": Parameter(
        type="float", default=0.05, lowlim=0.0, help="Threshold for interruption of the inner overlap loop",
        doc="The inner overlap loop refines the probe and the object simultaneously. This loop is escaped as "
            "soon as the overall change in probe, relative to the first iteration, is less than this value."),
    "overlap_max_iterations": Parameter(type="int", default=10, lowlim=0,
                                        help="Maximum of iterations for the overlap constraint inner loop"),
    "probe_inertia": Parameter(type="float", default=0.001, lowlim=0.0,
                               help="Weight of the current probe estimate in the update"),
    "object_inertia": Parameter(type="float", default=0.1, lowlim=0.0,
                                help="Weight of the current object in the update"),
    "fourier_relax_factor": Parameter(
        type="float", default=0.01, lowlim=0.0,
        help="If rms error of model vs diffraction data is smaller than this fraction, Fourier constraint is met",
        doc="Set this value higher for noisy data\n\ndifframe: a frame whose mean squared amplitude error is "
            "below fourier_relax_factor^2 x its mean intensity is left alone (ptypy's bound is 0.25 x factor^2 x "
            "the brightest frame's mean); otherwise its amplitudes are moved toward the data just far enough "
            "to reach that bound. "
            "Any bound leaves DM's fixed point that far from the data: on noiseless simulations 0 is the most "
            "accurate, on Poisson data the default helps (benchmarks/ptycho_textbook.py measures both)."),
    "floating_intensities": Parameter(
        type="bool", default=False, help="Fit a per-frame intensity scale (incident flux changes)",
        doc="difframe adds this node to DM (ptypy has it for ML only): each frame's model intensity is "
            "multiplied by its own factor, fitted by a Newton step of the Poisson likelihood every iteration "
            "and kept at mean 1 over the scan; the factors are stored in content/frame_scale/<scan>."),
    "obj_smooth_std": Parameter(
        type=("int", "NoneType"), default=20, lowlim=0,
        help="Gaussian smoothing (pixel) of the current object prior to update",
        doc="If None, smoothing is deactivated. This smoothing can be used to reduce the amplitude of spurious "
            "pixels in the outer, least constrained areas of the object.\n\nThe doc gives None a meaning, so "
            "None is accepted besides the reference's int (0 switches the smoothing off too)."),
}


class DifferenceMap(ProjectionEngine):
    """DM: the relaxed wave (1 + alpha) F(PO) - alpha Phi projected onto the data, the whole change taken."""

    name = "DM"

    def relaxation(self) -> tuple[float, float]:
        return float(self.p.alpha), 1.0


def factory(params, context):
    """Engine for ``engines.<label>`` with ``name = "DM"``; ``context`` is the PtychoModel."""
    return DifferenceMap(params, context)


@difframe.hookimpl
def difframe_engines():
    yield EngineSpec(name="DM", summary="difference map (Thibault et al. 2009), vectorised over frames",
                     factory=factory, parameters=PARAMETERS)
