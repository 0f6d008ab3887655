"""Orthogonal probe relaxation (``OPR``, Odstrcil et al. 2016) on a stochastic rPIE pass.

When the illumination changes during a scan (fly scans, drifting or
vibrating optics) one probe cannot explain every frame.  OPR gives each frame
its own probe and keeps the stack of them low-rank: P_n = P + sum_k w_nk U_k,
the shared probe P (the frames' mean, held in the model's probe storage) and
K - 1 orthogonal modes U_k of the frames' deviations from it, with complex
weights w_nk per frame: K modes in all (``num_modes``).

The epoch is rPIE's (random order, ``seed``), fused in numba
(plugins/engines/opr_kernels.py): each frame's probe update goes to the
shared probe, so every later frame profits as in rPIE, and ``deviation_step``
times to the frame's own deviation.  After each epoch the deviations lose
their mean (the shared probe already took it) and are replaced by their rank
K - 1 truncated SVD: what is left out is mostly the noise of single-frame
updates.  The frames' weights are then smoothed along the scan's frame order
(``weight_smoothing`` frames, a quadratic local fit): a drifting probe keeps
them, while the object's errors that the frames' own probes pick up, which
change from frame to frame with the position, are damped.  For the first ``start`` epochs all frames share one probe (plain
rPIE).  A frame's deviation learns from that frame alone, once per epoch,
while the object learns from every frame: so the deviation's step is large
and, for the first ``early_epochs`` relaxed epochs, the object's small
(``early_factor`` x ``alpha``), else the object absorbs the drift before the
frames' probes can follow it; then the object moves at rPIE's ``alpha``,
which a steady probe needs to converge as rPIE does.  A steady probe is
also told apart early (``min_shape_share``, after ``shape_test`` epochs): when
the frames' deviations are little but a complex scale of the shared probe,
which trades with a slow envelope of the object, they are dropped and the
scan goes on with rPIE's epoch (plugins/engines/pie_kernels.py) at rPIE's
cost (docs/ptycho-engines.md, OPR, has the measurements).  Plots, position refinement and a following engine of
another kind see the shared probe; the .ptyr and autosaves also hold the
modes and each frame's weights (``content/probe_opr/<scan>``), from which a
resumed run (``modes_file``) or a later OPR engine continues.  One probe
mode and one object mode; one process only (the (frames, H, W) deviations
are kept whole, and the pass is sequential).
"""

from __future__ import annotations

import functools
import logging

import numpy as np

import difframe
from difframe.errors import DataError, ParameterError, UsageError
from difframe.limits import check_allocation
from difframe.ptycho import frame_fft
from difframe.ptycho import model as pm
from difframe.ptycho.stochastic import REGULARISED, STEPS, StochasticEngine, schema
from difframe.types import EngineSpec, Parameter

log = logging.getLogger("difframe.engines.opr")

