"""Difference map engine (``DM``): projections between data and overlap constraints.

Each iteration makes one Fourier pass over all frames (batched FFT of the
relaxed exit waves, partial projection onto the measured amplitudes, inverse
FFT) and then an overlap loop that refines object and probe from the exit
waves until the probe stops changing.  Exit waves are held as one array per
scan, (frames, probe_modes, object_modes, H, W).
"""

from __future__ import annotations

import logging

import numpy as np

import difframe
from difframe.ptycho import model as pm
from difframe.types import EngineSpec, Parameter

log = logging.getLogger("difframe.engines.dm")

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
            "below fourier_relax_factor^2 x its mean intensity is left alone; otherwise its amplitudes are "
            "moved toward the data just far enough to reach that bound."),
    "obj_smooth_std": Parameter(
        type="int", default=20, lowlim=0, help="Gaussian smoothing (pixel) of the current object prior to update",
        doc="If None, smoothing is deactivated. This smoothing can be used to reduce the amplitude of spurious "
            "pixels in the outer, least constrained areas of the object."),
}


class DifferenceMap:
    """The DM engine on a :class:`difframe.ptycho.model.PtychoModel`."""

    def __init__(self, params, model: pm.PtychoModel):
        self.p = params
        self.model = model
        self.iteration = 0
        self.exits: dict[str, np.ndarray] = {}

    def initialize(self) -> None:
        """Exit waves start as probe x object; per-frame constants of the data are computed once."""
        m = self.model
        relax2 = float(self.p.fourier_relax_factor) ** 2
        self.frame_data = {}
        self.work = {}
        for scan in m.scans:
            probe = m.probes[scan.probe_id].data
            obj = m.objects[scan.object_id].data
            pods = (probe.shape[0], obj.shape[0], *scan.shape)
            ex = np.empty((scan.num_frames, *pods), m.cdtype)
            pm.exit_waves_at(probe, obj, scan.corners, out=ex)
            self.exits[scan.label] = ex
            valid = np.broadcast_to(scan.weights > 0, scan.intensity.shape).astype(m.rdtype)
            count = np.maximum(valid.sum(axis=(-2, -1)), 1)
            self.frame_data[scan.label] = {
                "amplitude": np.sqrt(scan.intensity),
                # error weights and the likelihood's 1/(I + 1), both divided by the valid pixels per frame
                "valid": valid / count[:, None, None],
                "invalid": valid == 0,
                "ll_weight": valid / (scan.intensity + 1) / count[:, None, None],
                "bound": relax2 * (valid * scan.intensity).sum(axis=(-2, -1)) / count,
                "all_valid": bool(valid.all()),
            }
            # chunk buffers reused every iteration: fresh ones would cost a page fault per 4 kB each time
            step = next(m.chunks(scan, pods[0] * pods[1]), slice(0, 0)).stop
            if len(self.work.get(pods, {"pods": ()})["pods"]) < step:
                self.work[pods] = {"pods": np.empty((step, *pods), m.cdtype), "f": np.empty((step, *pods), m.cdtype),
                                   "model": np.empty((step, *scan.shape), m.rdtype),
                                   "dev": np.empty((step, *scan.shape), m.rdtype)}
        power, points = m.total_measured()
        self.mean_power = power / max(points, 1)
        self.supports = {pid: pm.probe_support(st.data.shape[-2:], self.p.probe_support, m.rdtype)
                         for pid, st in m.probes.items()}

    def iterate(self, n: int) -> list[dict]:
        out = []
        for _ in range(n):
            metrics = self._fourier_update()
            metrics["overlap_loops"] = self._overlap_update()
            self.iteration += 1
            out.append(metrics)
        return out

    def finalize(self) -> dict:
        self.exits.clear()
        self.frame_data.clear()
        self.work.clear()
        return {"engine": "DM", "iterations": self.iteration}

    # -- Fourier constraint -----------------------------------------------------------------

    def _fourier_update(self) -> dict:
        """psi += P_F((1 + alpha) P O - alpha psi) - P O over all frames, chunk by chunk in reused buffers."""
        m = self.model
        sums = np.zeros(4)  # squared amplitude errors, likelihood terms, exit-wave change, frames
        for scan in m.scans:
            for sl in m.chunks(scan, self.exits[scan.label].shape[1] * self.exits[scan.label].shape[2]):
                sums += self._fourier_chunk(scan, sl)
        err_sum, ll_sum, change, frames = m.ranks.sum(*sums)
        return {"fourier_error": err_sum / frames, "likelihood": ll_sum / frames, "exit_change": change / frames}

    def _fourier_chunk(self, scan, sl: slice) -> tuple[float, float, float, int]:
        """Fourier step of frames ``sl`` of ``scan``; returns its (error, likelihood, change, frames) sums."""
        m, alpha = self.model, float(self.p.alpha)
        probe = m.probes[scan.probe_id].data
        obj = m.objects[scan.object_id].data
        ex_all, fd = self.exits[scan.label], self.frame_data[scan.label]
        work = self.work[ex_all.shape[1:]]
        n = sl.stop - sl.start
        ex, model_amp, dev = ex_all[sl], work["model"][:n], work["dev"][:n]
        pods, f = work["pods"][:n], work["f"][:n]
        pm.relaxed_exit_waves(probe, obj, scan.corners[sl], ex, alpha, pods_out=pods, out=f)
        fields = scan.propagator.forward(f, overwrite=True)
        if ex_all.shape[1] * ex_all.shape[2] == 1:  # |field| in one pass, then the model intensity from it
            np.abs(fields.reshape(n, *scan.shape), out=model_amp)
            np.square(model_amp, out=dev)
            dev -= scan.intensity[sl]
        else:
            pm.intensity(fields, out=model_amp)
            np.subtract(model_amp, scan.intensity[sl], out=dev)
            np.sqrt(model_amp, out=model_amp)
        dev *= dev
        ll = float(np.dot(dev.reshape(-1), fd["ll_weight"][sl].reshape(-1)))
        np.subtract(model_amp, fd["amplitude"][sl], out=dev)
        if fd["all_valid"]:  # two-operand einsum is several times faster than three
            err = np.einsum("nhw,nhw->n", dev, dev) * fd["valid"][sl][:, 0, 0]
        else:
            err = np.einsum("nhw,nhw,nhw->n", dev, dev, fd["valid"][sl])
        # partial projection: amplitudes move toward the data until the error reaches the bound
        bound = fd["bound"][sl]
        renorm = np.sqrt(np.divide(bound, err, out=np.ones_like(err), where=err > bound))
        dev *= renorm[:, None, None]
        dev += fd["amplitude"][sl]
        model_amp += m.rdtype.type(1e-10)
        dev /= model_amp
        if not fd["all_valid"]:
            np.copyto(dev, 1, where=fd["invalid"][sl])
        pm.scale_fields(fields, dev)
        f = scan.propagator.backward(fields, overwrite=True)
        f -= pods
        ex += f
        return float(err.sum()), ll, float(np.vdot(f, f).real), n

    # -- overlap constraint ------------------------------------------------------------------

    def _overlap_update(self) -> int:
        update_probe = self.iteration >= self.p.probe_update_start
        loops = 0
        for inner in range(max(1, int(self.p.overlap_max_iterations))):
            loops += 1
            if self.p.update_object_first or inner > 0 or not update_probe:
                self._object_update()
            if not update_probe:
                break
            if self._probe_update() < self.p.overlap_converge_factor:
                break
        return loops

    def _object_update(self) -> None:
        m = self.model
        inertia = float(self.p.object_inertia) * self.mean_power
        sums = {}
        for oid, st in m.objects.items():
            if not m.ranks.is_root:  # the inertia term enters the all-reduced sums once
                sums[oid] = (np.zeros_like(st.data), np.zeros(st.data.shape[-2:], m.rdtype))
                continue
            base = pm.gaussian_smooth(st.data, self.p.obj_smooth_std) if self.p.obj_smooth_std else st.data
            sums[oid] = (inertia * base, np.full(st.data.shape[-2:], inertia, m.rdtype))
        for scan in m.scans:
            probe = m.probes[scan.probe_id].data
            pconj = np.conj(probe) * scan.object_power
            pden = pm.intensity(probe[None])[0] * scan.object_power
            pm.add_object_update(*sums[scan.object_id], pconj, pden, self.exits[scan.label], scan.corners)
        for oid, (num, den) in sums.items():
            m.ranks.sum_arrays(num, den)
            num /= den
            pm.clip_amplitude(num, self.p.clip_object)
            m.objects[oid].data[...] = num

    def _probe_update(self) -> float:
        m = self.model
        frames = {pid: 0 for pid in m.probes}
        for scan in m.scans:
            frames[scan.probe_id] += len(scan.positions)  # all ranks' frames
        sums = {}
        for pid, st in m.probes.items():
            if not m.ranks.is_root:  # the inertia term enters the all-reduced sums once
                sums[pid] = (np.zeros_like(st.data), np.zeros(st.data.shape[-2:], m.rdtype))
                continue
            obj_power = np.mean([np.mean(np.abs(m.objects[s.object_id].data) ** 2) for s in m.scans
                                 if s.probe_id == pid])
            inertia = float(self.p.probe_inertia) * frames[pid] * obj_power
            sums[pid] = (inertia * st.data, np.full(st.data.shape[-2:], inertia, m.rdtype))
        for scan in m.scans:
            num, den = sums[scan.probe_id]
            scan_num, scan_den = np.zeros_like(num), np.zeros_like(den)
            pm.add_probe_update(scan_num, scan_den, m.objects[scan.object_id].data, self.exits[scan.label],
                                scan.corners)
            num += scan.probe_power * scan_num
            den += scan.probe_power * scan_den
        change = 0.0
        for pid, (num, den) in sums.items():
            m.ranks.sum_arrays(num, den)
            num /= den
            if self.supports[pid] is not None:
                num *= self.supports[pid]
            old = m.probes[pid].data
            change = max(change, float(np.linalg.norm(num - old) / max(np.linalg.norm(num), 1e-30)))
            old[...] = num
        return change


def factory(params, context):
    """Engine for ``engines.<label>`` with ``name = "DM"``; ``context`` is the PtychoModel."""
    return DifferenceMap(params, context)


@difframe.hookimpl
def difframe_engines():
    yield EngineSpec(name="DM", summary="difference map (Thibault et al. 2009), vectorised over frames",
                     factory=factory, parameters=PARAMETERS)
