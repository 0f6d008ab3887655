"""The PIE family (``ePIE``, ``rPIE``, ``mPIE``): stochastic, frame-by-frame object and probe updates.

One plugin, three engine names, one machinery: every iteration (epoch) visits
each scan's frames once in a random order (``seed``: reproducible), and for
each frame projects its pods onto the measured moduli and updates object and
probe at once (plugins/engines/pie_kernels.py, the whole epoch in one numba
call, FFTs included).  The variants differ in the update's denominator and
in momentum:

- ``ePIE`` (Maiden & Rodenburg 2009): step ``alpha`` conj(P) / max|P|^2 for
  the object, ``beta`` conj(O) / max|O|^2 for the probe.
- ``rPIE`` (Maiden, Johnson & Li 2017): denominators
  (1 - r) |P|^2 + r max|P|^2 (``object_regularisation`` r, likewise
  ``probe_regularisation``): strong steps where the probe is bright, damped
  where it is dim.
- ``mPIE``: rPIE plus momentum: after each epoch the change of object and
  probe over the epoch feeds a velocity v <- momentum v + change, and object
  and probe take a further step momentum x v (Nesterov's form).

PtyLab calls the step sizes betaObject/betaProbe and the regularisations
alphaObject/alphaProbe; ptypy's ePIE calls the step sizes alpha/beta, as here.
The model's background and frame scales enter the projection and are fitted
by one Newton step per epoch (from the deviance of each frame as visited);
probe support, object clipping and orthogonal probe modes are applied after
each epoch.  Under MPI the PIE engines refuse to run: a sequential pass over
frames held by several processes has no exact parallel form.
"""

from __future__ import annotations

import logging

import numpy as np

import difframe
from difframe import optics
from difframe.errors import ParameterError, UsageError
from difframe.ptycho import model as pm
from difframe.types import EngineSpec, Parameter

log = logging.getLogger("difframe.engines.pie")

COMMON = {
    "alpha": Parameter(type="float", default=1.0, lowlim=0.0, help="Object update step size",
                       doc="The object moves by alpha x conj(P) dpsi / D_O per frame (D_O: the variant's "
                           "denominator). ptypy's ePIE alpha; PtyLab's betaObject."),
    "beta": Parameter(type="float", default=1.0, lowlim=0.0, help="Probe update step size",
                      doc="The probe moves by beta x conj(O) dpsi / D_P per frame. ptypy's ePIE beta; PtyLab's "
                          "betaProbe."),
    "probe_update_start": Parameter(type="int", default=1, lowlim=0,
                                    help="Number of iterations (epochs) before probe update starts"),
    "seed": Parameter(type="int", default=0, lowlim=0, help="Seed of the random order the frames are visited in",
                      doc="Each epoch visits every frame once in an order drawn from a generator seeded with "
                          "this value when the engine starts: the same seed gives the same reconstruction."),
    "floating_intensities": Parameter(
        type="bool", default=False, help="Fit a per-frame intensity scale (incident flux changes)",
        doc="Each frame's model intensity has its own factor, one Newton step of the Poisson likelihood per "
            "epoch from the frame's deviance as visited, kept at mean 1."),
}
REGULARISED = {
    "object_regularisation": Parameter(
        type="float", default=0.1, lowlim=0.0, uplim=1.0, help="rPIE's object denominator weight",
        doc="D_O = (1 - r) |P|^2 + r max|P|^2: 1 is ePIE's max|P|^2, small values take larger steps where "
            "the probe is bright. PtyLab's alphaObject; Maiden et al. 2017 suggest 0.05 to 0.25."),
    "probe_regularisation": Parameter(
        type="float", default=0.5, lowlim=0.0, uplim=1.0, help="rPIE's probe denominator weight",
        doc="D_P = (1 - r) |O|^2 + r max|O|^2 (PtyLab's alphaProbe)."),
}
MOMENTUM = {
    "momentum": Parameter(
        type="float", default=0.5, lowlim=0.0, help="mPIE momentum (friction), in [0, 1)",
        doc="After each epoch: v <- momentum x v + (change of object and probe over the epoch), then object "
            "and probe += momentum x v. 0 is rPIE; values of 1 or more never forget a step and are refused."),
}


