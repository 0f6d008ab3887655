"""Harvest: rotation frames -> scattered points near selected Bragg spots (tds2el's harvesting).

Why it is fast: everything that depends only on geometry is done once per scan.
Q_lab of every pixel is computed once; a rotation keeps |Q| and the component
along the phi axis, so only pixels in a shell and slab around each spot can ever
come near it, and for those the frames in which they are within DeltaQ_max of the
spot follow in closed form (one arc of phi per pixel and spot).  Per chunk of
frames what remains is a dense (frame, pixel-near-spot) table: one matrix product
per frame rotates the pixels, one gather reads their counts, and masks give the
points.  Reading, the costliest part, runs in a helper thread from the start when
the rank has a core to spare (the per-frame selection costs about a sixth of it).

Selection (TDS.md section 5): a point of frame n at pixel p belongs to spot s when
DeltaQ_min |b|max < |Q_c - G_s| < DeltaQ_max |b|max, the pixel is unmasked and not
negative.  Its intensity is divided by the frame's normalisation.  A *spot pixel* of
spot s in frame n is an unmasked pixel within DeltaQ_max of s in that frame (any
value; masked pixels never count).  When a spot pixel exceeds ``threshold``, the
frame gives no points at all (``threshold_rule = "frame"``, tds2el's rule and the
default) or no points of that spot only (``"spot"``); both rules' counts are
logged and kept in the attributes.  The pixels above the threshold feed the
intensity-weighted centroid of their spot.  With
re-centring (``centering_file``) a spot's centre is the centroid measured by an
earlier harvest and the stored Q is shifted by (G - centroid).

MPI: the set-up is shared out (bands of Q_lab rows, spots), frames are split in
contiguous blocks across ranks, and the points are gathered on rank 0 in rank
order, which is the canonical order (frame, spot, pixel): the file is identical to
a serial harvest.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from difframe.errors import DataError, UsageError

log = logging.getLogger("difframe.tds.harvest")

FRAME_CONVENTION = (
    "crystal Cartesian frame of difframe.crystal.lattice (a* along x, c along z); "
    "Q_c = (R_gonio(phi_n) U)^T Q_lab, phi_n = phi + n * angular_step (centre of frame n); "
    "Q = B h with 2 pi"
)
Q_UNIT = "1/Angstrom"
THRESHOLD_RULES = ("frame", "spot")


@dataclass
class Harvest:
    """Harvested points (one row per point) and the spots they belong to."""

    Q: np.ndarray  # (N, 3) crystal frame [1/Angstrom]
    intensity: np.ndarray  # (N,) counts / normalisation
    spot: np.ndarray  # (N,) index into hkl
    frame: np.ndarray  # (N,) 0-based frame index (files in name order)
    pixel: np.ndarray  # (N, 2) (row, col)
    hkl: np.ndarray  # (S, 3)
    G: np.ndarray  # (S, 3) crystal frame [1/Angstrom]
    centroid: np.ndarray  # (S, 3) weighted centre of the above-threshold pixels, NaN if none
    excluded_frames: np.ndarray  # (K,) frames with a spot pixel above the threshold (dropped by the frame rule)
    attrs: dict = field(default_factory=dict)

    @property
    def counts(self) -> np.ndarray:
        """Points per spot (S,)."""
        return np.bincount(self.spot, minlength=len(self.hkl))


@dataclass(frozen=True, kw_only=True)
class HarvestOptions:
    """What to harvest (tds2el names in the comments)."""

    delta_q_min: float = 0.0  # DeltaQ_min, in units of |b|max
    delta_q_max: float = 0.15  # DeltaQ_max, in units of |b|max
    threshold: float | None = None  # threshold [counts]; None: no exclusion
    threshold_rule: str = "frame"  # a hot spot pixel drops its frame for every spot (tds2el) or, "spot", for its spot
    spots: np.ndarray | None = None  # collectSpots (S, 3)
    generators: str | None = None  # ascii_generators, for replicas
    replicas: bool = False  # REPLICA_COLLECTION
    mask_file: str | None = None  # filter_file (EDF, 1 good, 0 bad)
    normalisation_file: str | None = None  # normalisation_file (file name, denominator)
    centering_file: str | None = None  # an earlier harvest whose centroids re-centre the spots
    rough: bool = False  # DO_ELASTIC = 0: bin the whole volume instead
    rough_grid: int = 64  # voxels per axis of the rough volume


# -- inputs ------------------------------------------------------------------------


def read_normalisation(path: str | Path, files: Sequence[str | Path]) -> np.ndarray:
    """Denominators (F,) for ``files`` from tds2el's two-column file (name, denominator).

    Names match by full path as written, else by file name; every frame must be listed.
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise DataError(f"normalisation_file {path}: {exc.strerror or exc}") from None
    by_name: dict[str, float] = {}
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        parts = text.rsplit(None, 1)
        try:
            value = float(parts[1]) if len(parts) == 2 else float("nan")
        except ValueError:
            value = float("nan")
        if not np.isfinite(value) or value <= 0:
            raise DataError(f"{path} line {number}: expected 'filename denominator' with a positive "
                            f"denominator, got {line.strip()!r}")
        by_name[parts[0]] = value
        by_name.setdefault(Path(parts[0]).name, value)
    out = np.empty(len(files))
    for i, f in enumerate(files):
        value = by_name.get(str(f), by_name.get(Path(f).name))
        if value is None:
            raise DataError(f"normalisation_file {path} has no line for frame {f}")
        out[i] = value
    return out


