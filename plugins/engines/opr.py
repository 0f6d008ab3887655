"""Orthogonal probe relaxation (``OPR``, Odstrcil et al. 2016) on a stochastic rPIE pass.

When the illumination changes during a scan (fly scans, drifting or
vibrating optics) one probe cannot explain every frame.  OPR gives each frame
its own probe and keeps the stack of them low-rank: P_n = P + sum_k w_nk U_k,
the shared probe P (the frames' mean, held in the model's probe storage) and
K - 1 orthogonal modes U_k of the frames' deviations from it, with complex
weights w_nk per frame: K modes in all (``num_modes``).

The epoch is rPIE's (random order, ``seed``), fused in numba
(plugins/engines/opr_kernels.py): each frame's probe update goes to the
shared probe, so every later frame profits as in rPIE, and to the frame's own
deviation.  After each epoch the deviations lose their mean (the shared
probe already took it) and are replaced by their rank K - 1 truncated SVD:
what is left out is mostly the noise of single-frame updates.  For the first
``start`` epochs all frames share one probe (plain rPIE).  Plots, autosaves,
position refinement and a following engine see the shared probe; the
per-frame deviations live in the engine only and are not written to the
.ptyr.  One probe mode and one object mode; one process only (the (frames,
H, W) deviations are kept whole, and the pass is sequential).
"""

from __future__ import annotations

import logging

import numpy as np

import difframe
from difframe.errors import ParameterError, UsageError
from difframe.limits import check_allocation
from difframe.ptycho import model as pm
from difframe.ptycho.stochastic import REGULARISED, STEPS, StochasticEngine, schema
from difframe.types import EngineSpec, Parameter

log = logging.getLogger("difframe.engines.opr")

NAME = "OPR"
PARAMETERS = schema(
    {"num_modes": Parameter(
        type="int", default=3, lowlim=1, help="Number of orthogonal probe modes K the frames' probes are built of",
        doc="Each frame's probe is the shared probe plus a weighted sum of K - 1 orthogonal modes of the frames' "
            "deviations from it (the rank K - 1 truncated SVD of the deviations after each epoch). 1 is rPIE; a "
            "probe changing smoothly during the scan needs 2 to 5; more keeps noise. At most the number of "
            "frames of every scan."),
     "start": Parameter(
        type="int", default=2, lowlim=0, help="Epochs of one shared probe before the relaxation starts",
        doc="The first epochs are plain rPIE with one probe for all frames, so the object and the shared "
            "probe settle before each frame's probe may differ.")},
    STEPS, REGULARISED,
    alpha={"default": 0.5, "doc": "The object moves by alpha x conj(P_n) dpsi / D_O per frame (rPIE's "
                                  "denominator)."},
    beta={"default": 0.5, "doc": "Each frame's update beta x conj(O) dpsi / D_P goes to the shared probe and "
                                 "(once relaxed) to the frame's own deviation."},
    object_regularisation={"doc": "D_O = (1 - r) |P|^2 + r max|P|^2: 1 is ePIE's max|P|^2 (as engine.rPIE)."},
    probe_regularisation={"default": 0.2, "doc": "D_P = (1 - r) |O|^2 + r max|O|^2 (as engine.rPIE)."},
    seed={"doc": "The same seed gives the same reconstruction."},
)


def truncate(stack: np.ndarray, k: int, oversample: int = 6, power_steps: int = 2) -> float:
    """Replace ``stack`` (N, H, W) in place by its rank-k approximation; returns the discarded power.

    A randomised SVD (Halko, Martinsson & Tropp 2011: a seeded Gaussian test
    matrix of k + ``oversample`` columns, ``power_steps`` subspace iterations)
    costs O(N H W k) where an exact SVD costs O(N^2 H W): at 1000 frames of
    128 x 128 that is the difference between milliseconds and seconds per
    epoch.  With N <= k + oversample it is the exact truncated SVD.
    """
    flat = stack.reshape(stack.shape[0], -1)
    width = min(k + oversample, len(flat))
    basis = np.random.default_rng(0).standard_normal((len(flat), width)).astype(flat.dtype)
    for _ in range(power_steps + 1):
        basis, _ = np.linalg.qr(flat @ (basis.conj().T @ flat).conj().T)
    u, s, vh = np.linalg.svd(basis.conj().T @ flat, full_matrices=False)
    total = float(np.vdot(flat, flat).real)
    flat[...] = (basis @ u[:, :k]) @ (s[:k, None] * vh[:k])
    return max(total - float((s[:k] ** 2).sum()), 0.0)


