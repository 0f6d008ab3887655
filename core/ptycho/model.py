"""The ptychographic model: object and probe storages, views as index arrays.

Every scan owns its frames (intensities and weights in FFT order, so engines
never shift), the integer corner of each frame's window in its object storage
and the ids of the object and probe storages it uses.  Scans that share an
object or a probe (``scan.sharing``) point at the same storage id and weigh
their update contributions by their share power.

Storages are plain arrays: objects ``(object_modes, Ho, Wo)``, probes
``(probe_modes, H, W)``, in the complex dtype ``data_type`` asks for.  Engines
work on chunks of frames at a time: stacks ``(frames, probe_modes,
object_modes, H, W)``, one gather of all windows per chunk, batched FFTs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import scipy.fft

from difframe import fft, frame_threads, optics, parallel
from difframe.errors import DataError, ParameterError

log = logging.getLogger("difframe.ptycho")

#: bytes of one chunk's pod stack: a chunk's buffers stay within a 32 MB L3 cache between the steps of an
#: iteration (1000 frames of 128 x 128: DM 5%, ML 15% faster than 32 MiB chunks; 4 MiB no faster again)
CHUNK_BYTES = 8 * 2**20


@dataclass
class Storage:
    """One object or probe array with the geometry that places it in metres.

    ``origin`` is the (y, x) position [m] of pixel [0, 0]; ``psize`` the pixel
    (y, x) [m]; ``energy_kev`` the photon energy it was reconstructed at.
    """

    data: np.ndarray
    psize: np.ndarray
    origin: np.ndarray
    energy_kev: float

    @property
    def center(self) -> np.ndarray:
        """Pixel index (y, x) of the physical origin 0, as ptypy's ``_center``."""
        return -self.origin / self.psize


@dataclass
class ScanViews:
    """The frames of one scan this process holds and where they look into the storages."""

    label: str
    intensity: np.ndarray  # (n, H, W) real, FFT order
    weights: np.ndarray  # (H, W) or (n, H, W) real, FFT order, 0 where invalid
    corners: np.ndarray  # (n, 2) int, top-left pixel of each window in the object
    positions: np.ndarray  # (N_scan, 2) metres (y, x) of all the scan's frames, also those other ranks hold
    object_id: str
    probe_id: str
    object_power: float = 1.0
    probe_power: float = 1.0
    propagator: object = None  # FarField(centred=False) or NearField
    meta: dict = field(default_factory=dict)
    first: int = 0  # the held frames are positions[first:first + n]
    # model terms for real experiments (difframe.ptycho.terms); None: not modelled
    background: np.ndarray | None = None  # (H, W) incoherent counts per frame, FFT order, >= 0
    scale: np.ndarray | None = None  # (n,) intensity factor of each held frame (beam flux, exposure)
    # what the kernels take when a term is not modelled, made once
    _zeros: np.ndarray | None = field(default=None, repr=False)
    _ones: np.ndarray | None = field(default=None, repr=False)

    @property
    def num_frames(self) -> int:
        return int(self.intensity.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.intensity.shape[1]), int(self.intensity.shape[2])

    def background_map(self) -> np.ndarray:
        """The background the kernels take: the fitted map, or zeros when the scan has none."""
        if self.background is not None:
            return self.background
        if self._zeros is None or self._zeros.shape != self.shape:
            self._zeros = np.zeros(self.shape, self.intensity.dtype)
        return self._zeros

    def scale_factors(self) -> np.ndarray:
        """Per-frame intensity factors the kernels take: the fitted ones, or ones when the scan has none."""
        if self.scale is not None:
            return self.scale
        if self._ones is None or len(self._ones) != self.num_frames:
            self._ones = np.ones(self.num_frames, self.intensity.dtype)
        return self._ones

    def weights_of(self, sl: slice) -> np.ndarray:
        """Weights of frames ``sl`` as the kernels take them: (1, H, W) when one map serves all, else (n, H, W)."""
        return self.weights[None] if self.weights.ndim == 2 else self.weights[sl]


