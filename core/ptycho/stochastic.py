"""What the stochastic (frame-by-frame) engines share: their step parameters and their epoch's scaffolding.

The PIE family (plugins/engines/pie.py), OPR (opr.py) and e3PIE
(multislice.py) visit every frame once per iteration (epoch) in a seeded
random order and update object and probe after each frame, the whole epoch
one numba call per scan (each engine's own kernel, built on
:func:`difframe.ptycho.projection.project_frame` and
:mod:`difframe.ptycho.frame_fft`).  Around that call they do the same
things, which live here:

- the parameters every one of them has (:data:`STEPS`: ``alpha``, ``beta``,
  ``probe_update_start``, ``seed``, ``floating_intensities``) and rPIE's
  regularised denominators (:data:`REGULARISED`), with :func:`schema` to give
  an engine its own defaults or wording without a second copy;
- :class:`StochasticEngine`: the refusal under MPI, the transfer functions
  the kernels propagate with, the seeded order, the per-frame sums each
  kernel fills, the Newton steps for background and frame scales after each
  scan's pass, probe support and object clipping after the epoch, and the
  common metrics (Fourier error, Poisson deviance, exit-wave change).

A subclass says what one scan's pass is (:meth:`StochasticEngine.visit`)
and may add work after each scan (:meth:`~StochasticEngine.scan_done`) and
after the epoch (:meth:`~StochasticEngine.epoch_done`, which returns extra
metrics).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from difframe import optics
from difframe.errors import UsageError
from difframe.ptycho import model as pm
from difframe.types import Parameter

STEPS = {
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


def schema(*parts: dict, **changes) -> dict:
    """One schema from ``parts`` (later ones win), with ``changes``: name -> a new default, or a dict of the
    Parameter fields to replace (``{"default": 0.5, "doc": "..."}``)."""
    merged = {k: v for part in parts for k, v in part.items()}
    unknown = set(changes) - set(merged)
    if unknown:
        raise KeyError(f"schema changes for parameters it does not have: {sorted(unknown)}")
    for name, change in changes.items():
        fields = change if isinstance(change, dict) else {"default": change}
        merged[name] = dataclasses.replace(merged[name], **fields)
    return merged


def transfer_functions(model: pm.PtychoModel, engine: str) -> dict:
    """Scan label -> what :mod:`difframe.ptycho.frame_fft` propagates with: an empty (0, 0) array in far field
    (the unitary FFT), the scan's transfer function in near field; any other propagator is refused."""
    out = {}
    for scan in model.scans:
        prop = scan.propagator
        if isinstance(prop, optics.FarField) and not prop.centred:
            out[scan.label] = np.empty((0, 0), model.cdtype)
        elif isinstance(prop, optics.NearField):
            out[scan.label] = np.ascontiguousarray(prop.kernel, dtype=model.cdtype)
        else:
            raise UsageError(f"engine {engine}: scan {scan.label!r} uses a propagator ({type(prop).__name__}) "
                             f"the {engine} kernel does not know")
    return out


@dataclasses.dataclass
class FrameSums:
    """What a kernel fills per frame of one scan's pass: err, dev, change (N,) and, when fitted, the
    background's (2, H, W) and the frame scales' (N, 2) likelihood gradient and curvature (else empty)."""

    err: np.ndarray
    dev: np.ndarray
    change: np.ndarray
    background: np.ndarray
    scales: np.ndarray

    @classmethod
    def for_scan(cls, scan, fit_background: bool, fit_scales: bool, rdtype) -> "FrameSums":
        n = scan.num_frames
        bg = (np.zeros((2, *scan.shape), rdtype) if fit_background and scan.background is not None
              else np.empty((0, 0, 0), rdtype))
        return cls(np.zeros(n), np.zeros(n), np.zeros(n), bg, np.zeros((n, 2)) if fit_scales else np.empty((0, 2)))