NAME = "OPR"
TERMS = "probe_opr"  # content/probe_opr/<scan>/{modes, weights} in the .ptyr
# defaults measured on the drifting- and steady-probe truth scans of tests/plugins/engines/test_opr.py
# (docs/ptycho-engines.md): the object step is EARLY_FACTOR x ALPHA while the frames' probes are learnt, then
# rPIE's ALPHA
ALPHA, EARLY_FACTOR, EARLY_EPOCHS, DEVIATION_STEP, START, WEIGHT_SMOOTHING = 0.5, 0.1, 10, 3.0, 0, 15
MIN_SHAPE_SHARE, SHAPE_TEST = 0.1, 2
PARAMETERS = schema(
    {"num_modes": Parameter(
        type="int", default=2, lowlim=1, help="Number of orthogonal probe modes K the frames' probes are built of",
        doc="Each frame's probe is the shared probe plus a weighted sum of K - 1 orthogonal modes of the frames' "
            "deviations from it (the rank K - 1 truncated SVD of the deviations after each epoch). 1 is rPIE; a "
            "probe changing smoothly during the scan needs 2 to 5. Modes the drift does not need are not empty: "
            "they take per-frame tilts of the probe that trade against slow phase and amplitude errors of the "
            "object, which the data hardly see (on the tests' scans K = 3 nearly doubles K = 2's object error, with a "
            "steady probe and with a rank-2 drift); raise K only while the deviance falls. At most the number of "
            "frames of every scan."),
     "start": Parameter(
        type="int", default=START, lowlim=0, help="Epochs of one shared probe before the relaxation starts",
        doc="The first epochs are plain rPIE with one probe for all frames. 0 relaxes from the first epoch: "
            "epochs with one probe let the object absorb the probe's drift, which the relaxation must then undo "
            "(on the tests' drifting scan 2 such epochs cost a third more deviance after 40).")},
    STEPS, REGULARISED,
    alpha={"default": ALPHA, "doc": "The object moves by alpha x conj(P_n) dpsi / D_O per frame (rPIE's "
                                    "denominator) after the first early_epochs relaxed epochs (early_factor x alpha "
                                    "before). rPIE's 0.5: by then the frames' probes follow the drift and the "
                                    "object can take every frame's update at rPIE's pace."},
    beta={"default": 0.5, "doc": "Each frame's update beta x conj(O) dpsi / D_P goes to the shared probe and "
                                 "(once relaxed) to the frame's own deviation."},
    object_regularisation={"doc": "D_O = (1 - r) |P|^2 + r max|P|^2: 1 is ePIE's max|P|^2 (as engine.rPIE)."},
    probe_regularisation={"default": 0.2, "doc": "D_P = (1 - r) |O|^2 + r max|O|^2 (as engine.rPIE)."},
    seed={"doc": "The same seed gives the same reconstruction."},
)
PARAMETERS["early_factor"] = Parameter(
    type="float", default=EARLY_FACTOR, lowlim=0.0, help="Object step factor while the frames' probes are learnt",
    doc="For the first early_epochs relaxed epochs the object moves by early_factor x alpha: a frame's own probe "
        "learns from that frame alone, once per epoch, while the object learns from every frame, so with a large "
        "object step the object absorbs the probe's drift before the frames' probes can follow it (on the tests' "
        "drifting scan alpha 0.5 from the start leaves 8 times the deviance after 40 epochs).")
PARAMETERS["early_epochs"] = Parameter(
    type="int", default=EARLY_EPOCHS, lowlim=0, help="Relaxed epochs with the object step early_factor x alpha",
    doc="Counted from the first relaxed epoch (start); after them the object moves by alpha. With the small step "
        "kept for ever (the former default) the object converges as slowly as rPIE's with that step: on the "
        "tests' steady-probe scan 3.8 times rPIE's object error after 40 epochs (1.75 with 10 early epochs). 0: "
        "alpha from the start. Not applied "
        "when the frames resume with stored probes (modes_file, a previous OPR engine): those are learnt already.")
PARAMETERS["deviation_step"] = Parameter(
    type="float", default=DEVIATION_STEP, lowlim=0.0, help="Step of each frame's own probe, relative to beta",
    doc="Frame n's probe update beta x conj(O) dpsi / D_P goes to the shared probe once and to the frame's own "
        "deviation this many times: a frame's deviation learns from that frame alone, once per epoch, while the "
        "shared probe and the object learn from every frame, so it needs the larger step (Odstrcil et al. 2016 "
        "update the per-frame probes before the SVD; tests/plugins/engines/test_opr.py measures the choice).")
PARAMETERS["weight_smoothing"] = Parameter(
    type="int", default=WEIGHT_SMOOTHING, lowlim=0, help="Frames over which each frame's mode weights are smoothed",
    doc="After each epoch's truncation the weights of every frame are replaced by their quadratic least-squares "
        "fit over this many frames in the scan's order (Savitzky-Golay; the largest odd number up to it and the "
        "frame count): a probe that drifts smoothly keeps its weights, while what the frames' own probes pick up "
        "of the object's errors, which changes from frame to frame with the position, is damped. On the "
        "benchmarks' steady-probe scan 45 epochs reach 0.067 instead of 0.106 (sub-pixel object error), on the "
        "tests' drifting one 0.074 instead of 0.080 (benchmarks/ptycho_opr.py, docs/ptycho-engines.md). 0 (or "
        "1, 2): every frame's weights free, as Odstrcil et al. 2016; needed when the probe changes from one frame "
        "to the next (vibrations faster than the frame rate), or when the frames are not stored in the order they "
        "were measured.")
