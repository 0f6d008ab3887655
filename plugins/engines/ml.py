"""Maximum-likelihood engine (``ML``): conjugate gradients on object and probe.

Each iteration makes a gradient pass (batched FFT of all pods, likelihood
derivative per pixel, inverse FFT, gather of object/probe gradients) and a
line-search pass (FFT of the search direction's first- and second-order pod
changes) that gives the step from a second-order expansion of the likelihood.
The three likelihoods share this machinery through their first and second
derivatives with respect to the model intensity.

The pods are linear in object and probe, so after a step the detector-plane
pods are f + step x first + step^2 x second, the line search's own transforms:
when the line search's two stacks for every frame fit in CARRY_BYTES, the
engine keeps them and carries the pods forward instead of propagating them
again (three propagations per pod and iteration instead of four), recomputing
them exactly every REFRESH iterations and whenever anything else moved the
model (positions refined, the object or probe changed from outside).
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.fft

import difframe
from difframe import fft, frame_threads, limits
from difframe.ptycho import model as pm
from difframe.ptycho import subpixel
from difframe.types import EngineSpec, Parameter

log = logging.getLogger("difframe.engines.ml")

REFRESH = 10  # carried pods are recomputed exactly this often (rounding does not accumulate)
#: the most memory the line search's two carried stacks may take (and at most a quarter of the budget): beyond
#: it the pods are propagated again, so large scans keep ptypy's memory footprint
CARRY_BYTES = 512 * 2**20

_GARBLED = "\n\nThe reference gives this {kind} node a limit (>0.0), which cannot apply; it is not enforced."

PARAMETERS = {
    "type": Parameter(
        type="str", default="gaussian", choices=("gaussian", "poisson", "euclid"),
        help="Likelihood model. One of 'gaussian', 'poisson' or 'euclid'",
        doc="difframe implements all three: 'gaussian' (weighted "
            "least squares on intensities, weights 1/(I + 1/intensity_renormalization)), 'poisson' (negative "
            "Poisson log-likelihood of the counts) and 'euclid' (least squares on amplitudes). The reference's "
            "note that only the first is implemented described ptypy at the time."
            + _GARBLED.format(kind="str")),
    "floating_intensities": Parameter(
        type="bool", default=False,
        help="If True, allow for adaptative rescaling of the diffraction pattern intensities (to correct for "
             "incident beam intensity fluctuations)."),
    "intensity_renormalization": Parameter(
        type="float", default=1.0, lowlim=0.0,
        help="A rescaling of the intensity so they can be interpreted as Poisson counts."),
    "reg_del2": Parameter(type="bool", default=True,
                          help="Whether to use a Gaussian prior (smoothing) regularizer.",
                          doc=_GARBLED.format(kind="bool").strip()),
    "reg_del2_amplitude": Parameter(type="float", default=0.01, lowlim=0.0,
                                    help="Amplitude of the Gaussian prior if used."),
    "smooth_gradient": Parameter(
        type="float", default=0.0,
        help="Smoothing preconditioner. If 0, not used, if > 0 gaussian filter if < 0 Hann window.",
        doc="The value is the Gaussian sigma, or the Hann window's full width, in object pixels.\n\nThe "
            "reference gives a limit (>0.0), which would forbid the Hann window its own help describes; "
            "it is not enforced."),
    "scale_precond": Parameter(
        type="bool", default=False, help="Whether to use the object/probe scaling preconditioner.",
        doc="This parameter can give faster convergence for weakly scattering samples." + _GARBLED.format(kind="bool")),
    "scale_probe_object": Parameter(type="float", default=1.0, lowlim=0.0,
                                    help="Relative scale of probe to object.",
                                    doc="Multiplies the probe's share of the search direction."),
    "probe_update_start": Parameter(type="int", default=0,
                                    help="Number of iterations before probe update starts"),
    "illumination_precond": Parameter(
        type="bool", default=False, help="Divide the gradients by the illumination (difframe's addition)",
        doc="difframe adds this node (ptypy has no such preconditioner): the object's gradient is divided by "
            "the probe power summed over the frames that see each object pixel, the probe's by the object power "
            "summed over the frames, each plus illumination_regularisation x its maximum. Weakly lit object pixels "
            "and the probe then move at the pace of the rest, as in the PIE family and least-squares ML codes; "
            "the line search still sets the step. On the real P25 scan it lowers the deviance the conjugate "
            "gradients settle at from 13.8 to 9.7 per pixel (docs/ptycho-real-data.md)."),
    "illumination_regularisation": Parameter(
        type="float", default=0.1, lowlim=0.0,
        help="Fraction of the maximum illumination added before dividing (illumination_precond)",
        doc="Small values move weakly lit pixels faster (and amplify their noise), large values approach no "
            "preconditioning."),
    "subpixel_positions": Parameter(
        type="bool", default=False,
        help="Place each frame's window at its exact, sub-pixel position (difframe's addition)",
        doc="difframe adds this node: the model's windows sit on the object's pixel grid, so a position is rounded by "
            "up to half a pixel. With this on, each window is interpolated at its frame's fractional offset (a 6-tap "
            "Lanczos kernel, difframe.ptycho.subpixel) for the likelihood, its gradients and the line search; refined "
            "positions (position_refinement) then act with their sub-pixel part too. An iteration costs about half "
            "as much again (200 frames of 100 x 100). Worth it when features are a few pixels wide, as in near-field "
            "holograms, and whenever the positions are known better than a pixel."),
}


def _hann_transfer(shape, width: float, dtype):
    """FFT of a normalised separable Hann window of full width ``width`` pixels, centred on pixel 0."""
    half = int(np.ceil(width / 2))
    idx = np.arange(-half, half + 1)
    window = np.cos(np.pi * idx / (width + 1)) ** 2
    lines = []
    for n in shape:
        line = np.zeros(n)
        np.add.at(line, idx % n, window)
        lines.append(line / line.sum())
    return scipy.fft.fft2(lines[0][:, None] * lines[1][None, :]).astype(dtype)


class MaximumLikelihood:
    """The ML engine on a :class:`difframe.ptycho.model.PtychoModel`."""

    def __init__(self, params, model: pm.PtychoModel):
        self.p = params
        self.model = model
        self.iteration = 0

    def initialize(self) -> None:
        from difframe.plugins.engines import ml_kernels
        from difframe.ptycho import kernels

        m = self.model
        self.kernels = kernels
        self.ml_kernels = ml_kernels
        self.likelihood = kernels.LIKELIHOODS[self.p.type]
        self.tiny = float(np.finfo(m.rdtype).tiny) * 1e6
        self.fields = {}
        # a chunk buffer reused every iteration: the detector-plane gradient (chunks of the gradient pass), and
        # with a second one made when first needed the two pod changes of the sub-pixel line search (half as many
        # frames per chunk); or, to carry the pods forward (module doc), the line search's pod changes of every
        # frame
        shapes = {scan.label: (scan.num_frames,
                               m.probes[scan.probe_id].data.shape[0] * m.objects[scan.object_id].data.shape[0],
                               *scan.shape) for scan in m.scans}
        stack_bytes = sum(int(np.prod(shape)) for shape in shapes.values()) * m.cdtype.itemsize
        carry = self.p.clip_object is None and 2 * stack_bytes <= min(CARRY_BYTES, limits.memory_budget() // 4)
        self.buffers = {}
        self.line_stacks = {}
        self.line_buffers = {}  # pods -> per frame thread (first, second) chunk buffers of the line search
        for scan in m.scans:
            shape = shapes[scan.label]
            pods = shape[1]
            # aligned: propagated in place a cache-sized chunk at a time (difframe.frame_threads)
            self.fields[scan.label] = fft.empty(shape, m.cdtype)
            if carry:
                self.line_stacks[scan.label] = (fft.empty(shape, m.cdtype), fft.empty(shape, m.cdtype))
            if self.p.floating_intensities and scan.scale is None:
                scan.scale = np.ones(scan.num_frames, m.rdtype)
            step = next(m.chunks(scan, pods), slice(0, 0)).stop
            key = (pods, *scan.shape)
            if len(self.buffers.get(key, [()])[0]) < step:
                self.buffers[key] = [fft.empty((step, *key), m.cdtype)]
        self.carried_state = None  # the model the carried pods belong to (probes, objects, positions)
        power, points = m.total_measured()
        self.total_points = max(points, 1)
        npix = sum(st.data.size for st in m.objects.values())
        # expected object variance npix / power, spread over 8 neighbour differences per pixel
        self.reg_amplitude = (float(self.p.reg_del2_amplitude) * points * power / (8.0 * npix**2)
                              if self.p.reg_del2 else 0.0)
        self.supports = {pid: pm.probe_support(st.data.shape[-2:], self.p.probe_support, m.rdtype)
                         for pid, st in m.probes.items()}
        self.prev = None  # (preconditioned object gradients, probe gradients, preconditioned probe gradients, dot)
        self.directions = None
        self.scale_p_o = float(self.p.scale_probe_object)
        self.views = {}  # subpixel_positions: each scan's shifted object windows, kept for the line search

    def iterate(self, n: int) -> list[dict]:
        out = []
        for _ in range(n):
            out.append(self._one_iteration())
            self.iteration += 1
        return out

    def finalize(self) -> dict:
        self.fields.clear()
        self.buffers.clear()
        self.line_stacks.clear()
        self.line_buffers.clear()
        self.carried_state = None
        self.views.clear()
        return {"engine": "ML", "iterations": self.iteration}

    # -- one conjugate-gradient step ----------------------------------------------------------

    def _one_iteration(self) -> dict:
        m = self.model
        ll, err_sum, dev, frames, ob_grad, pr_grad = self._gradients()
        ll_reg = self._regulariser_gradient(ob_grad)
        self._smooth(ob_grad)
        if self.iteration < self.p.probe_update_start:
            for g in pr_grad.values():
                g[...] = 0
        else:
            for pid, g in pr_grad.items():
                if self.supports[pid] is not None:
                    g *= self.supports[pid]
        if self.p.scale_precond:
            ob2 = sum(float(np.vdot(g, g).real) for g in ob_grad.values())
            pr2 = sum(float(np.vdot(g, g).real) for g in pr_grad.values())
            if pr2 > 0:
                new = float(self.p.scale_probe_object) * ob2 / pr2
                self.scale_p_o = new if self.prev is None else 0.9 * self.scale_p_o + 0.1 * new
        pre_pr = {pid: self.scale_p_o * g for pid, g in pr_grad.items()}
        pre_ob = ob_grad
        if self.p.illumination_precond:
            pre_ob = {oid: g / self._light_inverse(self.ob_light[oid]) for oid, g in ob_grad.items()}
            for pid, g in pre_pr.items():
                g /= self._light_inverse(self.pr_light[pid])
        dot = _dot(ob_grad, pre_ob) + _dot(pr_grad, pre_pr)
        if self.prev is None or self.prev[3] == 0:
            beta = 0.0
        else:
            old_pre_ob, _, old_pre, old_dot = self.prev
            beta = max(0.0, (dot - _dot(ob_grad, old_pre_ob) - _dot(pr_grad, old_pre)) / old_dot)
        if self.directions is None or beta == 0.0:
            h_ob = {k: -g for k, g in pre_ob.items()}
            h_pr = {k: -g for k, g in pre_pr.items()}
        else:
            h_ob, h_pr = self.directions
            for k in h_ob:
                h_ob[k] *= beta
                h_ob[k] -= pre_ob[k]
            for k in h_pr:
                h_pr[k] *= beta
                h_pr[k] -= pre_pr[k]
        self.prev = (pre_ob, pr_grad, pre_pr, dot)
        self.directions = (h_ob, h_pr)
        step, change = self._line_search(h_ob, h_pr)
        for oid, h in h_ob.items():
            m.objects[oid].data += m.cdtype.type(step) * h
            pm.clip_amplitude(m.objects[oid].data, self.p.clip_object)
        for pid, h in h_pr.items():
            m.probes[pid].data += m.cdtype.type(step) * h
        if self.line_stacks:
            for label, (first, second) in self.line_stacks.items():
                self.ml_kernels.advance_fields(self.fields[label], first, second, step)
        metrics = {"fourier_error": err_sum / frames, "likelihood": (ll + ll_reg) / self.total_points,
                   "deviance": dev / self.total_points, "exit_change": change * step**2 / frames, "step": step}
        metrics.update(self._orthogonalise() if self.p.orthogonal_modes else pm.mode_powers(m))
        if self.line_stacks:
            self.carried_state = self._model_state()
        return metrics

    def _model_state(self) -> list[np.ndarray]:
        """Copies of what the pods depend on: probes, objects and every scan's positions."""
        m = self.model
        return [a.copy() for a in (*(st.data for st in m.probes.values()), *(st.data for st in m.objects.values()),
                                   *(s.positions for s in m.scans), *(s.corners for s in m.scans))]

    def _pods_carried(self) -> bool:
        """Whether the kept detector-plane pods still belong to the model (module doc)."""
        state = self.carried_state
        self.carried_state = None
        if state is None or self.iteration % REFRESH == 0:
            return False
        return all(np.array_equal(a, b) for a, b in zip(state, self._model_state()))

    def _light_inverse(self, light: np.ndarray) -> np.ndarray:
        """The illumination a gradient is divided by, regularised (``illumination_regularisation``)."""
        return light + light.dtype.type(float(self.p.illumination_regularisation) * max(float(light.max()), 1e-30))

    def _orthogonalise(self) -> dict:
        """Orthogonal probe modes; the conjugate-gradient memory (probe gradients, directions) is mixed alike."""
        memory = [*(self.prev[1:3] if self.prev else ()), *(self.directions[1:] if self.directions else ())]
        stacks = (self.fields,) if self.line_stacks else ()
        return pm.orthogonalise_probes(self.model, pod_stacks=stacks, probe_arrays=tuple(memory))

    def _gradients(self):
        """Likelihood, amplitude error and the gradients with respect to object and probe, chunk by chunk."""
        m, k = self.model, self.kernels
        kind, renorm, tiny = self.likelihood, float(self.p.intensity_renormalization), self.tiny
        ob_grad = {oid: np.zeros_like(st.data) for oid, st in m.objects.items()}
        pr_grad = {pid: np.zeros_like(st.data) for pid, st in m.probes.items()}
        precond = bool(self.p.illumination_precond)
        # illumination_precond: the summed probe power on each object pixel, the summed object power on each probe pixel
        self.ob_light = {k: np.zeros(st.data.shape[-2:], m.rdtype) for k, st in m.objects.items()} if precond else {}
        self.pr_light = {k: np.zeros(st.data.shape[-2:], m.rdtype) for k, st in m.probes.items()} if precond else {}
        ll = err_sum = dev_sum = 0.0
        frames = 0
        fit_bg = self.p.fit_background and self.iteration >= self.p.background_update_start
        carried = self._pods_carried()
        for scan in m.scans:
            probe = m.probes[scan.probe_id].data
            obj = m.objects[scan.object_id].data
            pconj = np.conj(probe) * scan.object_power
            ppower = pm.intensity(probe[None])[0] * scan.object_power if precond else None
            bg_sums = pm.background_sums(scan, fit_bg)
            shifts = self._shifts(scan)
            for sl in m.chunks(scan, self.fields[scan.label].shape[1]):
                corners = scan.corners[sl]
                n = len(corners)
                fields = self.fields[scan.label][sl]
                chi = self.buffers[fields.shape[1:]][0][:n]
                err, lls, dev = np.empty(n), np.empty(n), np.empty(n)
                if shifts is None:  # pods, propagation, weights and back: a cache-sized piece at a time per thread
                    self._detector_gradient(scan, sl, carried, fields, chi, err, lls, dev, bg_sums)
                else:
                    views = self.views[scan.label][sl]
                    subpixel.views(obj, corners, shifts[sl], scan.shape, out=views)
                    if not carried:
                        k.pods(probe, *_tall(views), fields)
                        scan.propagator.forward(fields, overwrite=True)  # in place; kept for the line search
                    self.ml_kernels.ml_gradient_weights(
                        fields, scan.intensity[sl], scan.weights_of(sl), scan.scale_factors()[sl],
                        bool(self.p.floating_intensities), scan.background_map(), kind, renorm, tiny, chi, err, lls,
                        dev, bg_sums)
                    chi = scan.propagator.backward(chi, overwrite=True)
                err_sum += float(err.sum())
                ll += float(lls.sum())
                dev_sum += float(dev.sum())
                frames += n
                if shifts is None:
                    k.add_object_update(ob_grad[scan.object_id], self.ob_light.get(scan.object_id), pconj, ppower,
                                        chi, corners)
                    k.add_probe_update(pr_grad[scan.probe_id], self.pr_light.get(scan.probe_id), obj, chi, corners,
                                       weight=scan.probe_power)
                else:
                    self._subpixel_gradients(scan, sl, chi, pconj, ppower, ob_grad, pr_grad, shifts[sl])
            if len(bg_sums):
                # a coordinate step: the background moves between the gradient and the line search, whose
                # likelihood expansion is then taken at the new background
                pm.newton_background(scan, bg_sums, m.ranks)
        m.ranks.sum_arrays(*ob_grad.values(), *pr_grad.values(), *self.ob_light.values(), *self.pr_light.values())
        ll, err_sum, dev_sum, frames = m.ranks.sum(ll, err_sum, dev_sum, frames)
        return ll, err_sum, dev_sum, frames, ob_grad, pr_grad

    def _detector_gradient(self, scan, sl, carried, fields, chi, err, lls, dev, bg_sums) -> None:
        """The whole-pixel gradient pass's detector-plane part for frames ``sl`` (``fields``, ``chi`` and the
        per-frame sums are theirs): pods and their propagation (unless carried), the likelihood's weights and
        their back-propagation into ``chi``, every step of a cache-sized piece on one thread."""
        m = self.model
        probe = m.probes[scan.probe_id].data
        obj = m.objects[scan.object_id].data
        kind, renorm, tiny = self.likelihood, float(self.p.intensity_renormalization), self.tiny
        corners, intensity, scale = scan.corners[sl], scan.intensity[sl], scan.scale_factors()[sl]
        weights, floating = scan.weights_of(sl), bool(self.p.floating_intensities)

        def piece(worker, sub):
            if not carried:
                self.kernels.pods_serial(probe, obj, corners[sub], fields[sub])
                scan.propagator.forward(fields[sub], overwrite=True)  # in place; kept for the line search
            self.ml_kernels.ml_gradient_weights_serial(
                fields[sub], intensity[sub], weights if len(weights) == 1 else weights[sub], scale[sub], floating,
                scan.background_map(), kind, renorm, tiny, chi[sub], err[sub], lls[sub], dev[sub],
                bg_sums[worker:worker + 1])
            scan.propagator.backward(chi[sub], overwrite=True)

        frame_threads.run(piece, frame_threads.chunks(len(fields), fields[0].nbytes))

    def _shifts(self, scan) -> np.ndarray | None:
        """Each held frame's fractional offset from its window (subpixel_positions), else None."""
        if not self.p.subpixel_positions:
            return None
        obj = self.model.objects[scan.object_id]
        if scan.label not in self.views:
            self.views[scan.label] = np.empty((scan.num_frames, obj.data.shape[0], *scan.shape), self.model.cdtype)
        return subpixel.offsets(scan, obj)

    def _subpixel_gradients(self, scan, sl, chi, pconj, ppower, ob_grad, pr_grad, shifts) -> None:
        """Object and probe gradients (and illuminations) of frames ``sl`` through their shifted windows."""
        views = self.views[scan.label][sl]
        n, n_obj, h, w = views.shape
        chi = chi.reshape(n, pconj.shape[0], n_obj, h, w)
        combined = pconj[0][None, None] * chi[:, 0]
        for p in range(1, pconj.shape[0]):
            combined += pconj[p][None, None] * chi[:, p]
        subpixel.add_back(ob_grad[scan.object_id], combined, scan.corners[sl], shifts)
        # the probe kernel sums conj(window) x chi (and |window|^2) over the frames of the tall object
        tall, rows = _tall(views)
        self.kernels.add_probe_update(pr_grad[scan.probe_id], self.pr_light.get(scan.probe_id), tall,
                                      chi.reshape(n, -1, h, w), rows, weight=scan.probe_power)
        if self.ob_light:  # a preconditioner: the rounded windows' illumination serves
            light = self.ob_light[scan.object_id]
            for y, x in scan.corners[sl]:
                light[y:y + h, x:x + w] += ppower

    def _regulariser_gradient(self, ob_grad) -> float:
        """Add the del2 prior's gradient; return its value."""
        if not self.reg_amplitude:
            return 0.0
        total = 0.0
        self.object_diffs = {}  # kept for the line search: the object does not change in between
        for oid, st in self.model.objects.items():
            self.object_diffs[oid] = [np.diff(st.data, axis=axis) for axis in (-2, -1)]
            for axis, d in zip((-2, -1), self.object_diffs[oid]):
                total += float(np.vdot(d, d).real)
                g = ob_grad[oid]
                lo = [slice(None)] * g.ndim
                hi = [slice(None)] * g.ndim
                lo[axis], hi[axis] = slice(None, -1), slice(1, None)
                g[tuple(lo)] -= self.reg_amplitude * d
                g[tuple(hi)] += self.reg_amplitude * d
        return self.reg_amplitude * total

    def _smooth(self, ob_grad) -> None:
        s = float(self.p.smooth_gradient)
        if s == 0:
            return
        for oid, g in ob_grad.items():
            if s > 0:
                g[...] = pm.gaussian_smooth(g, s)
            else:
                spec = fft.fft2(g)
                spec *= _hann_transfer(g.shape[-2:], -s, g.dtype)
                g[...] = fft.ifft2(spec, overwrite=True)

    def _line_search(self, h_ob, h_pr) -> tuple[float, float]:
        """Step minimising the second-order expansion of the likelihood along (h_ob, h_pr)."""
        m = self.model
        kind, renorm, tiny = self.likelihood, float(self.p.intensity_renormalization), self.tiny
        totals = np.zeros(3)  # b1, b2, change
        for scan in m.scans:
            probe, dprobe = m.probes[scan.probe_id].data, h_pr[scan.probe_id]
            obj, dobj = m.objects[scan.object_id].data, h_ob[scan.object_id]
            pods = self.fields[scan.label].shape[1]
            shifts = self._shifts(scan)
            if shifts is None:  # whole-pixel windows: a cache-sized chunk at a time on every thread
                totals += self._line_chunks(scan, probe, dprobe, obj, dobj)
                continue
            for sl in m.chunks(scan, 2 * pods):
                corners = scan.corners[sl]
                n = len(corners)
                if scan.label in self.line_stacks:
                    first, second = (stack[sl] for stack in self.line_stacks[scan.label])
                else:
                    buffers = self.buffers[(pods, *scan.shape)]
                    if len(buffers) == 1:  # whole-pixel runs never need it
                        buffers.append(fft.empty(buffers[0].shape, m.cdtype))
                    first, second = (buf[:n] for buf in buffers)
                tall, rows = _tall(self.views[scan.label][sl])
                dtall, _ = _tall(subpixel.views(dobj, corners, shifts[sl], scan.shape))
                self.ml_kernels.ml_line_pods(probe, dprobe, tall, dtall, rows, first, second)
                scan.propagator.forward(first, overwrite=True)  # in place (contiguous complex stacks)
                scan.propagator.forward(second, overwrite=True)
                sums = np.empty((n, 3))
                self.ml_kernels.ml_line_sums(self.fields[scan.label][sl], first, second, scan.intensity[sl],
                                             scan.weights_of(sl), scan.scale_factors()[sl], scan.background_map(),
                                             kind, renorm, tiny, sums)
                totals += sums.sum(axis=0)
        b1, b2, change = m.ranks.sum(*totals)
        if self.reg_amplitude:
            for oid in m.objects:
                for axis, d in zip((-2, -1), self.object_diffs[oid]):
                    dh = np.diff(h_ob[oid], axis=axis)
                    b1 += 2 * self.reg_amplitude * float(np.vdot(d, dh).real)
                    b2 += self.reg_amplitude * float(np.vdot(dh, dh).real)
        if b2 <= 0 or not np.isfinite(b2):
            log.warning("ML line search: non-positive curvature %g, taking no step", b2)
            return 0.0, change
        return -b1 / (2 * b2), change

    def _line_chunks(self, scan, probe, dprobe, obj, dobj) -> np.ndarray:
        """(b1, b2, change) of ``scan``'s whole-pixel windows: pod changes, their propagation and the
        likelihood's derivatives, every step of a cache-sized chunk on one thread (difframe.frame_threads)."""
        pods = self.fields[scan.label].shape[1]
        kind, renorm, tiny = self.likelihood, float(self.p.intensity_renormalization), self.tiny
        slices = frame_threads.chunks(scan.num_frames, 2 * self.fields[scan.label][0].nbytes)
        if scan.label not in self.line_stacks and len(self.line_buffers.get(pods, ((),))[0]) < slices[0].stop:
            self.line_buffers[pods] = [(fft.empty((slices[0].stop, pods, *scan.shape), self.model.cdtype),
                                        fft.empty((slices[0].stop, pods, *scan.shape), self.model.cdtype))
                                       for _ in range(frame_threads.workers())]

        def chunk(worker, sl):
            n = sl.stop - sl.start
            if scan.label in self.line_stacks:
                first, second = (stack[sl] for stack in self.line_stacks[scan.label])
            else:
                first, second = (buf[:n] for buf in self.line_buffers[pods][worker])
            self.ml_kernels.ml_line_pods_serial(probe, dprobe, obj, dobj, scan.corners[sl], first, second)
            scan.propagator.forward(first, overwrite=True)  # in place
            scan.propagator.forward(second, overwrite=True)
            sums = np.empty((n, 3))
            self.ml_kernels.ml_line_sums_serial(self.fields[scan.label][sl], first, second, scan.intensity[sl],
                                                scan.weights_of(sl), scan.scale_factors()[sl],
                                                scan.background_map(), kind, renorm, tiny, sums)
            return sums.sum(axis=0)

        return np.sum(frame_threads.run(chunk, slices), axis=0)


def _tall(views: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel windows (frames, modes, H, W) as one tall object (modes, frames x H, W) with frame n's window at
    row n x H, and those corners: the kernels written for windows of one object then take them (no copy for one
    object mode)."""
    n, n_obj, h, w = views.shape
    tall = np.ascontiguousarray(views.transpose(1, 0, 2, 3)).reshape(n_obj, n * h, w)
    return tall, np.stack([np.arange(n) * h, np.zeros(n, np.int64)], axis=1)


def _dot(a: dict, b: dict) -> float:
    return sum(float(np.vdot(a[k], b[k]).real) for k in a)


def factory(params, context):
    """Engine for ``engines.<label>`` with ``name = "ML"``; ``context`` is the PtychoModel."""
    return MaximumLikelihood(params, context)


@difframe.hookimpl
def difframe_engines():
    yield EngineSpec(name="ML", summary="maximum likelihood, conjugate gradients (Thibault & Guizar-Sicairos 2012)",
                     factory=factory, parameters=PARAMETERS)
