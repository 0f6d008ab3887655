"""Parameters of the model terms real experiments need, beyond the reference tree.

Measured frames hold more than the coherent diffraction of one probe on one
object: an incoherent background (air and sample scatter, fluorescence,
detector dark counts), a flux that changes from frame to frame, a beam that is
partially coherent (several probe modes) and motor positions that are a pixel
or two off.  The model carries a term for each (``ScanViews.background``,
``ScanViews.scale``, probe modes kept orthogonal, refined ``positions``), so
every engine, built-in or third party, fits the same model.  These nodes
switch them and set how they are fitted; docs/ptycho-real-data.md says how to
choose them.
"""

from difframe.types import Parameter as P

NODES = {
    "scan.background": P(
        type=("Param",), default=None,
        help="Incoherent background added to the modelled intensity",
        doc="The model intensity of frame n becomes scale_n |F(P O_n)|^2 + B, with B a non-negative (H, W) map "
            "of counts per frame, the same for all frames of the scan: scattering that does not interfere with "
            "the sample's (air, windows, the optics' halo), fluorescence and dark counts. Unmodelled, such counts "
            "are explained by the object, which flattens its contrast. Engines fit B with the probe and object "
            "(engine.common.fit_background); the .ptyr stores it under content/background/<scan>."),
    "scan.background.active": P(
        type=("bool",), default=True,
        help="Model an incoherent background for this scan",
        doc="On by default: on real data the background is rarely zero, and where it is the fit keeps it near "
            "zero at a few percent of an iteration's time. False leaves the model purely coherent."),
    "scan.background.init": P(
        type=("str", "float"), default="zero",
        help="Starting background: 'zero', 'min', a number of counts, or a .npy file",
        doc="'zero': start from no background; 'min': the pixelwise minimum over all frames (an upper bound of "
            "a background that is the same in every frame; useful when the beam leaves the detector partly "
            "dark); a number: that many counts per pixel per frame; a path ending in .npy: an (H, W) map of "
            "counts per frame in the prepared frames' orientation (read without pickle)."),
    "engine.common.fit_background": P(
        type=("bool",), default=True,
        help="Fit the scans' background maps (scan.background) in this engine",
        doc="Each iteration the background takes one Newton step of the engine's likelihood (DM: Poisson) "
            "per pixel, at the current probe and object, safeguarded to stay non-negative."),
    "engine.common.background_update_start": P(
        type=("int",), default=5, lowlim=0,
        help="Iterations of this engine before the background is fitted",
        doc="While the first iterations are far from the data the residual is mostly unexplained sample "
            "signal; fitting the background then lets it absorb signal that the object should take."),
    "engine.common.orthogonal_modes": P(
        type=("bool",), default=True,
        help="Keep the probe modes orthogonal, ordered by power",
        doc="Partially coherent illumination is an incoherent sum of mutually orthogonal modes; the sum does "
            "not change when the modes are rotated among themselves, so without this the modes can stay "
            "alike. After each iteration the modes are replaced by the eigenvectors of their overlap matrix "
            "(a unitary mixing that leaves the model intensity unchanged), strongest first; each mode's share "
            "of the power is reported per iteration (mode_power_<k>) and stored in the .ptyr's runtime record."),
    "engine.common.position_refinement": P(
        type=("Param",), default=None,
        help="Refinement of the scan positions",
        doc="Positions recorded by motors or encoders are often off by a pixel or more, which blurs the "
            "object and spoils the data fit. Between iterations every frame's position is moved toward the "
            "one that fits its frame best (difframe.ptycho.positions): refined positions are used by every "
            "later engine and saved in content/positions/<scan> of the .ptyr."),
    "engine.common.position_refinement.active": P(
        type=("bool",), default=False,
        help="Refine the scan positions in this engine",
        doc="Off by default: refinement needs a probe and object that already explain the data roughly, so "
            "switch it on in a later engine, or set start."),
    "engine.common.position_refinement.start": P(
        type=("int",), default=20, lowlim=0,
        help="Iteration of this engine at which refinement starts"),
    "engine.common.position_refinement.stop": P(
        type=("int", "NoneType"), default=None, lowlim=0,
        help="Iteration of this engine after which refinement stops (None: the engine's end)",
        doc="The last engine of a run does not refine after its final iteration: no iteration would use the "
            "positions found then."),
    "engine.common.position_refinement.interval": P(
        type=("int",), default=5, lowlim=1,
        help="Refine every this many iterations"),
    "engine.common.position_refinement.max_shift": P(
        type=("float",), default=2e-6, lowlim=0.0,
        help="Largest distance a position may move from its recorded value [m]",
        doc="A bound on the total displacement, so a frame the model cannot explain does not wander off."),
    "engine.common.position_refinement.method": P(
        type=("str",), default="grid", choices=("grid",),
        help="How a frame's position is refined",
        doc="'grid': the frame's misfit at its window and at the 8 neighbouring pixel offsets, a quadratic "
            "fitted to the 3 x 3 values, its minimum (sub-pixel) taken."),
}