PARAMETERS["min_shape_share"] = Parameter(
    type="float", default=MIN_SHAPE_SHARE, lowlim=0.0, uplim=1.0,
    help="Least share of the deviations' power that changes the probe's shape, else the relaxation stops",
    doc="Tested once per scan, after shape_test relaxed epochs: the share of the frames' deviation power outside "
        "the span of the shared probe P (P and i P). A per-frame complex scale of the probe does nearly what a "
        "slowly varying envelope of the object does, so the data hardly tell them apart, and on a steady probe the "
        "frames' scales take up the object's regional level while it learns slowly; a change of the probe's shape "
        "they can tell. Below this share the probe is taken as steady: the frames' deviations are dropped and the "
        "scan goes on with rPIE's epochs (after 2 epochs steady moonflower-like scans measured 0.07, drifting ones "
        "0.19 to 0.45: docs/ptycho-engines.md; a drift taken for steady costs more than the reverse). 0: never "
        "stop. A flux that drifts with a steady shape is floating_intensities' to fit. Not tested when the frames "
        "resume with stored probes.")
PARAMETERS["shape_test"] = Parameter(
    type="int", default=SHAPE_TEST, lowlim=2, help="Relaxed epochs after which min_shape_share is tested",
    doc="2: after the first epoch that moved the frames' own probes (with probe_update_start 1 the first relaxed "
        "epoch leaves them alone; with a later one, at its first epoch). Early, because the frames' scales and the "
        "object's envelope settle into each other while the object moves slowly (early_epochs): on the steady "
        "moonflower-like scan testing after 2, 5 or 10 epochs gave 0.017, 0.023 or 0.026 after 150 (rPIE 0.018); "
        "on a smaller steady scan the share was 0.07 after 2 epochs and 0.21 after 10.")
PARAMETERS["modes_file"] = Parameter(
    type=("str", "NoneType"), default=None, help="A .ptyr whose per-frame probe modes and weights OPR starts from",
    doc="The file's content/probe_opr/<scan>/{modes, weights} (an earlier OPR run's) give each frame its deviation "
        "from the shared probe at once, and the relaxation goes on from the first epoch. None: the file the "
        "scan's probe resumes from (illumination.model = 'recon'), when it holds them; otherwise the frames start "
        "from the shared probe. The weights must have a row per frame of the scan and the modes the probe's shape.")


def truncate(stack: np.ndarray, k: int, oversample: int = 6, power_steps: int = 2, factors: bool = False,
             start: np.ndarray | None = None, window: int = 0):
    """Replace ``stack`` (N, H, W) in place by its rank-k approximation; returns the discarded power, with
    ``factors`` also the weights (N, k) and orthonormal modes (k, H, W) whose product is the new stack.
    With ``window`` > 2 the weights are smoothed along the frames first (:func:`smooth_weights`) and the
    discarded power counts what the smoothing removed too.

    A randomised SVD (Halko, Martinsson & Tropp 2011: a seeded Gaussian test
    matrix of k + ``oversample`` columns, ``power_steps`` subspace iterations)
    costs O(N H W k) where an exact SVD costs O(N^2 H W): at 1000 frames of
    128 x 128 that is the difference between milliseconds and seconds per
    epoch.  With N <= k + oversample it is the exact truncated SVD.
    ``start`` (N, j), e.g. the weights the previous epoch's truncation gave,
    takes the place of the first j test columns: the subspace iteration then
    goes on from where it was, and one step (``power_steps = 0``) per epoch
    follows a subspace that changes a little each time.
    """
    flat = stack.reshape(stack.shape[0], -1)
    width = min(k + oversample, len(flat))
    basis = np.random.default_rng(0).standard_normal((len(flat), width)).astype(flat.dtype)
    if start is not None:
        basis[:, :min(start.shape[1], width)] = start[:, :width]
    for _ in range(power_steps + 1):
        basis, _ = np.linalg.qr(flat @ (basis.conj().T @ flat).conj().T)
    u, s, vh = _wide_svd((basis.conj().T @ flat).astype(np.complex128), k)
    total = float(np.vdot(flat, flat).real)
    weights = ((basis @ u) * s).astype(flat.dtype)
    modes = vh.astype(flat.dtype)
    kept = float((s ** 2).sum())
    if window > 2:
        weights = smooth_weights(weights, window)
        kept = float(np.vdot(weights, weights).real)  # the modes are orthonormal
    np.multiply(weights[:, :1], modes[0], out=flat)  # weights @ modes, without a matmul of inner length k
    for j in range(1, k):
        flat += weights[:, j:j + 1] * modes[j]
    lost = max(total - kept, 0.0)
    return (lost, weights, modes.reshape(-1, *stack.shape[1:])) if factors else lost