def read_mask(path: str | Path, shape: tuple[int, int], plugins) -> np.ndarray:
    """tds2el's filter_file as a boolean map (True = good pixel) of the frames' shape."""
    from difframe.detector import open_frame

    data = open_frame(path, plugins).data
    if data.shape != tuple(shape):
        raise DataError(f"filter_file {path} is {data.shape[0]} x {data.shape[1]} but the frames are "
                        f"{shape[0]} x {shape[1]}")
    return data != 0


def read_spot_list(path: str | Path) -> np.ndarray:
    """Spots (S, 3) from a maxima file: JSON ``[[h, k, l], ...]`` or text lines ``h k l``.

    tds2el's pickled maxima files are refused: difframe never unpickles.
    """
    path = Path(path)
    if path.suffix.lower() in (".p", ".pkl", ".pickle"):
        raise UsageError(f"file_maxima {path} is a Python pickle, which difframe never loads; "
                         f"write the accepted hkl as text lines 'h k l' or as JSON [[h, k, l], ...]")
    try:
        text = path.read_text()
    except OSError as exc:
        raise DataError(f"file_maxima {path}: {exc.strerror or exc}") from None
    if path.suffix.lower() == ".json":
        try:
            return _as_hkl(json.loads(text), f"file_maxima {path}")
        except json.JSONDecodeError as exc:
            raise DataError(f"file_maxima {path}: not JSON ({exc})") from None
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = re.split(r"[\s,]+", line.split("#", 1)[0].strip())
        if fields == [""]:
            continue
        try:
            rows.append([int(x) for x in fields[:3]])
        except ValueError:
            raise DataError(f"{path} line {number}: expected three integers h k l, got {line.strip()!r}") from None
        if len(fields) < 3:
            raise DataError(f"{path} line {number}: expected three integers h k l, got {line.strip()!r}")
    return _as_hkl(rows, f"file_maxima {path}")


def _as_hkl(value: Any, source: str) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim != 2 or array.shape[1] != 3 or len(array) == 0 or not np.all(np.equal(np.mod(array, 1), 0)):
        raise UsageError(f"{source}: expected a non-empty list of [h, k, l] integer triples, got {value!r}")
    return array.astype(np.int64)


def replicate_spots(hkl: np.ndarray, generators: str, lattice) -> np.ndarray:
    """``hkl`` and all their images under the point group (REPLICA_COLLECTION), in first-seen order."""
    from difframe.crystal.symmetry import close_group, parse_generators

    group = close_group(parse_generators(generators, lattice.direct))
    g = lattice.q(hkl)  # (S, 3)
    images = np.einsum("rij,sj->sri", group, g).reshape(-1, 3)
    h = lattice.hkl(images)
    rounded = np.rint(h)
    if np.abs(h - rounded).max() > 1e-4:
        raise UsageError(f"ascii_generators {generators!r} do not map the lattice onto itself "
                         "(check the cell and the generator axes)")
    _, first = np.unique(rounded.astype(np.int64), axis=0, return_index=True)
    return rounded.astype(np.int64)[np.sort(first)]


def read_centroids(path: str | Path, hkl: np.ndarray) -> np.ndarray:
    """Centres (S, 3) of ``hkl`` from an earlier harvest's centroids (NaN where it has none)."""
    earlier = load_harvest(path, points=False)
    centres = np.full((len(hkl), 3), np.nan)
    lookup = {tuple(h): c for h, c in zip(earlier.hkl.tolist(), earlier.centroid)}
    for i, h in enumerate(hkl.tolist()):
        if tuple(h) in lookup:
            centres[i] = lookup[tuple(h)]
    return centres


# -- the harvest ---------------------------------------------------------------------