class OPR(StochasticEngine):
    """Orthogonal probe relaxation on a :class:`difframe.ptycho.model.PtychoModel`."""

    serial_reason = "keeps every frame's probe"

    def __init__(self, params, model: pm.PtychoModel):
        super().__init__(NAME, params, model)

    def setup(self) -> None:
        from difframe.plugins.engines import opr_kernels

        m, p = self.model, self.p
        self.kernels = opr_kernels
        for scan in m.scans:
            if scan.num_frames < p.num_modes:
                raise ParameterError(f"engine.{NAME}.num_modes = {p.num_modes}: more modes than the "
                                     f"{scan.num_frames} frames of scan {scan.label!r}")
            probe, obj = m.probes[scan.probe_id].data, m.objects[scan.object_id].data
            if probe.shape[0] != 1 or obj.shape[0] != 1:
                raise UsageError(f"engine {NAME}: scan {scan.label!r} has {probe.shape[0]} probe and {obj.shape[0]} "
                                 f"object modes; OPR relaxes one coherent probe per frame: set "
                                 f"scan.coherence.num_probe_modes and num_object_modes to 1")
            check_allocation(scan.num_frames * probe.nbytes, f"engine {NAME}: the per-frame probes of scan "
                             f"{scan.label!r}", UsageError)
        self.deviations = {}  # scan label -> (frames, H, W): each frame's probe minus the shared one
        self.discarded = 0.0

    def finalize(self) -> dict:
        self.deviations = {}
        return super().finalize()

    def probes_of(self, label: str) -> np.ndarray:
        """Scan ``label``'s per-frame probes (frames, H, W): the shared probe plus each frame's deviation."""
        scan = next(s for s in self.model.scans if s.label == label)
        shared = self.model.probes[scan.probe_id].data
        return shared + self.deviations.get(label, np.zeros((scan.num_frames, 1, 1), shared.dtype))

    def _relaxing(self) -> bool:
        return self.iteration >= self.p.start and self.p.num_modes > 1

    def visit(self, scan, order, sums, update_probe) -> None:
        m, p = self.model, self.p
        n = scan.num_frames
        relax = self._relaxing()
        if relax and scan.label not in self.deviations:
            log.info("engine %s: scan %s's %d frames get their own probes from epoch %d (%d modes)", NAME,
                     scan.label, n, self.iteration, p.num_modes)
            self.deviations[scan.label] = np.zeros((n, *scan.shape), m.cdtype)
        deviations = self.deviations.get(scan.label, np.zeros((1, *scan.shape), m.cdtype))
        which = np.arange(n, dtype=np.int64) if relax else np.zeros(n, np.int64)
        real = m.rdtype.type
        self.kernels.opr_epoch(m.probes[scan.probe_id].data[0], deviations, which, relax,
                               m.objects[scan.object_id].data[0], scan.corners, order, scan.intensity,
                               scan.weights_of(slice(None)), scan.scale_factors(), scan.background_map(),
                               self.transfer[scan.label], real(p.alpha * scan.object_power),
                               real(p.beta * scan.probe_power), real(p.object_regularisation),
                               real(p.probe_regularisation), update_probe, self.tiny, sums.err, sums.dev,
                               sums.change, sums.background, sums.scales)

    def scan_done(self, scan, update_probe: bool) -> None:
        if self._relaxing() and update_probe:
            self.discarded += self._relax(self.model.probes[scan.probe_id].data,
                                          self.deviations[scan.label]) * scan.num_frames
        if self.supports[scan.probe_id] is not None and scan.label in self.deviations:
            self.deviations[scan.label] *= self.supports[scan.probe_id]

    def epoch_done(self, update_probe: bool) -> dict:
        frames = sum(scan.num_frames for scan in self.model.scans)
        discarded, self.discarded = self.discarded, 0.0
        return {"opr_discarded": discarded / max(frames, 1)}

    def extra_metrics(self) -> dict:
        return {}

    def _relax(self, shared: np.ndarray, deviations: np.ndarray) -> float:
        """Deviations without their mean (the shared probe took every update already), cut to num_modes - 1
        components.  Returns the discarded share of the frames' probe power (metric opr_discarded)."""
        deviations -= deviations.mean(axis=0, dtype=np.complex128).astype(deviations.dtype)
        lost = truncate(deviations, int(self.p.num_modes) - 1)
        kept = float(np.vdot(shared, shared).real) * len(deviations) + float(np.vdot(deviations, deviations).real)
        return lost / max(kept + lost, 1e-300)


def factory(params, context):
    """Engine for ``engines.<label>`` with ``name = "OPR"``; ``context`` is the PtychoModel."""
    return OPR(params, context)


@difframe.hookimpl
def difframe_engines():
    yield EngineSpec(name=NAME, summary="orthogonal probe relaxation (Odstrcil et al. 2016): a probe per frame "
                                        "on K shared modes, rPIE epochs", factory=factory, parameters=PARAMETERS)