def _with_defaults(schema: dict, **defaults) -> dict:
    from dataclasses import replace

    return {k: replace(v, default=defaults[k]) if k in defaults else v for k, v in schema.items()}


# defaults measured on tests' simulated scan (49 frames, 1e5 photons; docs/ptycho-engines.md): the steps that
# reach the lowest object error in 40 epochs, ePIE keeping ptypy's 1 and 1
VARIANTS = {
    "ePIE": ("extended ptychographical iterative engine (Maiden & Rodenburg 2009), frames in random order",
             {**COMMON}),
    "rPIE": ("regularised PIE (Maiden, Johnson & Li 2017), frames in random order",
             _with_defaults({**COMMON, **REGULARISED}, alpha=0.5, beta=0.5)),
    "mPIE": ("momentum-accelerated rPIE (Maiden, Johnson & Li 2017), frames in random order",
             _with_defaults({**COMMON, **REGULARISED, **MOMENTUM}, alpha=0.5, beta=0.5, object_regularisation=0.25,
                            probe_regularisation=1.0)),
}


class PIE:
    """ePIE, rPIE or mPIE on a :class:`difframe.ptycho.model.PtychoModel`."""

    def __init__(self, variant: str, params, model: pm.PtychoModel):
        self.variant = variant
        self.p = params
        self.model = model
        self.iteration = 0
        momentum = float(params.get("momentum", 0.0))
        if not 0.0 <= momentum < 1.0:
            raise ParameterError(f"engine.{variant}.momentum = {momentum!r}: expected a value in [0, 1) "
                                 f"(1 or more never forgets a step and diverges)")

    def initialize(self) -> None:
        from difframe.plugins.engines import pie_kernels

        m = self.model
        if m.ranks.size > 1:
            raise UsageError(f"engine {self.variant}: the PIE engines update object and probe frame by frame and "
                             f"run on one process only, not under mpiexec ({m.ranks.size} ranks); use DM, RAAR "
                             f"or ML there, or run {self.variant} without mpiexec")
        self.kernels = pie_kernels
        self.rng = np.random.default_rng(int(self.p.seed))
        self.tiny = float(np.finfo(m.rdtype).tiny) * 1e6
        self.transfer = {}
        for scan in m.scans:
            prop = scan.propagator
            if isinstance(prop, optics.FarField) and not prop.centred:
                self.transfer[scan.label] = np.empty((0, 0), m.cdtype)
            elif isinstance(prop, optics.NearField):
                self.transfer[scan.label] = np.ascontiguousarray(prop.kernel, dtype=m.cdtype)
            else:
                raise UsageError(f"engine {self.variant}: scan {scan.label!r} uses a propagator "
                                 f"({type(prop).__name__}) the PIE kernels do not know")
            if self.p.floating_intensities and scan.scale is None:
                scan.scale = np.ones(scan.num_frames, m.rdtype)
        power, self.points = m.total_measured()
        self.supports = {pid: pm.probe_support(st.data.shape[-2:], self.p.probe_support, m.rdtype)
                         for pid, st in m.probes.items()}
        self.reg = (float(self.p.get("object_regularisation", 1.0)), float(self.p.get("probe_regularisation", 1.0)))
        self.momentum = float(self.p.get("momentum", 0.0))
        self.velocity = None  # mPIE: (kind, id) -> velocity, and -> the state at the last epoch's end
        self.previous = None

    def iterate(self, n: int) -> list[dict]:
        out = []
        for _ in range(n):
            out.append(self._epoch())
            self.iteration += 1
        return out

    def finalize(self) -> dict:
        self.velocity = self.previous = None
        return {"engine": self.variant, "iterations": self.iteration}

    def _epoch(self) -> dict:
        m, p, k = self.model, self.p, self.kernels
        update_probe = self.iteration >= p.probe_update_start
        fit_bg = p.fit_background and self.iteration >= p.background_update_start
        real = m.rdtype.type
        err_sum = dev_sum = change_sum = 0.0
        frames = 0
        for scan in m.scans:
            n = scan.num_frames
            order = self.rng.permutation(n).astype(np.int64)
            err, dev, change = np.zeros(n), np.zeros(n), np.zeros(n)
            bg_sums = (np.zeros((2, *scan.shape), m.rdtype) if fit_bg and scan.background is not None
                       else np.empty((0, 0, 0), m.rdtype))
            scale_sums = np.zeros((n, 2)) if p.floating_intensities else np.empty((0, 2))
            k.pie_epoch(m.probes[scan.probe_id].data, m.objects[scan.object_id].data, scan.corners, order,
                        scan.intensity, scan.weights_of(slice(None)), scan.scale_factors(), scan.background_map(),
                        self.transfer[scan.label], real(p.alpha * scan.object_power),
                        real(p.beta * scan.probe_power), real(self.reg[0]), real(self.reg[1]), True, update_probe,
                        self.tiny, err, dev, change, bg_sums, scale_sums)
            if len(bg_sums):
                pm.newton_background(scan, bg_sums[None], m.ranks)
            if len(scale_sums):
                pm.newton_scales(scan, scale_sums, m.ranks)
            err_sum += float(err.sum())
            dev_sum += float(dev.sum())
            change_sum += float(change.sum())
            frames += n
        if self.momentum > 0:
            self._momentum(update_probe)
        for pid, st in m.probes.items():
            if self.supports[pid] is not None:
                st.data *= self.supports[pid]
        for st in m.objects.values():
            pm.clip_amplitude(st.data, p.clip_object)
        metrics = {"fourier_error": err_sum / max(frames, 1), "deviance": dev_sum / max(self.points, 1),
                   "exit_change": change_sum / max(frames, 1)}
        metrics.update(self._orthogonalise() if p.orthogonal_modes else pm.mode_powers(m))
        return metrics

    def _momentum(self, update_probe: bool) -> None:
        """mPIE: v <- eta v + (state - state at the last epoch's end); state += eta v, for every object and
        (once the probe moves) every probe.  The probes' velocities and last states are kept per probe id so
        that the mode orthogonalisation mixes them with the modes."""
        m, eta = self.model, self.momentum
        states = {("object", oid): st.data for oid, st in m.objects.items()}
        if update_probe:
            states.update({("probe", pid): st.data for pid, st in m.probes.items()})
        if self.previous is None or set(self.previous) != set(states):
            self.previous = {key: a.copy() for key, a in states.items()}
            self.velocity = {key: np.zeros_like(a) for key, a in states.items()}
            return
        for key, a in states.items():
            v, prev = self.velocity[key], self.previous[key]
            v *= eta
            v += a
            v -= prev
            a += eta * v
            prev[...] = a

    def _orthogonalise(self) -> dict:
        """Orthogonal probe modes; mPIE's probe velocities and last states are mixed alike."""
        memory = ()
        if self.previous is not None and any(kind == "probe" for kind, _ in self.previous):
            memory = tuple({pid: store[("probe", pid)] for pid in self.model.probes}
                           for store in (self.previous, self.velocity))
        return pm.orthogonalise_probes(self.model, probe_arrays=memory)


def _factory(variant):
    def factory(params, context):
        """Engine for ``engines.<label>`` with ``name = variant``; ``context`` is the PtychoModel."""
        return PIE(variant, params, context)
    return factory


@difframe.hookimpl
def difframe_engines():
    for name, (summary, parameters) in VARIANTS.items():
        yield EngineSpec(name=name, summary=summary, factory=_factory(name), parameters=parameters)