def shape_share(probe: np.ndarray, modes: np.ndarray, weights: np.ndarray) -> float:
    """The share of the deviations ``weights @ modes`` (frames (N, k), orthonormal modes (k, H, W)) whose power lies
    outside the complex span of ``probe`` (H, W): what changes the probe's shape rather than its scale and phase."""
    unit = probe.ravel() / max(float(np.linalg.norm(probe)), 1e-300)
    along = weights.astype(np.complex128) @ (modes.reshape(len(modes), -1) @ unit.conj())  # <P / |P|, D_n>
    total = float(np.vdot(weights, weights).real)
    return 1.0 - float(np.vdot(along, along).real) / total if total > 0 else 0.0


def smooth_weights(weights: np.ndarray, window: int) -> np.ndarray:
    """``weights`` (N, k) smoothed along the frames: at each frame the quadratic least-squares fit over ``window``
    frames (Savitzky-Golay, the ends fitted over the first and last window), so a probe that drifts as a
    polynomial of degree 2 or less over any ``window`` frames keeps its weights exactly, and what changes from
    frame to frame is damped.  ``window`` is cut to the largest odd number <= N; below 3 nothing changes.
    scipy's ``savgol_filter(weights, window, 2, axis=0, mode="interp")``, with the fits made once per window."""
    from numpy.lib.stride_tricks import sliding_window_view

    n = len(weights)
    window = min(int(window), n)
    window -= 1 - window % 2
    if window < 3:
        return weights
    coeffs, ends = _savgol(window)
    half = window // 2
    out = np.empty(weights.shape, np.result_type(weights.dtype, np.float64))
    out[half:n - half] = sliding_window_view(weights, window, axis=0) @ coeffs
    out[:half] = ends[:half] @ weights[:window]
    out[n - half:] = ends[window - half:] @ weights[n - window:]
    return out.astype(weights.dtype)


@functools.lru_cache(maxsize=8)
def _savgol(window: int) -> tuple[np.ndarray, np.ndarray]:
    """(the interior filter (window,), the (window, window) fit of ``window`` frames evaluated at each of them)."""
    from scipy.signal import savgol_coeffs, savgol_filter

    return savgol_coeffs(window, 2, use="dot"), savgol_filter(np.eye(window), window, 2, axis=0, mode="interp")


def _wide_svd(b: np.ndarray, k: int):
    """The k leading singular triplets (u (w, k), s (k,), vh (k, M)) of a wide ``b`` (w, M), w << M, from the
    eigenvectors of the small b b^H: LAPACK's SVD of the wide matrix itself took 100 to 200 ms for 7 x 16384
    on a loaded machine, this a millisecond.  Falls back to that SVD when a wanted singular value is zero."""
    power, u = np.linalg.eigh(b @ b.conj().T)
    power, u = power[::-1][:k], u[:, ::-1][:, :k]
    if not power.size or power[-1] <= 1e-24 * max(power[0], 0.0) or power[-1] <= 0:
        u, s, vh = np.linalg.svd(b, full_matrices=False)
        return u[:, :k], s[:k], vh[:k]
    s = np.sqrt(power)
    return u, s, (u.conj().T @ b) / s[:, None]