def harvest(geometry, files: Sequence[str | Path], options: HarvestOptions, plugins=None, comm=None,
            progress=None) -> Harvest | None:
    """Harvest the points around ``options.spots`` from rotation ``files`` (name order = frame order).

    ``comm`` is an mpi4py communicator (None: serial).  Rank 0 returns the
    :class:`Harvest`; other ranks return None.  ``progress`` (a
    :mod:`difframe.progress` bar) advances by one for each frame of this rank read.
    """
    from difframe.detector import choose_reader, quiet_fabio

    if plugins is None:
        from difframe.manager import PluginManager

        plugins = PluginManager()
    files = [Path(f) for f in files]
    if not files:
        raise UsageError("no frame files to harvest (check images_prefix and images_postfix)")
    if options.spots is None or len(options.spots) == 0:
        raise UsageError("no spots to harvest: give collectSpots or file_maxima")
    rank, size = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
    reader = choose_reader(files[0], plugins)
    first = reader.read(files[0])
    shape = first.data.shape
    block = np.array_split(np.arange(len(files)), size)[rank]
    frames = _frame_source(block, files, reader, first.data if rank == 0 else None, first.data.nbytes,
                           comm)  # reading starts during the set-up
    if progress is not None:
        frames = _Counted(frames, progress)
    with contextlib.closing(frames), quiet_fabio():
        hkl, G, points, per_frame, centroid_sums, over, kept = _select(geometry, files, options, plugins, shape,
                                                                       block, frames, comm)
    if comm is not None and size > 1:  # blocks are contiguous and gathered in rank order: frame order
        points = {k: _gather(comm, v) for k, v in points.items()}
        per_frame = _reduce(comm, per_frame)
        centroid_sums = _reduce(comm, centroid_sums)
        over = _reduce(comm, over.astype(np.int64))
        kept = _reduce(comm, kept)
        if rank != 0:
            return None
    excluded = np.flatnonzero(over.any(axis=1))
    totals = centroid_sums.sum(axis=0)  # (S, 4), summed in frame order: deterministic
    with np.errstate(invalid="ignore", divide="ignore"):
        centroid = np.where(totals[:, :1] > 0, totals[:, 1:] / totals[:, :1], np.nan)
    pixel = np.empty((len(points["p"]), 2), np.int64)
    np.divmod(points["p"], shape[1], out=(pixel[:, 0], pixel[:, 1]))
    result = Harvest(
        Q=points["Q"], intensity=points["I"], spot=points["s"].astype(np.int64),
        frame=np.repeat(np.arange(len(files)), per_frame), pixel=pixel,
        hkl=hkl, G=G, centroid=centroid, excluded_frames=excluded,
        attrs={"frame_convention": FRAME_CONVENTION, "unit": Q_UNIT, "shape": list(shape),
               "input_files": [str(f) for f in files], "delta_q": [options.delta_q_min, options.delta_q_max],
               "mask_file": options.mask_file or "", "normalisation_file": options.normalisation_file or "",
               "centering_file": options.centering_file or ""},
    )
    increment = first.metadata.get("angle_increment_deg") if hasattr(first, "metadata") else None
    if increment is not None:
        result.attrs["angle_increment_deg"] = float(increment)
        if not np.isclose(abs(float(increment)), abs(geometry.angular_step), rtol=1e-4, atol=1e-6):
            log.warning("angular_step = %.6g deg (conf_file) disagrees with Angle_increment = %.6g deg in the "
                        "header of %s; phi of each frame and its exposure follow angular_step",
                        geometry.angular_step, float(increment), files[0])
    if options.threshold is not None:
        _report_threshold(result, over, kept, options.threshold_rule)
    log.info("harvest: %d points around %d spots; %d frames excluded by the threshold",
             len(result.Q), len(hkl), len(excluded))
    return result


def _select(geometry, files, options, plugins, shape, block, frames, comm):
    """The geometry set-up (shared out between the ranks), then the points of this rank's ``block`` of frames."""
    mask = read_mask(options.mask_file, shape, plugins) if options.mask_file else np.ones(shape, bool)
    norm = read_normalisation(options.normalisation_file, files) if options.normalisation_file else np.ones(len(files))

    lattice = geometry.lattice
    hkl = _as_hkl(options.spots, "collectSpots")
    requested = len(hkl)
    if options.replicas:
        if not options.generators:
            raise UsageError("REPLICA_COLLECTION needs ascii_generators")
        hkl = replicate_spots(hkl, options.generators, lattice)
    G = lattice.q(hkl)
    centres = G.copy()
    if options.centering_file:
        measured = read_centroids(options.centering_file, hkl)
        found = np.isfinite(measured).all(axis=1)
        centres[found] = measured[found]
        log.info("re-centred %d of %d spots from %s", found.sum(), len(hkl), options.centering_file)
    unit = lattice.max_reciprocal
    r_min, r_max = options.delta_q_min * unit, options.delta_q_max * unit
    if not 0 <= r_min < r_max:
        raise UsageError(f"need 0 <= DeltaQ_min < DeltaQ_max, got {options.delta_q_min}, {options.delta_q_max}")

    # geometry only, once: pixels that can ever be near a spot, and the frames in which each one is
    candidates, q_cand, q_norm = _candidates(geometry, shape, mask, centres, r_max, comm)
    rotations = geometry.lab_to_crystal(np.arange(len(files)))  # (F, 3, 3): Q_c = M Q_lab
    visits = _visits(geometry, rotations, q_cand, q_norm, centres, r_max, comm)
    _check_spots_fall_on_detector(visits.seen, hkl, requested, len(files), options)
    log.info("harvest: %d frames of %d x %d, %d spots, %d candidate pixels, r = %.4g..%.4g 1/A",
             len(files), shape[0], shape[1], len(hkl), len(candidates), r_min, r_max)

    if options.threshold_rule not in THRESHOLD_RULES:
        raise UsageError(f"threshold_rule = {options.threshold_rule!r} is not one of {', '.join(THRESHOLD_RULES)}")
    points, per_frame, centroid_sums, over, kept = _harvest_frames(
        block, files, frames, shape, visits, candidates, q_cand, rotations, centres, G, r_min, r_max, norm,
        options.threshold, options.threshold_rule)
    return hkl, G, points, per_frame, centroid_sums, over, kept


