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
the probe support.  The shared kernels are in :mod:`difframe.ptycho.projection`.
"""

from __future__ import annotations

import logging

import numpy as np

import difframe
from difframe.ptycho import model as pm
from difframe.types import EngineSpec, Parameter

log = logging.getLogger("difframe.engines.raar")

PARAMETERS = {
    "beta": Parameter(
        type="float", default=0.75, lowlim=0.0, uplim=1.0, help="RAAR relaxation parameter",
        doc="psi <- beta/2 (R_F R_O + I) psi + (1 - beta) P_O psi. 1 is the difference map; lower values "
            "pull the exit waves toward the overlap projection every iteration (steadier on noisy data, "
            "slower to leave a poor start). Typical 0.7 to 0.9."),
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
        type="float", default=0.01, lowlim=0.0,
        help="If rms error of model vs diffraction data is smaller than this fraction, Fourier constraint is met",
        doc="As DM's: a frame whose mean squared amplitude error is below fourier_relax_factor^2 x its mean "
            "intensity is left alone, others are moved toward the data just far enough to reach that bound. "
            "0 is the most accurate on noiseless data."),
    "floating_intensities": Parameter(
        type="bool", default=False, help="Fit a per-frame intensity scale (incident flux changes)",
        doc="As DM's: each frame's model intensity has its own factor, one Newton step of the Poisson "
            "likelihood per iteration, kept at mean 1."),
    "obj_smooth_std": Parameter(
        type=("int", "NoneType"), default=20, lowlim=0,
        help="Gaussian smoothing (pixel) of the current object prior to update",
        doc="The object inertia term uses the object blurred by this many pixels (None or 0: not blurred)."),
}

_NO_SCALES = np.empty((0, 2))  # the kernels' sign for "frame scales not fitted"


class RAAR:
    """The RAAR engine on a :class:`difframe.ptycho.model.PtychoModel`."""

    def __init__(self, params, model: pm.PtychoModel):
        self.p = params
        self.model = model
        self.iteration = 0
        self.exits: dict[str, np.ndarray] = {}  # at the sample
        self.detector: dict[str, np.ndarray] = {}  # the same waves at the detector

    def initialize(self) -> None:
        from difframe.ptycho import kernels, projection

        self.kernels, self.projection = kernels, projection
        m = self.model
        relax2 = float(self.p.fourier_relax_factor) ** 2
        self.frame_data, self.buffers = {}, {}
        self.tiny = float(np.finfo(m.rdtype).tiny) * 1e6
        for scan in m.scans:
            probe = m.probes[scan.probe_id].data
            obj = m.objects[scan.object_id].data
            pods = probe.shape[0] * obj.shape[0]
            ex = np.empty((scan.num_frames, pods, *scan.shape), m.cdtype)
            kernels.pods(probe, obj, scan.corners, ex)
            self.exits[scan.label] = ex
            self.detector[scan.label] = np.empty_like(ex)
            for sl in m.chunks(scan, pods):
                self.detector[scan.label][sl] = scan.propagator.forward(ex[sl])
            valid = np.broadcast_to(scan.weights > 0, scan.intensity.shape)
            count = np.maximum(valid.sum(axis=(-2, -1)), 1)
            self.frame_data[scan.label] = {
                "count": count.astype(float),
                "bound": relax2 * np.where(valid, scan.intensity, 0).sum(axis=(-2, -1)) / count,
            }
            if self.p.floating_intensities and scan.scale is None:
                scan.scale = np.ones(scan.num_frames, m.rdtype)
            step = next(m.chunks(scan, pods), slice(0, 0)).stop
            key = (pods, *scan.shape)
            if len(self.buffers.get(key, ())) < step:
                self.buffers[key] = np.empty((step, *key), m.cdtype)
        power, self.points = m.total_measured()
        self.mean_power = power / max(self.points, 1)
        self.supports = {pid: pm.probe_support(st.data.shape[-2:], self.p.probe_support, m.rdtype)
                         for pid, st in m.probes.items()}

    def iterate(self, n: int) -> list[dict]:
        out = []
        for _ in range(n):
            metrics = self._fourier_update()
            metrics["overlap_loops"] = self._overlap_update()
            metrics.update(pm.orthogonalise_probes(self.model, pod_stacks=(self.exits, self.detector))
                           if self.p.orthogonal_modes else pm.mode_powers(self.model))
            self.iteration += 1
            out.append(metrics)
        return out

    def finalize(self) -> dict:
        self.exits.clear()
        self.detector.clear()
        self.frame_data.clear()
        self.buffers.clear()
        return {"engine": "RAAR", "iterations": self.iteration}

    def _fourier_update(self) -> dict:
        """psi += F^-1[beta (P_F(2 F(PO) - Phi) - F(PO)) + (1 - beta) (F(PO) - Phi)], chunk by chunk; then a
        Newton step of the background and frame scales at the current PO."""
        m = self.model
        fit_bg = self.p.fit_background and self.iteration >= self.p.background_update_start
        sums = np.zeros(4)
        for scan in m.scans:
            bg_sums = pm.background_sums(scan, fit_bg)
            scale_sums = np.zeros((scan.num_frames, 2)) if self.p.floating_intensities else _NO_SCALES
            for sl in m.chunks(scan, self.exits[scan.label].shape[1]):
                sums += self._fourier_chunk(scan, sl, bg_sums, scale_sums[sl] if len(scale_sums) else _NO_SCALES)
            if len(bg_sums):
                pm.newton_background(scan, bg_sums, m.ranks)
            if len(scale_sums):
                pm.newton_scales(scan, scale_sums, m.ranks)
        err_sum, dev_sum, change, frames = m.ranks.sum(*sums)
        return {"fourier_error": err_sum / frames, "deviance": dev_sum / self.points, "exit_change": change / frames}

    def _fourier_chunk(self, scan, sl: slice, bg_sums, scale_sums) -> tuple[float, float, float, int]:
        m = self.model
        probe = m.probes[scan.probe_id].data
        obj = m.objects[scan.object_id].data
        ex, phi, fd = self.exits[scan.label][sl], self.detector[scan.label][sl], self.frame_data[scan.label]
        n = len(ex)
        f = self.buffers[ex.shape[1:]][:n]
        self.kernels.pods(probe, obj, scan.corners[sl], f)
        fields = scan.propagator.forward(f, overwrite=True)
        err, dev, change = np.empty(n), np.empty(n), np.empty(n)
        real = m.rdtype.type
        self.projection.fourier_projection(fields, phi, scan.intensity[sl], scan.weights_of(sl),
                                           scan.scale_factors()[sl], scan.background_map(), real(1.0),
                                           real(self.p.beta), fd["count"][sl], fd["bound"][sl], self.tiny,
                                           err, dev, bg_sums, scale_sums)
        back = scan.propagator.backward(fields, overwrite=True)
        self.projection.add_exit_change(back, ex, change)
        return float(err.sum()), float(dev.sum()), float(change.sum()), n

    def _overlap_update(self) -> int:
        pr, m, p = self.projection, self.model, self.p
        update_probe = self.iteration >= p.probe_update_start
        loops = 0
        for inner in range(max(1, int(p.overlap_max_iterations))):
            loops += 1
            if p.update_object_first or inner > 0 or not update_probe:
                pr.object_update(m, self.exits, float(p.object_inertia) * self.mean_power, p.obj_smooth_std,
                                 p.clip_object)
            if not update_probe:
                break
            if pr.probe_update(m, self.exits, float(p.probe_inertia), self.supports) < p.overlap_converge_factor:
                break
        return loops


def factory(params, context):
    """Engine for ``engines.<label>`` with ``name = "RAAR"``; ``context`` is the PtychoModel."""
    return RAAR(params, context)


@difframe.hookimpl
def difframe_engines():
    yield EngineSpec(name="RAAR", summary="relaxed averaged alternating reflections (Luke 2005) on DM's machinery",
                     factory=factory, parameters=PARAMETERS)
