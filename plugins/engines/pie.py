"""The PIE family (``ePIE``, ``rPIE``, ``mPIE``): stochastic, frame-by-frame object and probe updates.

One plugin, three engine names, one machinery: every iteration (epoch) visits
each scan's frames once in a random order (``seed``: reproducible), and for
each frame projects its pods onto the measured moduli and updates object and
probe at once (plugins/engines/pie_kernels.py, the whole epoch in one numba
call, FFTs included).  ePIE's first epoch (``centre_out_epochs``) visits the
frames from the scan's centre outward instead, so that the object grows from
the flat start as one connected region.  The variants differ in the update's
denominator and in momentum:

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
frames held by several processes has no exact parallel form.  The parameters
and the epoch's scaffolding are the core's :mod:`difframe.ptycho.stochastic`,
which OPR and e3PIE share.
"""

from __future__ import annotations

import logging

import numpy as np

import difframe
from difframe.errors import ParameterError
from difframe.ptycho import frame_fft
from difframe.ptycho import model as pm
from difframe.ptycho.stochastic import REGULARISED, STEPS, StochasticEngine, schema
from difframe.types import EngineSpec, Parameter

log = logging.getLogger("difframe.engines.pie")

MOMENTUM = {
    "momentum": Parameter(
        type="float", default=0.5, lowlim=0.0, help="mPIE momentum (friction), in [0, 1)",
        doc="After each epoch: v <- momentum x v + (change of object and probe over the epoch), then object "
            "and probe += momentum x v. 0 is rPIE; values of 1 or more never forget a step and are refused."),
}

ORDER = {
    "centre_out_epochs": Parameter(
        type="int", default=0, lowlim=0,
        help="Number of first epochs that visit the frames from the scan's centre outward",
        doc="In these epochs each scan's frames are visited in order of their distance from the centroid of "
            "the scan's positions (nearest first) instead of in random order, so that every frame overlaps "
            "object its predecessors have already reconstructed and the object grows as one connected, "
            "phase-consistent region from the starting guess (the original PIE's sweep). In random order "
            "frames far apart start the flat object as separate patches, each with its own phase offset and "
            "ramp fitted against the wrong starting probe, and the later epochs take long to join them: on "
            "the moonflower-like scan (161 frames, 1e8 photons, from a disc probe) one such first epoch "
            "takes ePIE's object error after 107 epochs from 0.021..0.036 (seeds 0..3) to 0.016..0.017 "
            "(seeds 0..2), whole-pixel from 0.032..0.058 to 0.030..0.033 (docs/ptycho-engines.md). The "
            "random generator is drawn in these epochs too, so later epochs keep their orders."),
}

# defaults measured on tests' simulated scan (49 frames, 1e5 photons; docs/ptycho-engines.md): the steps that
# reach the lowest object error in 40 epochs, ePIE keeping ptypy's 1 and 1
VARIANTS = {
    "ePIE": ("extended ptychographical iterative engine (Maiden & Rodenburg 2009), frames in random order",
             schema(STEPS, ORDER, centre_out_epochs=1)),
    "rPIE": ("regularised PIE (Maiden, Johnson & Li 2017), frames in random order",
             schema(STEPS, REGULARISED, ORDER, alpha=0.5, beta=0.5)),
    "mPIE": ("momentum-accelerated rPIE (Maiden, Johnson & Li 2017), frames in random order",
             schema(STEPS, REGULARISED, MOMENTUM, ORDER, alpha=0.5, beta=0.5, object_regularisation=0.25,
                    probe_regularisation=1.0)),
}


class PIE(StochasticEngine):
    """ePIE, rPIE or mPIE on a :class:`difframe.ptycho.model.PtychoModel`."""

    def __init__(self, variant: str, params, model: pm.PtychoModel):
        super().__init__(variant, params, model)
        self.variant = variant
        momentum = float(params.get("momentum", 0.0))
        if not 0.0 <= momentum < 1.0:
            raise ParameterError(f"engine.{variant}.momentum = {momentum!r}: expected a value in [0, 1) "
                                 f"(1 or more never forgets a step and diverges)")

    def setup(self) -> None:
        from difframe.plugins.engines import pie_kernels

        self.kernels = pie_kernels
        self.reg = (float(self.p.get("object_regularisation", 1.0)), float(self.p.get("probe_regularisation", 1.0)))
        self.momentum = float(self.p.get("momentum", 0.0))
        self.velocity = None  # mPIE: (kind, id) -> velocity, and -> the state at the last epoch's end
        self.previous = None

    def finalize(self) -> dict:
        self.velocity = self.previous = None
        return super().finalize()

    def frame_order(self, scan) -> np.ndarray:
        """The seeded random order, or in the first ``centre_out_epochs`` epochs the frames by distance from the
        centroid of the scan's positions (nearest first; the generator is drawn all the same)."""
        order = super().frame_order(scan)
        if self.iteration >= int(self.p.get("centre_out_epochs", 0)):
            return order
        offset = scan.corners - scan.corners.mean(axis=0)
        return np.argsort(np.hypot(offset[:, 0], offset[:, 1]), kind="stable").astype(np.int64)

    def visit(self, scan, order, sums, update_probe) -> None:
        m, p = self.model, self.p
        real = m.rdtype.type
        probe, obj = m.probes[scan.probe_id].data, m.objects[scan.object_id].data
        self.kernels.pie_epoch(probe, obj, scan.corners, order, scan.intensity, scan.weights_of(slice(None)),
                               scan.scale_factors(), scan.background_map(), self.transfer[scan.label],
                               real(p.alpha * scan.object_power), real(p.beta * scan.probe_power),
                               real(self.reg[0]), real(self.reg[1]), True, update_probe, self.tiny, sums.err,
                               sums.dev, sums.change, sums.background, sums.scales,
                               frame_fft.plans((len(probe) * len(obj), *scan.shape), m.cdtype))

    def epoch_done(self, update_probe: bool) -> dict:
        if self.momentum > 0:
            self._momentum(update_probe)
        return {}

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

    def extra_metrics(self) -> dict:
        """Orthogonal probe modes; mPIE's probe velocities and last states are mixed alike."""
        if not self.p.orthogonal_modes:
            return pm.mode_powers(self.model)
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
