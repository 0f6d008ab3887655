"""The engine DM and RAAR share (plugins/engines/dm.py, raar.py): exit waves projected between data and overlap.

Each iteration makes one Fourier pass over all frames and then an overlap
loop that refines object and probe from the exit waves until the probe stops
changing.  Exit waves psi are held at the sample and at the detector (Phi =
F psi), one array per scan each, (frames, pods, H, W) with pod
p * object_modes + o.  The Fourier pass transforms the current probe x
object once, F(PO): that gives the relaxed wave the engine projects without
a second transform, and the data fit (Poisson deviance) of the current PO,
which is what the engine reports; the projection models the scan's
background and frame scales (difframe.ptycho.terms), which are then fitted
by a Newton step.  A subclass says how it relaxes
(:meth:`ProjectionEngine.relaxation`, see :mod:`difframe.ptycho.projection`):
DM with ``alpha``, RAAR with ``beta``.  A third-party engine of this family
subclasses it the same way.
"""

from __future__ import annotations

import numpy as np

from difframe import fft, frame_threads
from difframe.ptycho import kernels, projection
from difframe.ptycho import model as pm

_NO_SCALES = np.empty((0, 2))  # the kernels' sign for "frame scales not fitted"


class ProjectionEngine:
    """A DM-style engine on a :class:`difframe.ptycho.model.PtychoModel`; subclasses set ``name`` and
    :meth:`relaxation`. ``params`` need DM's nodes (alpha aside) and the model terms' switches."""

    name = "projection"

    def __init__(self, params, model: pm.PtychoModel):
        self.p = params
        self.model = model
        self.iteration = 0
        self.exits: dict[str, np.ndarray] = {}  # at the sample
        self.detector: dict[str, np.ndarray] = {}  # the same waves at the detector

    def initialize(self) -> None:
        """Exit waves start as probe x object, at the sample and at the detector; per-frame constants of the
        data are computed once."""
        m = self.model
        relax2 = float(self.p.fourier_relax_factor) ** 2
        self.frame_data = {}
        self.buffers = {}
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
            # one chunk buffer per thread reused every iteration (a fresh one would cost a page fault per 4 kB
            # each time), aligned for in-place FFTs
            step = self._chunks(scan)[0].stop
            key = (pods, *scan.shape)
            if len(self.buffers.get(key, [()])[0]) < step:
                self.buffers[key] = [fft.empty((step, *key), m.cdtype) for _ in range(frame_threads.workers())]
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
        return {"engine": self.name, "iterations": self.iteration}

    def relaxation(self) -> tuple[float, float]:
        """(alpha, mix) of :func:`difframe.ptycho.projection.fourier_projection` for this engine."""
        raise NotImplementedError

    # -- Fourier constraint -----------------------------------------------------------------

    def _chunks(self, scan) -> list[slice]:
        return frame_threads.chunks(scan.num_frames, self.exits[scan.label][0].nbytes)

    def _fourier_update(self) -> dict:
        """psi += F^-1[P_F((1 + alpha) F(PO) - alpha Phi) - F(PO)] over all frames, a cache-sized chunk at a
        time on every thread; then a Newton step of the background and frame scales at the current PO."""
        m = self.model
        fit_bg = self.p.fit_background and self.iteration >= self.p.background_update_start
        sums = np.zeros(4)  # squared amplitude errors, deviance, exit-wave change, frames
        for scan in m.scans:
            bg_sums = pm.background_sums(scan, fit_bg)  # a (2, H, W) slot per worker
            scale_sums = np.zeros((scan.num_frames, 2)) if self.p.floating_intensities else _NO_SCALES

            def chunk(worker, sl, scan=scan, bg_sums=bg_sums, scale_sums=scale_sums):
                return self._fourier_chunk(scan, sl, worker, bg_sums[worker:worker + 1],
                                           scale_sums[sl] if len(scale_sums) else _NO_SCALES)

            for chunk_sums in frame_threads.run(chunk, self._chunks(scan)):
                sums += chunk_sums
            if len(bg_sums):
                pm.newton_background(scan, bg_sums, m.ranks)
            if len(scale_sums):
                pm.newton_scales(scan, scale_sums, m.ranks)
        err_sum, dev_sum, change, frames = m.ranks.sum(*sums)
        return {"fourier_error": err_sum / frames, "deviance": dev_sum / self.points, "exit_change": change / frames}

    def _fourier_chunk(self, scan, sl: slice, worker: int, bg_sums, scale_sums) -> np.ndarray:
        """Fourier step of frames ``sl`` of ``scan`` on ``worker``'s buffer; returns its (error, deviance,
        change, frames) sums."""
        m = self.model
        probe = m.probes[scan.probe_id].data
        obj = m.objects[scan.object_id].data
        ex, phi, fd, corners = (self.exits[scan.label][sl], self.detector[scan.label][sl],
                                self.frame_data[scan.label], scan.corners[sl])
        n = len(ex)
        f = self.buffers[ex.shape[1:]][worker][:n]
        kernels.pods_serial(probe, obj, corners, f)
        # the transforms' factor is applied in the kernels (one pass over the chunk fewer each way)
        fields = scan.propagator.forward(f, overwrite=True, scaled=False)
        err, dev, change = np.empty(n), np.empty(n), np.empty(n)
        alpha, mix = self.relaxation()
        gain = scan.propagator.gain
        projection.fourier_projection(fields, phi, scan.intensity[sl], scan.weights_of(sl), scan.scale_factors()[sl],
                                      scan.background_map(), m.rdtype.type(alpha), m.rdtype.type(mix), gain,
                                      fd["count"][sl], fd["bound"][sl], self.tiny, err, dev, bg_sums, scale_sums)
        back = scan.propagator.backward(fields, overwrite=True, scaled=False)
        projection.add_exit_change(back, ex, gain, change)
        return np.array([err.sum(), dev.sum(), change.sum(), n])

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
        projection.object_update(self.model, self.exits, float(self.p.object_inertia) * self.mean_power,
                                 self.p.obj_smooth_std, self.p.clip_object)

    def _probe_update(self) -> float:
        return projection.probe_update(self.model, self.exits, float(self.p.probe_inertia), self.supports)