class PtychoModel:
    """Object and probe storages plus the scans' views, in one precision.

    ``ranks`` (:class:`difframe.parallel.Ranks`) are the processes sharing the
    reconstruction; after :meth:`keep_share` each holds a block of every
    scan's frames and engines all-reduce what they sum over frames.
    ``engine_terms`` (key -> scan label -> array or dict of arrays) is what an
    engine keeps beside object and probe for the files (OPR: ``probe_opr``);
    :meth:`fitted_terms` hands it on, and the .ptyr stores it under
    ``content/<key>/<label>``.
    """

    def __init__(self, objects: dict, probes: dict, scans: list, data_type: str = "single"):
        self.cdtype, self.rdtype = optics.dtypes_for(data_type)
        self.data_type = data_type
        self.ranks = parallel.Ranks()
        self.objects: dict[str, Storage] = objects
        self.probes: dict[str, Storage] = probes
        self.scans: list[ScanViews] = scans
        self.engine_terms: dict = {}
        for st in (*objects.values(), *probes.values()):
            st.data = np.ascontiguousarray(st.data, dtype=self.cdtype)
        for scan in scans:
            h, w = scan.shape
            obj = objects[scan.object_id].data
            hi = scan.corners + (h, w)
            if scan.corners.min() < 0 or hi[:, 0].max() > obj.shape[-2] or hi[:, 1].max() > obj.shape[-1]:
                raise DataError(f"scan {scan.label!r}: positions fall outside object {scan.object_id!r} "
                                f"of shape {obj.shape[-2:]} (windows of {h}x{w} at corners "
                                f"{scan.corners.min(axis=0).tolist()}..{hi.max(axis=0).tolist()})")
            if probes[scan.probe_id].data.shape[-2:] != (h, w):
                raise DataError(f"scan {scan.label!r}: probe {scan.probe_id!r} has shape "
                                f"{probes[scan.probe_id].data.shape[-2:]}, frames are {h}x{w}")

    def keep_share(self, ranks: parallel.Ranks) -> None:
        """Keep only this rank's block of every scan's frames; object and probe stay whole (rank 0's).

        A scan whose recipe already loaded just this rank's block keeps it; a
        scan holding all frames is cut down to the block.
        """
        self.ranks = ranks
        ranks.broadcast_arrays(*(st.data for st in (*self.objects.values(), *self.probes.values())))
        for scan in self.scans:
            share = ranks.share(len(scan.positions))
            if (scan.first, scan.first + scan.num_frames) == (share.start, share.stop):
                continue
            if (scan.first, scan.num_frames) != (0, len(scan.positions)):
                raise DataError(f"scan {scan.label!r}: rank {ranks.rank} holds frames {scan.first}.."
                                f"{scan.first + scan.num_frames - 1}, neither all {len(scan.positions)} nor its "
                                f"share {share.start}..{share.stop - 1}")
            scan.intensity = np.ascontiguousarray(scan.intensity[share])
            scan.corners = scan.corners[share]
            if scan.weights.ndim == 3:
                scan.weights = np.ascontiguousarray(scan.weights[share])
            scan.first = share.start
        if ranks.size > 1:
            log.info("rank %d keeps frames %s", ranks.rank,
                     ", ".join(f"{s.label}: {s.num_frames} of {len(s.positions)}" for s in self.scans))

    def fitted_terms(self) -> dict:
        """What the model fitted besides object and probe, for the files (collective: call on every rank).

        {"background": label -> (H, W) counts per frame in detector order,
        "frame_scale": label -> (N,) for all frames}, each only for scans that have it.
        """
        terms: dict = {"background": {}, "frame_scale": {}}
        for scan in self.scans:
            if scan.background is not None:
                terms["background"][scan.label] = from_fft_order(scan.background, scan.meta.get("propagation"))
            if self.ranks.any(scan.scale is not None):
                full = np.zeros(len(scan.positions))
                full[scan.first:scan.first + scan.num_frames] = scan.scale_factors()
                self.ranks.sum_arrays(full)
                terms["frame_scale"][scan.label] = full
        terms.update(self.engine_terms)
        return terms

    def chunks(self, scan: ScanViews, pods: int):
        """Slices of frames whose (frames, pods, H, W) stack fits in CHUNK_BYTES (chunks of an aligned stack
        start aligned: FFTW transforms them in place)."""
        h, w = scan.shape
        step = frame_threads.aligned_step(pods * h * w * self.cdtype.itemsize, CHUNK_BYTES)
        for start in range(0, scan.num_frames, step):
            yield slice(start, min(start + step, scan.num_frames))

    def total_measured(self) -> tuple[float, int]:
        """(sum of measured intensity, number of valid pixels) over all scans and ranks."""
        power, points = 0.0, 0
        for scan in self.scans:
            valid = np.broadcast_to(scan.weights > 0, scan.intensity.shape)
            power += float(scan.intensity[valid].sum(dtype=np.float64))
            points += int(valid.sum())
        power, points = self.ranks.sum(power, points)
        return power, int(points)