class StochasticEngine:
    """An engine that updates after every frame, on a :class:`difframe.ptycho.model.PtychoModel`.

    Subclasses set :attr:`serial_reason` (why the engine runs on one process,
    said when it is refused under mpiexec) and implement :meth:`visit`.
    ``params`` need :data:`STEPS` and the model terms' switches.
    """

    serial_reason = "updates object and probe frame by frame"

    def __init__(self, name: str, params, model: pm.PtychoModel):
        self.name = name
        self.p = params
        self.model = model
        self.iteration = 0

    # -- what a subclass provides -----------------------------------------------------------------

    def setup(self) -> None:
        """Checks and state of the subclass, after the common ones (called by :meth:`initialize`)."""

    def visit(self, scan, order: np.ndarray, sums: FrameSums, update_probe: bool) -> None:
        """One pass over ``scan``'s frames in ``order``, filling ``sums``."""
        raise NotImplementedError

    def scan_done(self, scan, update_probe: bool) -> None:
        """After ``scan``'s pass and its background and scale steps."""

    def epoch_done(self, update_probe: bool) -> dict:
        """After every scan's pass, before probe support and object clipping; returns extra metrics."""
        return {}

    def frame_order(self, scan) -> np.ndarray:
        """The order ``scan``'s frames are visited in this epoch (default: a permutation from the seeded
        generator, drawn anew every epoch)."""
        return self.rng.permutation(scan.num_frames).astype(np.int64)

    def extra_metrics(self) -> dict:
        """Metrics after the constraints (default: the probe modes' powers, orthogonalised when asked)."""
        return pm.orthogonalise_probes(self.model) if self.p.orthogonal_modes else pm.mode_powers(self.model)

    # -- the engine protocol ----------------------------------------------------------------------

    def initialize(self) -> None:
        m, p = self.model, self.p
        if m.ranks.size > 1:
            raise UsageError(f"engine {self.name}: {self.name} {self.serial_reason} and runs on one process only, "
                             f"not under mpiexec ({m.ranks.size} ranks); use DM, RAAR or ML there, or run "
                             f"{self.name} without mpiexec")
        self.rng = np.random.default_rng(int(p.seed))
        self.tiny = float(np.finfo(m.rdtype).tiny) * 1e6
        self.transfer = transfer_functions(m, self.name)
        if p.floating_intensities:
            for scan in m.scans:
                if scan.scale is None:
                    scan.scale = np.ones(scan.num_frames, m.rdtype)
        _, self.points = m.total_measured()
        self.supports = {pid: pm.probe_support(st.data.shape[-2:], p.probe_support, m.rdtype)
                         for pid, st in m.probes.items()}
        self.setup()

    def iterate(self, n: int) -> list[dict]:
        out = []
        for _ in range(n):
            out.append(self._epoch())
            self.iteration += 1
        return out

    def finalize(self) -> dict:
        return {"engine": self.name, "iterations": self.iteration}

    def _epoch(self) -> dict:
        m, p = self.model, self.p
        update_probe = self.iteration >= p.probe_update_start
        fit_bg = p.fit_background and self.iteration >= p.background_update_start
        err_sum = dev_sum = change_sum = 0.0
        frames = 0
        for scan in m.scans:
            sums = FrameSums.for_scan(scan, fit_bg, p.floating_intensities, m.rdtype)
            self.visit(scan, self.frame_order(scan), sums, update_probe)
            if len(sums.background):
                pm.newton_background(scan, sums.background[None], m.ranks)
            if len(sums.scales):
                pm.newton_scales(scan, sums.scales, m.ranks)
            self.scan_done(scan, update_probe)
            err_sum += float(sums.err.sum())
            dev_sum += float(sums.dev.sum())
            change_sum += float(sums.change.sum())
            frames += scan.num_frames
        metrics = {"fourier_error": err_sum / max(frames, 1), "deviance": dev_sum / max(self.points, 1),
                   "exit_change": change_sum / max(frames, 1)}
        metrics.update(self.epoch_done(update_probe))
        for pid, st in m.probes.items():
            if self.supports[pid] is not None:
                st.data *= self.supports[pid]
        for st in m.objects.values():
            pm.clip_amplitude(st.data, p.clip_object)
        metrics.update(self.extra_metrics())
        return metrics