def _report_threshold(result: Harvest, over: np.ndarray, kept: np.ndarray, rule: str) -> None:
    """Log and record (root attributes) what each threshold rule keeps, whichever was applied."""
    frames = over.shape[0]
    whole = int((~over.any(axis=1)).sum())  # frames the per-frame rule keeps
    pairs = int(over.sum())  # (frame, spot) pairs the per-spot rule drops
    result.attrs.update({"threshold_rule": rule, "threshold_frames": frames,
                         "threshold_frame_rule_frames_kept": whole, "threshold_frame_rule_points": int(kept[0]),
                         "threshold_spot_rule_pairs_dropped": pairs, "threshold_spot_rule_points": int(kept[1]),
                         "threshold_hot_frames_per_spot": [int(v) for v in over.sum(axis=0)]})
    log.info("threshold: the per-frame rule (tds2el) keeps %d of %d frames, %d points; the per-spot rule drops "
             "%d (frame, spot) pairs of %d frames and keeps %d points; applied: per-%s", whole, frames, int(kept[0]),
             pairs, frames - whole, int(kept[1]), rule)


def _check_spots_fall_on_detector(seen, hkl, requested, n_frames, options) -> None:
    """A requested spot that is never within DeltaQ_max of a pixel is a mistake; a replica may be."""
    for i in range(min(requested, len(hkl)) if not options.replicas else 0):
        if not seen[i]:
            raise UsageError(f"collectSpots entry {hkl[i].tolist()} never falls on the detector (within "
                             f"DeltaQ_max) in any of the {n_frames} frames")
    if options.replicas and not seen.any():
        raise UsageError(f"no spot of collectSpots {np.asarray(options.spots).tolist()} or its replicas "
                         "ever falls on the detector")
    if not seen.all():
        log.info("%d of %d spots never reach the detector and give no points", (~seen).sum(), len(seen))


@dataclass
class _Visits:
    """Frames [first, last] in which candidate pixel ``pixel`` may lie within r_max of spot ``spot``.

    Rows are in (spot, pixel) order; a superset of the truth, which the exact
    distance test of each frame then trims.
    """

    spot: np.ndarray  # (V,) spot index
    pixel: np.ndarray  # (V,) index into the candidate pixels
    first: np.ndarray  # (V,) first frame
    last: np.ndarray  # (V,) last frame (inclusive)
    seen: np.ndarray  # (S,) some pixel is near the spot in some frame


def _candidates(geometry, shape, mask, centres, r_max, comm):
    """Unmasked pixels whose |Q_lab| lies within r_max of some |centre| (a rotation keeps |Q|): flat indices,
    Q_lab (as ``geometry.q_lab_image``) and |Q_lab|.  Under MPI each rank examines a band of rows."""
    rank, size = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
    rows = np.array_split(np.arange(shape[0]), size)[rank]
    q = geometry.q_lab(rows[:, None], np.arange(shape[1])[None, :]).reshape(-1, 3)
    q_norm = np.sqrt(np.einsum("ij,ij->i", q, q))
    shells = np.sort(np.linalg.norm(centres, axis=1))
    above = np.searchsorted(shells, q_norm).clip(0, len(shells) - 1)
    below = (above - 1).clip(0)
    gap = np.minimum(np.abs(q_norm - shells[above]), np.abs(q_norm - shells[below]))  # to the nearest |G|
    mine = np.flatnonzero((gap < r_max) & mask[rows].ravel())
    found = (mine + (rows[0] * shape[1] if len(rows) else 0), q[mine], q_norm[mine])
    return found if size == 1 else tuple(_gather(comm, x, everyone=True) for x in found)