# -- fitting the model terms for real experiments ---------------------------------------------


def newton_background(scan: ScanViews, sums: np.ndarray, ranks) -> None:
    """One safeguarded Newton step of ``scan.background`` from per-thread likelihood sums.

    ``sums`` (threads, 2, H, W) hold, per pixel, the likelihood's first and
    second derivatives with respect to the background summed over this rank's
    frames; they are added over threads and ranks.  The likelihood is convex
    in the background, so the Newton step goes downhill; it is kept from
    taking a pixel below half its value (the Poisson curvature grows without
    bound near zero counts) and the map stays non-negative.
    """
    total = sums.sum(axis=0, dtype=np.float64)
    ranks.sum_arrays(total)
    _newton_step(scan.background, total[0], total[1])


def newton_scales(scan: ScanViews, sums: np.ndarray, ranks) -> None:
    """One safeguarded Newton step of each held frame's scale from its (gradient, curvature) ``sums`` (n, 2).

    Scales and the probe's power are one degree of freedom: the scales are
    kept at mean 1 over all frames (all ranks), so the probe carries the flux.
    """
    s = scan.scale
    _newton_step(s, sums[:, 0], sums[:, 1])
    total, count = ranks.sum(float(s.sum(dtype=np.float64)), len(s))
    s /= s.dtype.type(total / max(count, 1))


def _newton_step(values: np.ndarray, grad: np.ndarray, curv: np.ndarray) -> None:
    """values -= grad / curv in place where the curvature is positive, no value falling below half itself."""
    step = np.divide(grad, curv, out=np.zeros_like(grad), where=curv > 0)
    np.maximum(values - step, 0.5 * values, out=values, casting="unsafe")


def background_sums(scan: ScanViews, fit: bool) -> np.ndarray:
    """Zeroed per-thread (threads, 2, H, W) sums for the background's gradient and curvature; an empty
    array (the kernels' sign to skip them) unless ``fit`` and the scan has a background."""
    if not fit or scan.background is None:
        return np.empty((0, 2, 0, 0), scan.intensity.dtype)
    import numba

    # numba.get_thread_id() ranges over the whole pool, whatever set_num_threads chose
    return np.zeros((numba.config.NUMBA_NUM_THREADS, 2, *scan.shape), scan.intensity.dtype)