class OPR(StochasticEngine):
    """Orthogonal probe relaxation on a :class:`difframe.ptycho.model.PtychoModel`."""

    serial_reason = "keeps every frame's probe"

    def __init__(self, params, model: pm.PtychoModel):
        super().__init__(NAME, params, model)

    def setup(self) -> None:
        from difframe.plugins.engines import opr_kernels, pie_kernels

        m, p = self.model, self.p
        self.kernels, self.pie_kernels = opr_kernels, pie_kernels
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
        # an OPR engine before this one in the run, or the file the probe resumes from (difframe_model_needs)
        kept = m.engine_terms.get(TERMS) or {}
        for scan in m.scans:
            if scan.label in kept and p.num_modes > 1:
                where, entry = f"the model's {TERMS} (an earlier OPR engine's, or the resumed file's)", kept[scan.label]
                if not isinstance(entry, dict) or not {"modes", "weights"} <= set(entry):
                    raise DataError(f"engine {NAME}: {where} for scan {scan.label!r} holds "
                                    f"{sorted(entry) if isinstance(entry, dict) else type(entry).__name__}; "
                                    f"expected modes and weights")
                self._resume(scan, entry["modes"], entry["weights"], where)
        if not self.deviations and p.modes_file and p.num_modes > 1:
            self._load(p.modes_file)
        self.resumed = bool(self.deviations)
        self.relaxed = int(p.early_epochs) if self.resumed else 0  # relaxed epochs (early_factor until early_epochs)
        self.tested = set(self.deviations)  # scans whose shape test (min_shape_share) is done: resumed ones need none
        self.steady = set()  # scans whose probe the test found steady: rPIE from then on

    def finalize(self) -> dict:
        self.deviations = {}
        return super().finalize()

    def probes_of(self, label: str) -> np.ndarray:
        """Scan ``label``'s per-frame probes (frames, H, W): the shared probe plus each frame's deviation."""
        scan = next(s for s in self.model.scans if s.label == label)
        shared = self.model.probes[scan.probe_id].data
        return shared + self.deviations.get(label, np.zeros((scan.num_frames, 1, 1), shared.dtype))

    def _relaxing(self, label: str | None = None) -> bool:
        """Whether the frames have their own probes in this epoch (with ``label``: scan ``label``'s frames)."""
        return ((self.resumed or self.iteration >= self.p.start) and self.p.num_modes > 1
                and label not in self.steady)

    def _resume(self, scan, modes: np.ndarray, weights: np.ndarray, where: str) -> None:
        """Scan ``scan``'s deviations from stored modes (K, H, W) and weights (frames, K), at most num_modes - 1
        of them (the strongest first, as stored)."""
        k = int(self.p.num_modes) - 1
        if (modes.ndim != 3 or modes.shape[1:] != tuple(scan.shape) or weights.ndim != 2
                or weights.shape != (scan.num_frames, len(modes))):
            raise ParameterError(f"engine.{NAME} (modes_file = {str(self.p.modes_file)!r}): {where} holds modes "
                                 f"{modes.shape} and weights {weights.shape}; scan {scan.label!r} needs "
                                 f"(K, {scan.shape[0]}, {scan.shape[1]}) and ({scan.num_frames}, K)")
        flat = weights[:, :k] @ modes[:k].reshape(len(modes[:k]), -1)
        self.deviations[scan.label] = np.ascontiguousarray(flat.reshape(scan.num_frames, *scan.shape),
                                                           dtype=self.model.cdtype)
        log.info("engine %s: scan %s's frames resume with their own probes (%d modes from %s)", NAME, scan.label,
                 min(k, len(modes)), where)

    def _load(self, path) -> None:
        """Deviations of every scan that ``path``'s content/probe_opr holds."""
        from difframe.ptycho import h5typed

        with h5typed.open_file(path, ".ptyr") as f:
            stored = f.get(f"content/{TERMS}") or {}
            for scan in self.model.scans:
                if scan.label not in stored:
                    continue
                node = stored[scan.label]
                if "modes" not in node or "weights" not in node:
                    raise DataError(f"{path}:{node.name}: expected modes and weights")
                self._resume(scan, h5typed.read_array(node["modes"], source=path),
                             h5typed.read_array(node["weights"], source=path), f"{path}:{node.name}")

    def visit(self, scan, order, sums, update_probe) -> None:
        m, p = self.model, self.p
        real = m.rdtype.type
        probe, obj = m.probes[scan.probe_id].data, m.objects[scan.object_id].data
        common = (scan.corners, order, scan.intensity, scan.weights_of(slice(None)), scan.scale_factors(),
                  scan.background_map(), self.transfer[scan.label])
        frame_sums = (sums.err, sums.dev, sums.change, sums.background, sums.scales)
        if not self._relaxing(scan.label):  # one probe for every frame: rPIE's own epoch, at its cost
            self.pie_kernels.pie_epoch(probe, obj, *common, real(p.alpha * scan.object_power),
                                       real(p.beta * scan.probe_power), real(p.object_regularisation),
                                       real(p.probe_regularisation), True, update_probe, self.tiny, *frame_sums,
                                       frame_fft.plans((1, *scan.shape), m.cdtype))
            return
        if scan.label not in self.deviations:
            log.info("engine %s: scan %s's %d frames get their own probes from epoch %d (%d modes)", NAME,
                     scan.label, scan.num_frames, self.iteration, p.num_modes)
            self.deviations[scan.label] = np.zeros((scan.num_frames, *scan.shape), m.cdtype)
        alpha = p.alpha * (p.early_factor if self.relaxed < p.early_epochs else 1.0)
        self.kernels.opr_epoch(probe[0], self.deviations[scan.label], real(p.deviation_step), obj[0], *common,
                               real(alpha * scan.object_power), real(p.beta * scan.probe_power),
                               real(p.object_regularisation), real(p.probe_regularisation), update_probe,
                               self.tiny, *frame_sums, frame_fft.plans(scan.shape, m.cdtype))

    def scan_done(self, scan, update_probe: bool) -> None:
        if self.supports[scan.probe_id] is not None and scan.label in self.deviations:
            self.deviations[scan.label] *= self.supports[scan.probe_id]  # before the cut: the modes stay inside
        if self._relaxing(scan.label) and update_probe:
            self.discarded += self._relax(scan) * scan.num_frames

    def epoch_done(self, update_probe: bool) -> dict:
        if self._relaxing():
            self.relaxed += 1
            if self.relaxed == self.p.early_epochs:
                log.info("engine %s: %d epochs relaxed, the object step goes from %g to alpha %g", NAME,
                         self.relaxed, self.p.early_factor * self.p.alpha, self.p.alpha)
            if self.relaxed >= max(self.p.shape_test, 2):
                self._test_shapes()
        frames = sum(scan.num_frames for scan in self.model.scans)
        discarded, self.discarded = self.discarded, 0.0
        return {"opr_discarded": discarded / max(frames, 1)}

    def extra_metrics(self) -> dict:
        return {}

    def _test_shapes(self) -> None:
        """Once per scan, when its frames' probes are learnt: the share of their deviation power that changes the
        probe's shape (outside the span of the shared probe P); below min_shape_share the deviations, a per-frame
        scale of P that a slow envelope of the object mimics, are dropped and the scan goes on with P alone."""
        for scan in self.model.scans:
            terms = (self.model.engine_terms.get(TERMS) or {}).get(scan.label)
            if scan.label in self.tested or terms is None:
                continue
            self.tested.add(scan.label)
            probe, support = self.model.probes[scan.probe_id].data[0], self.supports[scan.probe_id]
            share = shape_share(probe if support is None else probe * support, terms["modes"], terms["weights"])
            if share >= self.p.min_shape_share:
                log.info("engine %s: scan %s's frames' probes change shape (%.3f of the deviations' power outside "
                         "the shared probe's span): relaxed on", NAME, scan.label, share)
                continue
            log.info("engine %s: scan %s's frames' probes differ by little but a scale (%.3f of the deviations' "
                     "power changes the shape, min_shape_share %g): the probe is taken as steady, one probe for "
                     "every frame from epoch %d", NAME, scan.label, share, self.p.min_shape_share, self.iteration + 1)
            self.steady.add(scan.label)
            del self.deviations[scan.label], self.model.engine_terms[TERMS][scan.label]

    def _relax(self, scan) -> float:
        """Deviations without their mean (the shared probe took every update already), cut to num_modes - 1
        components, which the model keeps for the files (engine_terms ``probe_opr``).  Returns the discarded
        share of the frames' probe power (metric opr_discarded)."""
        shared, deviations = self.model.probes[scan.probe_id].data, self.deviations[scan.label]
        deviations -= deviations.mean(axis=0, dtype=np.complex128).astype(deviations.dtype)
        k = int(self.p.num_modes) - 1
        previous = (self.model.engine_terms.get(TERMS) or {}).get(scan.label)
        warm = (previous["weights"] if previous is not None and previous["weights"].shape == (len(deviations), k)
                else None)
        if warm is not None and not np.abs(warm).any(axis=0).all():
            warm = None  # a zero column spans nothing (the epoch before the probe first moved): start afresh
        lost, weights, modes = truncate(deviations, k, factors=True, start=warm, power_steps=2 if warm is None else 0,
                                        window=int(self.p.weight_smoothing))
        self.model.engine_terms.setdefault(TERMS, {})[scan.label] = {"modes": modes, "weights": weights}
        kept = float(np.vdot(shared, shared).real) * len(deviations) + float(np.vdot(deviations, deviations).real)
        return lost / max(kept + lost, 1e-300)