def _visits(geometry, rotations, q_cand, q_norm, centres, r_max, comm=None) -> _Visits:
    """When each candidate pixel is near each spot, solved analytically for the whole scan.

    Why: the scan turns the crystal about one lab axis u by theta_n = n * angular_step,
    so q . R_n c = a + b cos(theta_n) + d sin(theta_n) for pixel q and spot centre c,
    and |R_n^T q - c| < r holds on one arc of theta per pixel and spot.  This
    replaces a neighbour search per frame by a few array operations per scan.
    Under MPI each rank solves a share of the spots and all share the rows.
    """
    rank, size = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
    n_frames, step = len(rotations), float(geometry.angular_step)
    to_lab = np.swapaxes(rotations, -1, -2)  # R_n: crystal -> lab
    axis = _scan_axis(geometry)
    theta = np.radians(step * np.arange(n_frames))
    model = _axis_rotation(axis, theta) @ to_lab[0]
    slack = 3 * float(np.abs(model - to_lab).max())  # >= |R_model - R_n| in the 2-norm: keeps the arcs a superset
    scan = np.degrees(theta[[0, -1]])
    middle, half = scan.mean(), abs(scan[1] - scan[0]) / 2
    height = np.einsum("pj,j->p", q_cand, axis)  # along the axis, which the rotation keeps too
    norms, shell_of = np.unique(np.linalg.norm(centres, axis=1), return_inverse=True)  # replicas share |G|
    shells = [np.flatnonzero(np.abs(q_norm - c_norm) < r_max) for c_norm in norms]
    spots, pixels, firsts, lasts = [], [], [], []
    for s in range(rank, len(centres), size):
        c_norm, shell = float(norms[shell_of[s]]), shells[shell_of[s]]
        v = to_lab[0] @ centres[s]
        near = shell[np.abs(height[shell] - axis @ v) < r_max]
        q = q_cand[near]
        along = axis * (axis @ v)
        a, b, d = np.einsum("pj,kj->kp", q, np.stack([along, v - along, np.cross(axis, v)]))  # no threaded BLAS
        q2 = q_norm[near] ** 2
        tol = 1e-9 * (q2 + c_norm**2) + slack * q_norm[near] * c_norm
        t = (q2 + c_norm**2 - r_max**2) / 2 - a - tol  # near in frame n <=> b cos + d sin > t
        circle = np.flatnonzero((t < 0) | (t * t < b * b + d * d))  # near somewhere on the full turn
        near, b, d, t = near[circle], b[circle], d[circle], t[circle]
        with np.errstate(divide="ignore"):
            ratio = t / np.hypot(b, d)  # -inf where the pixel is near the spot at every angle: 180 deg arcs
        arc = np.degrees(np.arccos(ratio.clip(-1, 1)))  # half-width of the arc [deg]
        centre_angle = np.degrees(np.arctan2(d, b))
        centre_angle += 360 * np.round((middle - centre_angle) / 360)  # the copy nearest to the scan
        reach = int((half + 360) // 360)
        pieces = []
        for turn in range(-reach, reach + 1):  # arcs a turn away matter for scans of nearly 360 deg or more
            lo, hi = _frames_of_arc(centre_angle + 360 * turn, arc, step, n_frames)
            hit = np.flatnonzero(lo <= hi)
            if len(hit):
                pieces.append((near[hit], lo[hit], hi[hit]))
        if not pieces:
            continue
        pixel, first, last = (np.concatenate(x) for x in zip(*pieces))
        order = np.argsort(pixel, kind="stable") if len(pieces) > 1 else slice(None)  # (spot, pixel) row order
        spots.append(np.full(len(pixel), s))
        pixels.append(pixel[order])
        firsts.append(first[order])
        lasts.append(last[order])
    spot, pixel, first, last = (np.concatenate(x + [np.empty(0, np.int64)]).astype(np.int64)
                                for x in (spots, pixels, firsts, lasts))
    if size > 1:  # each spot's rows come from one rank: a stable sort by spot restores (spot, pixel) order
        spot, pixel, first, last = (_gather(comm, x, everyone=True) for x in (spot, pixel, first, last))
        order = np.argsort(spot, kind="stable")
        spot, pixel, first, last = spot[order], pixel[order], first[order], last[order]
    return _Visits(spot=spot, pixel=pixel, first=first, last=last, seen=np.bincount(spot, minlength=len(centres)) > 0)


def _frames_of_arc(centre, half_width, step, n_frames):
    """Frames n in [0, n_frames) with n * step in [centre - half_width, centre + half_width) [deg]: (first, last).

    Half-open, so that the arcs of one pixel in successive turns never share a frame.
    """
    if step > 0:
        first, last = np.ceil((centre - half_width) / step), np.ceil((centre + half_width) / step) - 1
    else:
        first, last = np.floor((centre + half_width) / step) + 1, np.floor((centre - half_width) / step)
    return first.clip(0, n_frames).astype(np.int64), last.clip(-1, n_frames - 1).astype(np.int64)


def _scan_axis(geometry) -> np.ndarray:
    """Unit lab axis u with R_gonio(phi + x) = Rot(u, x) R_gonio(phi): from a quarter turn (angular_step != 0)."""
    quarter = geometry.gonio(90.0 / geometry.angular_step) @ geometry.gonio(0).T
    axis = np.array([quarter[2, 1] - quarter[1, 2], quarter[0, 2] - quarter[2, 0], quarter[1, 0] - quarter[0, 1]])
    return axis / np.linalg.norm(axis)


def _axis_rotation(axis, theta) -> np.ndarray:
    """Rodrigues: rotations by angles ``theta`` [rad] about unit ``axis``: (N, 3, 3)."""
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    return cos * np.eye(3) + sin * cross + (1 - cos) * np.outer(axis, axis)


def _spare_core(comm) -> bool:
    """Whether this rank may read in a second thread: only when its node has more cores than ranks."""
    import os

    ranks = 1
    if comm is not None:
        from mpi4py import MPI

        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        ranks = node.Get_size()
        node.Free()
    return len(os.sched_getaffinity(0)) > ranks


def _harvest_frames(block, files, frames, shape, visits, candidates, q_cand, rotations, centres, G, r_min, r_max,
                    norm, threshold, rule="frame"):
    """Points of the frames in ``block`` (this rank's share), in (frame, spot, pixel) order, and the number
    of points of each frame (F,), which is all the frame column needs; also which spots are hot in which
    frame (F, S) and the points each threshold rule keeps (2,: frame rule, spot rule).

    Per chunk of frames, the (spot, pixel) rows visited in any of them form a dense
    (frame, row) table: one matrix product per frame rotates the rows, one gather
    reads their counts, and the tests and the output run over the whole table
    (masks and compress, no per-point index arithmetic).
    """
    centroid_sums = np.zeros((len(files), len(G), 4))  # per frame and spot: sum I, sum I*Q
    per_frame = np.zeros(len(files), np.int64)
    over = np.zeros((len(files), len(G)), bool)  # a spot pixel of spot s exceeds the threshold in frame n
    kept = np.zeros(2, np.int64)
    spans = np.empty(0, np.int64)
    if len(block):
        spans = np.minimum(visits.last, block[-1]) - np.maximum(visits.first, block[0]) + 1
        spans = spans[spans > 0]
    bound = int(spans.sum())  # points of this block before the exact tests
    out = {"Q": np.empty((bound, 3)), "I": np.empty(bound), "s": np.empty(bound, np.int32),  # int32: less to gather
           "p": np.empty(bound, np.int32)}
    chunk = 1
    if len(spans):  # an eighth of a visit (little waste), at most ~2**20 table entries (~100 MB of temporaries)
        chunk = int(np.clip(min(spans.mean() // 8, 2**20 * len(block) // bound), 1, 32))
    start, filled = time.perf_counter(), 0
    for c0 in range(0, len(block), chunk):
        numbers = block[c0:c0 + chunk]
        rows = np.flatnonzero((visits.first <= numbers[-1]) & (visits.last >= numbers[0]))
        spot, cand = visits.spot[rows], visits.pixel[rows]
        q_lab, pixel = q_cand[cand], candidates[cand]
        q_c = np.empty((len(numbers), len(rows), 3))
        values = []
        for i, n in enumerate(numbers):
            data = next(frames)
            if data.shape != shape:
                raise DataError(f"frame {files[n]} is {data.shape[0]} x {data.shape[1]}, the first frame "
                                f"{files[0]} is {shape[0]} x {shape[1]}")
            _rotate(q_lab, rotations[n], q_c[i])
            values.append(data.ravel()[pixel])
        values = np.stack(values)  # (frames, rows)
        offset = q_c - centres[spot]
        dist2 = np.einsum("frj,frj->fr", offset, offset)
        inside = (dist2 < r_max * r_max) & (visits.first[rows] <= numbers[:, None]) & (
            visits.last[rows] >= numbers[:, None])
        if threshold is not None:
            hot = inside & (values > threshold)
            if hot.any():  # those frames give no points; their hot pixels locate the peaks
                f, r = np.nonzero(hot)
                over[numbers[f], spot[r]] = True
                weights = values[f, r].astype(float)[:, None]
                np.add.at(centroid_sums, (numbers[f], spot[r]), np.concatenate([weights, weights * q_c[f, r]], 1))
        valid = inside & (dist2 > r_min * r_min) & (values >= 0)
        by_frame = valid & ~over[numbers].any(axis=1)[:, None]
        by_spot = valid & ~over[numbers[:, None], spot[None, :]]
        kept += [int(by_frame.sum()), int(by_spot.sum())]
        keep = by_frame if rule == "frame" else by_spot
        per_frame[numbers] = keep.sum(axis=1)
        done = slice(filled, filled + int(per_frame[numbers].sum()))
        (offset + G[spot]).reshape(-1, 3).compress(keep.ravel(), axis=0, out=out["Q"][done])
        out["I"][done] = (values / norm[numbers][:, None])[keep]
        out["s"][done] = np.broadcast_to(spot, keep.shape)[keep]
        out["p"][done] = np.broadcast_to(pixel, keep.shape)[keep]
        filled = done.stop
        count = c0 + len(numbers)
        if count * 10 // len(block) > c0 * 10 // len(block) or count == len(block):  # about every tenth
            log.info("harvest: %d/%d frames, %d points, %.1f frames/s", count, len(block), filled,
                     count / max(time.perf_counter() - start, 1e-9))
    return {k: v[:filled] for k, v in out.items()}, per_frame, centroid_sums, over, kept


def _rotate(q, matrix, out, rows: int = 16384):
    """out = q @ matrix.T in blocks of rows: OpenBLAS stays single-threaded (it threads above
    m n k = 2**18), which would fight the reader thread or the other ranks for the cores."""
    for a in range(0, len(q), rows):
        np.matmul(q[a:a + rows], matrix.T, out=out[a:a + rows])


def _frame_source(block, files, reader, first, frame_bytes, comm):
    """Data of the frames of ``block`` in order (``first``: frame 0's data, already read, or None): read
    ahead by a helper thread where this rank has a core to spare, else read when asked (both have ``close``)."""

    def load(n):
        return first if (first is not None and n == 0) else reader.read(files[n]).data

    if not _spare_core(comm):
        return (load(n) for n in block)
    return _ReadAhead(load, block, depth=int(np.clip(2**27 // frame_bytes, 4, 64)))  # at most ~128 MB ahead


class _ReadAhead:
    """Frames read by one helper thread, up to ``depth`` ahead, starting at once.

    Why: decompression and MD5 release the GIL, so reading overlaps the set-up
    and the selection when a core is free.
    """

    def __init__(self, load, block, depth: int):
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="difframe-harvest-read")
        self._load, self._waiting = load, iter(block)
        self._pending = deque(self._pool.submit(load, n) for _, n in zip(range(depth), self._waiting))

    def __iter__(self):
        return self

    def __next__(self):
        if not self._pending:
            raise StopIteration
        data = self._pending.popleft().result()
        n = next(self._waiting, None)
        if n is not None:
            self._pending.append(self._pool.submit(self._load, n))
        return data

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class _Counted:
    """A frame source that advances a progress bar by one per frame it hands out."""

    def __init__(self, frames, progress):
        self.frames, self.progress = frames, progress

    def __iter__(self):
        return self

    def __next__(self):
        data = next(self.frames)
        self.progress.update(1)
        return data

    def close(self) -> None:
        self.frames.close()


def _gather(comm, array: np.ndarray, everyone: bool = False) -> np.ndarray | None:
    """Concatenate ``array`` from every rank (rank order) on rank 0, or on all ranks, without pickling."""
    from mpi4py import MPI

    array = np.ascontiguousarray(array)
    row = int(np.prod(array.shape[1:]))
    counts = np.array(comm.allgather(int(array.size)), dtype=np.int64)
    out = None
    if everyone or comm.Get_rank() == 0:
        out = np.empty((counts.sum() // max(row, 1), *array.shape[1:]), array.dtype)
    spec = [out, counts, None, MPI._typedict[array.dtype.char]] if out is not None else None
    if everyone:
        comm.Allgatherv(array, spec)
    else:
        comm.Gatherv(array, spec, root=0)
    return out


def _reduce(comm, array: np.ndarray) -> np.ndarray:
    """Element-wise sum over ranks on rank 0 (each element is non-zero on one rank only: exact)."""
    from mpi4py import MPI

    out = np.zeros_like(array) if comm.Get_rank() == 0 else None
    comm.Reduce(np.ascontiguousarray(array), out, op=MPI.SUM, root=0)
    return out


# -- the rough whole-volume mode (DO_ELASTIC = 0) -------------------------------------


@dataclass
class Volume:
    """Mean normalised intensity on a cubic grid of the crystal frame (NaN where no pixel fell)."""

    data: np.ndarray  # (N, N, N), index order (x, y, z)
    counts: np.ndarray  # (N, N, N) pixels per voxel
    axis: np.ndarray  # (N,) voxel centres [1/Angstrom], the same on x, y and z
    attrs: dict = field(default_factory=dict)


def harvest_volume(geometry, files: Sequence[str | Path], options: HarvestOptions, plugins=None,
                   comm=None, progress=None) -> Volume | None:
    """Bin every valid pixel of every frame into an N^3 grid spanning the largest |Q| (for a first look);
    ``progress`` (a :mod:`difframe.progress` bar) advances by one per frame of this rank."""
    from difframe.detector import choose_reader

    if plugins is None:
        from difframe.manager import PluginManager

        plugins = PluginManager()
    files = [Path(f) for f in files]
    rank, size = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
    reader = choose_reader(files[0], plugins)
    shape = reader.read(files[0]).data.shape
    mask = read_mask(options.mask_file, shape, plugins) if options.mask_file else np.ones(shape, bool)
    norm = read_normalisation(options.normalisation_file, files) if options.normalisation_file else np.ones(len(files))
    good = np.flatnonzero(mask.ravel())
    q_lab = geometry.q_lab_image(shape).reshape(-1, 3)[good]
    n = int(options.rough_grid)
    q_max = float(np.linalg.norm(q_lab, axis=1).max()) * (1 + 1e-9)
    step = 2 * q_max / n
    sums, counts = np.zeros(n**3), np.zeros(n**3)
    rotations = geometry.lab_to_crystal(np.arange(len(files)))
    block = np.array_split(np.arange(len(files)), size)[rank]
    for i, frame in enumerate(block):
        data = reader.read(files[frame]).data
        if data.shape != shape:
            raise DataError(f"frame {files[frame]} is {data.shape[0]} x {data.shape[1]}, the first frame "
                            f"{files[0]} is {shape[0]} x {shape[1]}")
        values = data.ravel()[good].astype(float)
        valid = values >= 0
        cell = np.floor((q_lab[valid] @ rotations[frame].T + q_max) / step).astype(np.int64).clip(0, n - 1)
        flat = (cell[:, 0] * n + cell[:, 1]) * n + cell[:, 2]
        sums += np.bincount(flat, weights=values[valid] / norm[frame], minlength=n**3)
        counts += np.bincount(flat, minlength=n**3)
        if progress is not None:
            progress.update(1)
        if (i + 1) % max(1, len(block) // 10) == 0:
            log.info("rough harvest: %d/%d frames", i + 1, len(block))
    if comm is not None and size > 1:
        sums, counts = _reduce(comm, sums), _reduce(comm, counts)
        if rank != 0:
            return None
    with np.errstate(invalid="ignore", divide="ignore"):
        data = np.where(counts > 0, sums / counts, np.nan).reshape(n, n, n)
    axis = -q_max + step * (np.arange(n) + 0.5)
    return Volume(data=data, counts=counts.reshape(n, n, n).astype(np.int64), axis=axis,
                  attrs={"frame_convention": FRAME_CONVENTION, "unit": Q_UNIT,
                         "input_files": [str(f) for f in files]})


@contextlib.contextmanager
def _new_h5(path: Path, attrs: dict, creator: str):
    """An HDF5 file written atomically, its root attributes set."""
    import h5py

    from difframe.fileio import atomic_path

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for key, value in attrs.items():
            f.attrs[key] = value
        f.attrs["creator"] = creator
        yield f


def write_volume(volume: Volume, path: str | Path) -> Path:
    """The rough volume as HDF5 (``volume/data`` with ``volume/{x,y,z}`` axes, as silx/PyMca show)."""
    path = Path(path)
    with _new_h5(path, volume.attrs, "difframe tds_harvest (DO_ELASTIC=0)") as f:
        group = f.create_group("volume")
        group.attrs["NX_class"] = "NXdata"
        group.attrs["signal"] = "data"
        group.attrs["axes"] = ["x", "y", "z"]
        group.create_dataset("data", data=volume.data)
        group.create_dataset("counts", data=volume.counts)
        for name in ("x", "y", "z"):
            group.create_dataset(name, data=volume.axis).attrs["units"] = Q_UNIT
        from difframe import nexus

        entry = nexus.entry(f, "entry", "DO_ELASTIC = 0: every valid pixel binned in the crystal frame")
        entry["volume"] = group  # a hard link: silx/PyMca open on it, readers of /volume see no change
        entry.attrs["default"] = "volume"
    return path


# -- the file ----------------------------------------------------------------------------


def write_harvest(result: Harvest, path: str | Path) -> Path:
    """Write the harvest HDF5 file atomically (the layout in docs/tds-usage.md)."""
    path = Path(path)
    with _new_h5(path, result.attrs, "difframe tds_harvest") as f:
        points = f.create_group("points")
        points.create_dataset("Q", data=result.Q)
        points.create_dataset("intensity", data=result.intensity)
        points.create_dataset("spot", data=result.spot.astype(np.int32))
        points.create_dataset("frame", data=result.frame.astype(np.int32))
        points.create_dataset("pixel", data=result.pixel.astype(np.int32))
        spots = f.create_group("spots")
        spots.create_dataset("hkl", data=result.hkl.astype(np.int32))
        spots.create_dataset("G", data=result.G)
        spots.create_dataset("centroid", data=result.centroid)
        spots.create_dataset("count", data=result.counts.astype(np.int64))
        f.create_dataset("excluded_frames", data=result.excluded_frames.astype(np.int32))
        from difframe import nexus

        nexus.nxdata(nexus.entry(f, "entry", "TDS harvest"), "points_qxqy",  # silx/PyMca open on this scatter
                     ("intensity", points["intensity"], "counts / normalisation"),
                     [(f"Q{c}", result.Q[:, d].astype(np.float32), Q_UNIT) for d, c in enumerate("xy")],
                     scatter=True, default=True, title="harvested points over Qx, Qy (crystal frame)")
    return path


def load_harvest(path: str | Path, points: bool = True) -> Harvest:
    """Read a harvest file (``points=False``: spots and centroids only)."""
    import h5py

    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except (OSError, FileNotFoundError) as exc:
        raise DataError(f"harvest file {path} cannot be opened: {exc}") from None
    with f:
        try:
            spots = f["spots"]
            empty = np.empty((0, 3))
            return Harvest(
                Q=f["points/Q"][()] if points else empty,
                intensity=f["points/intensity"][()] if points else np.empty(0),
                spot=f["points/spot"][()].astype(np.int64) if points else np.empty(0, np.int64),
                frame=f["points/frame"][()].astype(np.int64) if points else np.empty(0, np.int64),
                pixel=f["points/pixel"][()].astype(np.int64) if points else np.empty((0, 2), np.int64),
                hkl=spots["hkl"][()].astype(np.int64),
                G=spots["G"][()],
                centroid=spots["centroid"][()] if "centroid" in spots else np.full((len(spots["hkl"]), 3), np.nan),
                excluded_frames=f["excluded_frames"][()] if "excluded_frames" in f else np.empty(0, np.int64),
                attrs={k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in f.attrs.items()},
            )
        except KeyError as exc:
            raise DataError(f"{path} is not a difframe harvest file (missing {exc})") from None


def hkl_summary(result: Harvest) -> str:
    """The ``show_hkls`` table: each spot's hkl and its number of points."""
    lines = ["   h    k    l   points"]
    for (h, k, l), n in zip(result.hkl.tolist(), result.counts.tolist()):
        lines.append(f"{h:4d} {k:4d} {l:4d} {n:8d}")
    lines.append(f"{len(result.hkl)} spots, {int(result.counts.sum())} points")
    return "\n".join(lines)