def orthogonal_modes(probe: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mixing C (P, P), powers (P,)) that make ``probe`` (P, H, W) orthogonal modes, strongest first.

    With the overlap matrix G_ij = <p_i, p_j> = C diag(powers) C^H, the modes
    q_k = sum_i C_ik p_i are orthogonal with |q_k|^2 = powers_k, and since C
    is unitary the incoherent sum of their intensities is unchanged.
    """
    flat = probe.reshape(probe.shape[0], -1).astype(np.complex128)
    gram = np.conj(flat) @ flat.T
    powers, mixing = np.linalg.eigh(gram)
    order = np.argsort(powers)[::-1]
    return mixing[:, order], np.maximum(powers[order], 0.0)


def mix_modes(modes: np.ndarray, mixing: np.ndarray) -> None:
    """In place: modes[k] = sum_p modes[p] mixing[p, k] for probe-shaped ``modes`` (P, H, W)."""
    modes[...] = np.tensordot(mixing.T.astype(modes.dtype), modes, axes=1)


def mode_powers(model: "PtychoModel") -> dict:
    """Each probe mode's share of its probe's power, as metrics mode_power_<k> (first probe storage)."""
    probe = next(iter(model.probes.values())).data
    if probe.shape[0] < 2:
        return {}
    power = np.sum(np.abs(probe) ** 2, axis=(-2, -1), dtype=np.float64)
    return {f"mode_power_{k}": float(p / max(power.sum(), 1e-300)) for k, p in enumerate(power)}


def orthogonalise_probes(model: "PtychoModel", pod_stacks: tuple = (), probe_arrays: tuple = ()) -> dict:
    """Make every probe's modes orthogonal (strongest first) and mix what an engine keeps alike, so it
    stays consistent: ``pod_stacks`` (label -> (frames, pods, H, W), e.g. DM's exit waves) and
    ``probe_arrays`` (probe id -> (P, H, W), e.g. ML's gradients and search directions; the likelihood does
    not change under a unitary mixing of the modes, so they transform with them).  Returns :func:`mode_powers`.
    """
    from difframe.ptycho import kernels

    for pid, st in model.probes.items():
        if st.data.shape[0] < 2:
            continue
        mixing, _ = orthogonal_modes(st.data)
        for arrays in (st.data, *(a[pid] for a in probe_arrays)):
            mix_modes(arrays, mixing)
        for scan in model.scans:
            if scan.probe_id != pid:
                continue
            n_obj = model.objects[scan.object_id].data.shape[0]
            for stack in pod_stacks:
                kernels.mix_probe_modes(stack[scan.label], mixing.astype(stack[scan.label].dtype), n_obj)
    return mode_powers(model)


def initial_background(frames: np.ndarray, weights: np.ndarray, spec, label: str, ranks) -> np.ndarray:
    """The starting background map (H, W) in the frames' order from ``scan.background.init``.

    "zero"; "min" the pixelwise minimum over all frames (all ranks), an upper
    bound of a constant background; a number: that many counts per pixel; an
    (H, W) array.  Invalid pixels start at zero.
    """
    shape = frames.shape[-2:]
    if isinstance(spec, np.ndarray):
        if spec.shape != shape:
            raise DataError(f"scans.{label}.background.init: a map of shape {spec.shape}, the frames are "
                            f"{shape[0]}x{shape[1]}")
        bg = np.asarray(spec, dtype=float)
    elif spec is None or spec == "zero":
        bg = np.zeros(shape)
    elif spec == "min":
        bg = frames.min(axis=0).astype(float) if len(frames) else np.full(shape, np.inf)
        ranks.min_arrays(bg)
    else:
        try:
            bg = np.full(shape, float(spec))
        except (TypeError, ValueError):
            raise ParameterError(f"scans.{label}.background.init: {spec!r} is not 'zero', 'min', a number "
                                 f"or an (H, W) array") from None
    if not np.all(np.isfinite(bg)) or bg.min() < 0:
        raise DataError(f"scans.{label}.background.init: the map must be finite and non-negative")
    valid = np.broadcast_to(weights > 0, (max(len(weights), 1), *shape)).any(axis=0)
    return np.where(valid, bg, 0.0)


# -- building a model from prepared data --------------------------------------------------


def object_psize(prepared) -> np.ndarray:
    """Object pixel (y, x) [m]: lambda z / (N psize) in far field, the detector pixel in near field."""
    if prepared.propagation == "nearfield":
        return np.asarray(prepared.psize_m, dtype=float)
    return optics.farfield_object_psize(prepared.wavelength_m, prepared.distance_m, prepared.shape, prepared.psize_m)


def make_propagator(prepared, cdtype):
    """Engines' propagator for a scan: uncentred far field, or near field at the detector pixel."""
    if prepared.propagation == "nearfield":
        return optics.NearField(prepared.shape, prepared.psize_m, prepared.wavelength_m, prepared.distance_m,
                                dtype=cdtype)
    return optics.FarField(prepared.shape, centred=False)


def object_frame(positions_list, psize, shape, pad: int = 2):
    """(object shape, origin [m]) of a storage covering all the windows of several scans."""
    allpos = np.concatenate(positions_list)
    lo, hi = allpos.min(axis=0), allpos.max(axis=0)
    span = np.ceil((hi - lo) / psize).astype(int)
    tight = span + np.asarray(shape) + 2 * pad + 1
    # sides of FFT-friendly length: object smoothing transforms the whole object every iteration
    # (1094 x 1093: 35 ms per FFT pair, 1100 x 1100: 8 ms)
    obj_shape = tuple(scipy.fft.next_fast_len(int(n)) for n in tight)
    origin = lo - (pad + (np.asarray(obj_shape) - tight) // 2 + np.asarray(shape) // 2) * psize
    return obj_shape, origin


def corners_of(positions, storage: Storage, shape) -> np.ndarray:
    """Integer top-left pixel of each window centred at ``positions`` in ``storage``."""
    centre_pix = (positions - storage.origin) / storage.psize
    return np.rint(centre_pix - np.asarray(shape) // 2).astype(np.int64)


def to_fft_order(frames: np.ndarray, propagation: str) -> np.ndarray:
    """Detector frames as engines use them: far-field frames are stored with the axis at pixel 0."""
    if propagation == "nearfield":
        return np.ascontiguousarray(frames)
    return np.ascontiguousarray(scipy.fft.ifftshift(frames, axes=(-2, -1)))


def from_fft_order(frame: np.ndarray, propagation: str | None) -> np.ndarray:
    """A map in the engines' order back in the detector's (inverse of :func:`to_fft_order`)."""
    if propagation == "nearfield":
        return np.array(frame)
    return scipy.fft.fftshift(frame, axes=(-2, -1))


def build_model(prepared: dict, sharing: dict, init_probe, init_object, data_type: str = "single") -> PtychoModel:
    """Model from each scan's PreparedData.

    ``sharing[label]`` = (object_share_with, object_share_power, probe_share_with,
    probe_share_power) with labels already resolved (None: own storage).
    ``init_probe(label, shape, psize)`` and ``init_object(label, shape, psize,
    origin)`` return the initial complex arrays (modes, ...) for storages a
    scan owns (``origin`` [m] places the object's pixel [0, 0]).
    """
    cdtype, rdtype = optics.dtypes_for(data_type)
    labels = list(prepared)
    obj_owner = {lab: _root(lab, sharing, 0) for lab in labels}
    probe_owner = {lab: _root(lab, sharing, 2) for lab in labels}
    objects, probes, scans = {}, {}, []
    for owner in dict.fromkeys(obj_owner.values()):
        members = [lab for lab in labels if obj_owner[lab] == owner]
        psizes = {lab: object_psize(prepared[lab]) for lab in members}
        shapes = {prepared[lab].shape for lab in members}
        ref = psizes[owner]
        for lab in members:
            if not np.allclose(psizes[lab], ref, rtol=1e-6) or len(shapes) > 1:
                raise DataError(f"scans {owner!r} and {lab!r} share an object but their geometry differs "
                                f"(object pixel {ref.tolist()} vs {psizes[lab].tolist()}, frame shapes {shapes})")
        shape = prepared[owner].shape
        obj_shape, origin = object_frame([prepared[lab].positions for lab in members], ref, shape)
        data = np.asarray(init_object(owner, obj_shape, ref, origin))
        if data.ndim == 2:
            data = data[None]
        if data.shape[-2:] != obj_shape:
            raise DataError(f"scan {owner!r}: the initial object has shape {data.shape[-2:]} but the scan "
                            f"positions need {obj_shape}: positions outside the object")
        objects[owner] = Storage(data, ref, origin, prepared[owner].energy_kev)
    for owner in dict.fromkeys(probe_owner.values()):
        p = prepared[owner]
        data = np.asarray(init_probe(owner, p.shape, object_psize(p)))
        if data.ndim == 2:
            data = data[None]
        frames = sum(len(prepared[lab].positions) for lab in labels if probe_owner[lab] == owner)
        if data.shape[0] > frames:
            # every frame is one incoherent sum: more modes than frames are not determined by the data
            raise ParameterError(f"scans.{owner}.coherence.num_probe_modes: {data.shape[0]} probe modes but only "
                                 f"{frames} frames measure them; use at most {frames}")
        probes[owner] = Storage(data, object_psize(p), -(np.asarray(p.shape) // 2) * object_psize(p), p.energy_kev)
    for lab in labels:
        p = prepared[lab]
        if probes[probe_owner[lab]].data.shape[-2:] != p.shape:
            raise DataError(f"scans {probe_owner[lab]!r} and {lab!r} share a probe but their frames differ "
                            f"in shape")
        weights = np.broadcast_to(p.mask, p.data.shape) if p.mask.ndim == 3 else p.mask
        scans.append(ScanViews(
            label=lab,
            intensity=to_fft_order(p.data.astype(rdtype, copy=False), p.propagation),
            weights=to_fft_order(weights.astype(rdtype), p.propagation),
            corners=corners_of(p.positions[p.held], objects[obj_owner[lab]], p.shape),
            positions=p.positions,
            first=p.first,
            object_id=obj_owner[lab],
            probe_id=probe_owner[lab],
            object_power=float(sharing[lab][1]),
            probe_power=float(sharing[lab][3]),
            propagator=make_propagator(p, cdtype),
            meta={"energy_kev": p.energy_kev, "distance_m": p.distance_m, "psize_m": p.psize_m,
                  "propagation": p.propagation},
        ))
    return PtychoModel(objects, probes, scans, data_type)


def _root(label: str, sharing: dict, slot: int) -> str:
    """The label whose storage ``label`` ends up using, following share_with links."""
    seen = [label]
    while sharing[label][slot] is not None:
        label = sharing[label][slot]
        if label in seen:
            raise DataError(f"scan sharing forms a cycle: {' -> '.join(seen + [label])}")
        seen.append(label)
    return label


# -- plain numpy forms: simulation, tests and benchmarks (engines use difframe.ptycho.kernels) --


def gather(obj: np.ndarray, corners: np.ndarray, shape) -> np.ndarray:
    """Windows of ``obj`` (modes, Ho, Wo) at ``corners``: (frames, modes, H, W), one fancy-index gather."""
    windows = np.lib.stride_tricks.sliding_window_view(obj, tuple(shape), axis=(-2, -1))
    return np.moveaxis(windows[:, corners[:, 0], corners[:, 1]], 0, 1)


def scatter_add(target: np.ndarray, stack: np.ndarray, corners: np.ndarray) -> None:
    """target[:, window_n] += stack[n] for every frame n (overlapping windows add up)."""
    h, w = stack.shape[-2:]
    for n, (y, x) in enumerate(corners):
        target[..., y:y + h, x:x + w] += stack[n]


def exit_waves(probe: np.ndarray, obj_views: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Pods (frames, probe_modes, object_modes, H, W) = probe mode x object-mode window."""
    return np.multiply(probe[None, :, None], obj_views[:, None], out=out)


# -- maths engines share ----------------------------------------------------------------------


def intensity(fields: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Model intensity (frames, H, W): incoherent sum of |field|^2 over all pods, no big temporaries."""
    f = fields.reshape(fields.shape[0], -1, *fields.shape[-2:])
    out = np.square(f[:, 0].real, out=out)
    buf = np.empty_like(out)
    out += np.square(f[:, 0].imag, out=buf)
    for k in range(1, f.shape[1]):
        out += np.square(f[:, k].real, out=buf)
        out += np.square(f[:, k].imag, out=buf)
    return out


def probe_support(shape, fraction: float | None, dtype) -> np.ndarray | None:
    """Circular support of radius ``fraction`` x half the frame (``probe_support``), or None."""
    if fraction is None:
        return None
    y, x = np.indices(shape)
    r = np.hypot((y - shape[0] // 2) / (shape[0] / 2), (x - shape[1] // 2) / (shape[1] / 2))
    return (r < fraction).astype(dtype)


def clip_amplitude(obj: np.ndarray, limits) -> None:
    """Clip |obj| into ``limits`` (min, max), keeping the phase (``clip_object``)."""
    if limits is None:
        return
    lo, hi = float(limits[0]), float(limits[1])
    amp = np.abs(obj)
    scale = np.clip(amp, lo, hi) / np.maximum(amp, np.finfo(amp.dtype).tiny)
    obj *= scale


def gaussian_smooth(obj: np.ndarray, sigma: float, scale: float = 1.0) -> np.ndarray:
    """``scale`` x the Gaussian blur of ``sigma`` pixels over the last two axes, through FFTs.

    Periodic, which the padded object frame tolerates; an FFT costs a fraction
    of a direct filter for the 20-pixel default of ``obj_smooth_std``.  The
    transfer function is separable, and for such a blur it is below rounding
    at all but the lowest tenth of the frequencies along each axis: then the
    rows are transformed, only the columns of the frequencies it keeps are
    transformed, filtered and transformed back, and the rows back (0.35-0.5 of
    a 2-D FFT pair on DM's 1100 x 1100 object).  A wide transfer function (a
    blur of a few pixels) goes through one 2-D FFT pair, applied in one
    threaded pass with ``scale`` (DM's object inertia rides on it).
    """
    from difframe.ptycho import kernels

    real = obj.real.dtype if np.iscomplexobj(obj) else np.float64
    fy = scipy.fft.fftfreq(obj.shape[-2])
    fx = scipy.fft.fftfreq(obj.shape[-1])
    rows = (scale * np.exp(-2 * np.pi**2 * sigma**2 * fy**2)).astype(real)
    cols = np.exp(-2 * np.pi**2 * sigma**2 * fx**2).astype(real)
    kept = np.flatnonzero(cols > np.finfo(real).eps * 1e-3)  # the rest adds less than rounding does
    if 2 * kept.size > cols.size:
        spec = fft.fft2(obj)
        kernels.scale_separable(spec.reshape(-1, *spec.shape[-2:]), rows, cols)
        return fft.ifft2(spec, overwrite=True)
    workers = fft.fft_workers()
    spec = scipy.fft.fft(obj, axis=-1, workers=workers)
    low = scipy.fft.fft(spec[..., kept], axis=-2, workers=workers, overwrite_x=True)
    low *= rows[:, None] * cols[kept]
    spec[...] = 0
    spec[..., kept] = scipy.fft.ifft(low, axis=-2, workers=workers, overwrite_x=True)
    return scipy.fft.ifft(spec, axis=-1, workers=workers, overwrite_x=True)