def factory(params, context):
    """Engine for ``engines.<label>`` with ``name = "OPR"``; ``context`` is the PtychoModel."""
    return OPR(params, context)


@difframe.hookimpl
def difframe_engines():
    yield EngineSpec(name=NAME, summary="orthogonal probe relaxation (Odstrcil et al. 2016): a probe per frame "
                                        "on K shared modes, rPIE epochs", factory=factory, parameters=PARAMETERS)


def stored_terms(scan_params, label: str) -> str | None:
    """The .ptyr scan ``label``'s probe resumes from (``illumination.model = 'recon'``) when it holds OPR's
    content/probe_opr/<label>; None otherwise."""
    import os

    from difframe.ptycho import h5typed
    from difframe.ptycho.ptyr import resolve_rfile

    illumination = (scan_params or {}).get("illumination") or {}
    pattern = (illumination.get("recon") or {}).get("rfile")
    if not isinstance(illumination.get("model"), str) or illumination["model"] != "recon" or not pattern:
        return None
    path = resolve_rfile(pattern)
    if path is None or not os.path.isfile(path):
        return None  # the loader says what is missing when the data are read
    with h5typed.open_file(path, ".ptyr") as f:
        return path if f"content/{TERMS}/{label}" in f else None


@difframe.hookimpl
def difframe_model_needs(run, scan):
    """The run's first OPR engine, without a modes_file, resumes the frames' probes from the file scan
    ``scan``'s probe resumes from, when that holds OPR's terms: the model starts with them as its
    engine_terms, as if an OPR engine had run before (the parameters stay as written)."""
    engines = run.params.get("engines") or {}
    first = next((ep for ep in engines.values() if ep.get("name") == NAME), None)
    if first is None or first.get("modes_file") or first.get("num_modes") == 1:
        return None  # later OPR engines continue from the first one's modes in the model
    path = stored_terms(run.params.scans[scan], scan)
    return {"engine_terms": {TERMS: path}} if path else None
