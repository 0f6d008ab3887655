"""Synthetic rotation stacks with known elastic constants (``difframe tds simulate``).

The simulator writes what a tds2el user has after an experiment and an alignment:
CBF frames (int32, byte-offset, Pilatus-like mini header), a mask EDF, a
normalisation file, a conf_file and an input.par, plus ``truth.json`` with the
constants and the spots, so that ``difframe tds DIR/input.par`` has a known answer.

Intensity of pixel (row, col) of frame n, in the geometry of
:mod:`difframe.crystal.geometry`, integrated over the exposure phi_n - step/2 ..
phi_n + step/2 as a detector does: the goniometer is turned to
``scan.exposure_substeps`` Gauss-Legendre nodes of the frame (by default as many
as Q moves by two Bragg peak widths (2 sigma) during the frame: the average
converges fast on the smooth TDS; equal sub-frames at their centres would need
several times more for 1e-4), with Q_c the pixel's
crystal-frame vector, G the nearest reciprocal-lattice vector and q = Q_c - G:

    I = norm_n * (background + A(G) * (tds_scale * T(Q_c; C) / s(q) + bragg * exp(-|q|^2 / 2 sigma^2)))

* T is TB's model, the fit's own code: :func:`difframe.tds.model.fused_classical` (the fit's CPU pass;
  :func:`~difframe.tds.model.tds_intensity` with ``quantum_bose``), with |q| floored at sigma inside the
  Bragg peak where T diverges;
* A(G) = exp(-B_dw |G|^2 / (16 pi^2)) for reflections the lattice centering allows, 0 otherwise;
* s(q) = (sin x / x)^2 with x = pi |q| / |b*|min when ``dispersion`` is on (acoustic
  branches softening towards the zone boundary like a chain), else 1;
* sigma = DeltaQ_min |b*|max / 6, so the Bragg peak is negligible where the harvest looks;
* C is the Voigt matrix of ``crystal.constants`` in difframe's frame (a* along x, c along z); with
  ``crystal.setting = "ieee"`` the constants are read in the IEEE setting and turned into it
  (:mod:`difframe.crystal.setting`); ``truth.json`` states both;
* counts are Poisson (``intensity.noise = false``: the mean, rounded); the dead
  columns of a module gap read -1, as Pilatus frames do.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from difframe.crystal.geometry import Geometry
from difframe.crystal.setting import SETTINGS, ieee_axes, rotate_voigt
from difframe.crystal.symmetry import canonical_name, check_cell, elastic_structure
from difframe.errors import UsageError
from difframe.fileio import atomic_path

__all__ = ["simulate", "simulate_from_file", "SimulationSpec", "allowed_reflections"]

log = logging.getLogger("difframe.tds.simulate")

CENTERINGS = ("P", "I", "F", "C", "R")
FRAME_CHUNK = 8  # frames evaluated together: bounds the (3, chunk * rows * cols) temporaries
BRAGG_REACH = 40.0  # sigmas: exp(-BRAGG_REACH^2 / 2) underflows to 0 in float64
#: the 27 offsets from a rounded hkl that :func:`_nearest_allowed` searches, in its order of preference
NEIGHBOURS = np.array(np.meshgrid([0, -1, 1], [0, -1, 1], [0, -1, 1], indexing="ij")).reshape(3, -1).T
MIN_SUBSTEPS = 3  # Gauss-Legendre nodes per exposure at least (one node would be the centre: no integration)


def allowed_reflections(hkl: np.ndarray, centering: str) -> np.ndarray:
    """Boolean mask of the reflections a lattice centering does not extinguish (hexagonal axes for R).

    Only the asked rule is evaluated, parity as the low bit (a quarter of the modulo's time)."""
    h, k, l = np.moveaxis(np.asarray(hkl).astype(np.int64, copy=False), -1, 0)
    if centering == "P":
        return np.ones(h.shape, dtype=bool)
    if centering == "R":
        return (-h + k + l) % 3 == 0
    if centering == "I":
        parity = h + k + l
    elif centering == "F":
        parity = (h + k) | (k + l)  # both even: neither has the low bit
    elif centering == "C":
        parity = h + k
    else:
        raise ValueError(f"unknown lattice centering {centering!r}")
    return parity & 1 == 0


@dataclass(frozen=True)
class SimulationSpec:
    """A validated simulation description (see ``examples/tds/mgo.toml``)."""

    name: str
    generators: str
    constants: dict[str, float]
    centering: str
    density: float
    temperature: float
    quantum_bose: bool
    geometry: Geometry
    frames: int
    shape: tuple[int, int]
    prefix: str
    gap_columns: tuple[int, ...]
    beamstop_radius: float
    tds_scale: float
    bragg: float
    background: float
    debye_waller: float
    dispersion: bool
    normalisation_spread: float
    seed: int
    max_hkl: int
    max_spots: int
    options: dict[str, Any]
    exposure_substeps: int | None = None  # sub-frames per exposure (None: from the Bragg peak width)
    noise: bool = True
    setting: str = "giacovazzo"  # Cartesian setting of ``constants``: giacovazzo (difframe's) or ieee

    @classmethod
    def from_mapping(cls, spec: Mapping[str, Any], source: str = "simulation") -> "SimulationSpec":
        def table(name):
            value = spec.get(name, {})
            if not isinstance(value, Mapping):
                raise UsageError(f"{source}: [{name}] must be a table")
            return value

        unknown = set(spec) - {"crystal", "geometry", "detector", "scan", "intensity", "options"}
        if unknown:
            raise UsageError(f"{source}: unknown section(s) {', '.join(sorted(unknown))} (expected crystal, "
                             "geometry, detector, scan, intensity, options)")
        crystal, geo, det, scan, inten = (table(n) for n in ("crystal", "geometry", "detector", "scan", "intensity"))
        cell = crystal.get("cell")
        if not isinstance(cell, (list, tuple)) or len(cell) != 6:
            raise UsageError(f"{source}: crystal.cell must be [a, b, c, alpha, beta, gamma], got {cell!r}")
        geometry = Geometry.from_mapping({**geo, **dict(zip(("AA", "BB", "CC", "aAA", "aBB", "aCC"), cell))},
                                         source=f"{source} [geometry]")
        shape = det.get("shape", [192, 192])
        if not isinstance(shape, (list, tuple)) or len(shape) != 2 or not all(isinstance(s, int) and s > 0
                                                                             for s in shape):
            raise UsageError(f"{source}: detector.shape must be [rows, cols], got {shape!r}")
        centering = str(crystal.get("centering", "P")).upper()
        if centering not in CENTERINGS:
            raise UsageError(f"{source}: crystal.centering = {centering!r}, expected one of {', '.join(CENTERINGS)}")
        constants = crystal.get("constants")
        if not isinstance(constants, Mapping) or not constants:
            raise UsageError(f"{source}: crystal.constants must be a table such as {{C11 = 297.0, ...}}")
        frames = scan.get("frames", 90)
        if not isinstance(frames, int) or frames < 1:
            raise UsageError(f"{source}: scan.frames = {frames!r} must be a positive integer")
        substeps = scan.get("exposure_substeps")
        if substeps is not None and (not isinstance(substeps, int) or isinstance(substeps, bool) or substeps < 1):
            raise UsageError(f"{source}: scan.exposure_substeps = {substeps!r} must be an integer >= 1 "
                             "(1: the exposure centre only)")
        setting = str(crystal.get("setting", "giacovazzo")).lower()
        if setting not in SETTINGS:
            raise UsageError(f"{source}: crystal.setting = {setting!r}, expected one of {', '.join(SETTINGS)} "
                             "(the Cartesian frame the constants are given in)")
        try:
            return cls(
                setting=setting,
                name=str(crystal.get("name", "crystal")),
                generators=str(crystal.get("generators", "1~")),
                constants={canonical_name(k): float(v) for k, v in constants.items()},
                centering=centering,
                density=float(crystal.get("density", 2.71)),
                temperature=float(crystal.get("temperature", 300.0)),
                quantum_bose=bool(crystal.get("quantum_bose", False)),
                geometry=geometry,
                frames=frames,
                shape=(int(shape[0]), int(shape[1])),
                prefix=str(scan.get("prefix", "frame_")),
                gap_columns=tuple(int(c) for c in det.get("gap_columns", [])),
                beamstop_radius=float(det.get("beamstop_radius", 4.0)),
                tds_scale=float(inten.get("tds_scale", 200.0)),
                bragg=float(inten.get("bragg", 2e8)),
                background=float(inten.get("background", 2.0)),
                debye_waller=float(inten.get("debye_waller", 0.5)),
                dispersion=bool(inten.get("dispersion", False)),
                normalisation_spread=float(inten.get("normalisation_spread", 0.05)),
                seed=int(inten.get("seed", 0)),
                max_hkl=int(scan.get("max_hkl", 6)),
                max_spots=int(scan.get("max_spots", 12)),
                options=dict(table("options")),
                exposure_substeps=substeps,
                noise=bool(inten.get("noise", True)),
            )
        except (TypeError, ValueError) as exc:
            raise UsageError(f"{source}: {exc}") from None


def simulate(spec: Mapping[str, Any], outdir: str | Path, source: str = "simulation") -> dict[str, Any]:
    """Write a synthetic rotation stack and its tds2el input files into ``outdir``.

    Returns ``truth``: the constants, the collected spots with their predicted
    (frame, row, col), and the paths written.  Refuses to write into a folder
    that already holds an input.par, so an earlier simulation is never overwritten.
    """
    import fabio  # heavy: only when simulating

    sim = SimulationSpec.from_mapping(spec, source)
    outdir = Path(outdir)
    if (outdir / "input.par").exists():
        raise UsageError(f"{outdir} already holds a simulation (input.par); choose another output folder")
    geo = sim.geometry
    check_cell(sim.generators, (geo.AA, geo.BB, geo.CC, geo.aAA, geo.aBB, geo.aCC))
    structure = elastic_structure(sim.generators, sim.geometry.lattice.direct)
    axes = ieee_axes(sim.geometry.lattice)
    ieee = elastic_structure(sim.generators, sim.geometry.lattice.direct, frame=axes)
    if sim.setting == "ieee":  # full_voigt names every constant that is missing or not free
        c_voigt = rotate_voigt(ieee.full_voigt(sim.constants), axes.T)
    else:
        c_voigt = structure.full_voigt(sim.constants)
    constants = structure.values_of(c_voigt)  # in difframe's frame: what the fit gives back
    c_ieee = rotate_voigt(c_voigt, axes)
    rng = np.random.default_rng(sim.seed)
    geo = sim.geometry
    options = {"DeltaQ_max": 0.15, "DeltaQ_min": 0.04, "threshold": 500000.0, **sim.options}
    spots = _predict_spots(sim, options)
    norm = 1.0 + sim.normalisation_spread * rng.uniform(-1, 1, sim.frames)
    dead = np.zeros(sim.shape, dtype=bool)
    dead[:, list(sim.gap_columns)] = True

    files = []
    q_lab = geo.q_lab_image(sim.shape)
    substeps = sim.exposure_substeps or exposure_substeps(sim, options, q_lab)
    log.info("simulating the exposure of each frame by %d sub-frames", substeps)
    for start in range(0, sim.frames, FRAME_CHUNK):
        frames = np.arange(start, min(start + FRAME_CHUNK, sim.frames))
        expected = _expected_counts(sim, options, c_voigt, q_lab, frames, substeps) * norm[frames, None, None]
        counts = (rng.poisson(expected) if sim.noise else np.rint(expected)).astype(np.int32)
        counts[:, dead] = -1
        for n, image in zip(frames, counts):
            path = outdir / f"{sim.prefix}{n + 1:04d}.cbf"
            header = {"_array_data.header_convention": "PILATUS_1.2",
                      "_array_data.header_contents": _pilatus_header(sim, n)}
            with atomic_path(path) as tmp:
                fabio.cbfimage.CbfImage(data=image, header=header).write(str(tmp))
            files.append(path)
        log.info("simulated frames %d-%d of %d", frames[0] + 1, frames[-1] + 1, sim.frames)

    mask = (~dead).astype(np.uint8)
    rows, cols = np.ogrid[: sim.shape[0], : sim.shape[1]]
    mask[(rows - geo.det_origin_Y) ** 2 + (cols - geo.det_origin_X) ** 2 <= sim.beamstop_radius**2] = 0
    with atomic_path(outdir / "filter.edf") as tmp:
        fabio.edfimage.EdfImage(data=mask).write(str(tmp))
    _write_text(outdir / "normalisation.dat", "".join(f"{f.name} {d:.6f}\n" for f, d in zip(files, norm)))

    free = structure.free
    fixed = free[0]
    cguess = {f"A{n[1:]}": _guess(constants[n], n == fixed) for n in free}
    conf = {**geo.to_mapping(), "dim1": sim.shape[0], "dim2": sim.shape[1], "DO_ELASTIC": 1,
            "load_from_file": None, "save_to_file": "harvest_spots.h5", "REPLICA_COLLECTION": 0,
            "collectSpots": [list(map(int, h)) for h in spots["hkl"]], "fitSpots": True, "CGUESS": cguess,
            "Temperature": sim.temperature, "density": sim.density, "doMinimisation": 1, "visSim": 0,
            **options}
    _write_text(outdir / "tds2el.par", _parfile_text(conf, f"conf_file of the simulated {sim.name} scan"))
    main = {"conf_file": "tds2el.par", "filter_file": "filter.edf", "images_prefix": sim.prefix,
            "images_postfix": ".cbf", "ascii_generators": sim.generators, "normalisation_file": "normalisation.dat"}
    _write_text(outdir / "input.par", _parfile_text(main, f"input.par of the simulated {sim.name} scan"))
    truth = {
        "name": sim.name, "generators": sim.generators, "free": free, "fixed": fixed,
        "constants": constants, "voigt": c_voigt.tolist(), "setting": sim.setting,
        "ieee": {"axes": axes.tolist(), "free": ieee.free, "constants": ieee.values_of(c_ieee),
                 "voigt": c_ieee.tolist()},
        "dispersion": sim.dispersion,
        "spots": {k: np.asarray(v).tolist() for k, v in spots.items()},
        "frames": [f.name for f in files], "normalisation": norm.tolist(), "exposure_substeps": substeps,
        "noise": sim.noise,
    }
    _write_text(outdir / "truth.json", json.dumps(truth, indent=1) + "\n")
    return truth


def simulate_from_file(spec_path: str | Path, outdir: str | Path) -> Path:
    """:func:`simulate` from a TOML/JSON/YAML spec file (``difframe tds simulate SPEC -o DIR``); returns DIR."""
    from difframe.params import load_source

    simulate(load_source(spec_path), outdir, source=str(spec_path))
    return Path(outdir)


def _guess(value: float, fixed: bool) -> list[float]:
    """CGUESS entry: the fixed constant sets the scale (exact), the others start 10% off."""
    start = value if fixed else 1.1 * value
    bound = 10.0 * max(abs(value), 1.0)
    return [start, -bound, bound]


def _predict_spots(sim: SimulationSpec, options: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Allowed reflections whose whole harvest shell crosses the detector during the scan."""
    r = np.arange(-sim.max_hkl, sim.max_hkl + 1)
    hkl = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    hkl = hkl[np.any(hkl != 0, axis=1) & allowed_reflections(hkl, sim.centering)]
    geo = sim.geometry
    pred = geo.predict_bragg(hkl, sim.frames, sim.shape)
    shell = float(options["DeltaQ_max"]) * geo.lattice.max_reciprocal  # harvest radius [1/Angstrom]
    px = shell / (geo.k * geo.pixel_size / geo.dist) + 2.0  # ... in pixels
    frames = np.degrees(shell / np.linalg.norm(geo.lattice.q(pred["hkl"]), axis=1)) / abs(geo.angular_step) + 1.0
    inside = ((pred["row"] > px) & (pred["row"] < sim.shape[0] - 1 - px) & (pred["col"] > px)
              & (pred["col"] < sim.shape[1] - 1 - px) & (pred["frame"] > frames)
              & (pred["frame"] < sim.frames - 1 - frames))
    _, first = np.unique(pred["hkl"][inside], axis=0, return_index=True)
    keep = np.sort(first)[: sim.max_spots]
    if keep.size == 0:
        raise UsageError("no Bragg reflection crosses the middle of the detector during the simulated scan: "
                         "enlarge the detector, the scan or max_hkl, or move the detector closer")
    return {k: v[inside][keep] for k, v in pred.items()}


def exposure_substeps(sim, options, q_lab) -> int:
    """Nodes per exposure: as many as the fastest pixel's Q moves by 2 sigma (sigma: the Bragg peak's width) in a frame,
    and at least :data:`MIN_SUBSTEPS` (fine frames: the TDS is then nearly a low polynomial across the frame)."""
    sigma = float(options["DeltaQ_min"]) * sim.geometry.lattice.max_reciprocal / 6.0
    travel = float(np.linalg.norm(q_lab, axis=-1).max()) * np.radians(abs(sim.geometry.angular_step))
    return max(MIN_SUBSTEPS, int(np.ceil(travel / (2 * sigma)))) if sigma > 0 else MIN_SUBSTEPS


def _expected_counts(sim, options, c_voigt, q_lab, frames, substeps: int = 1) -> np.ndarray:
    """Mean counts (before normalisation) of ``frames`` integrated over their exposure: (len(frames), rows, cols)."""
    from difframe.tds.model import check_stability

    check_stability(c_voigt)
    pixels = np.ascontiguousarray(q_lab.reshape(-1, 3).T)  # (3, pixels): a row per component
    total = 0.0
    x, w = np.polynomial.legendre.leggauss(substeps)  # nodes across the frame (fractional frame index)
    for xj, wj in zip(x, w):
        total = total + 0.5 * wj * _counts_at(sim, options, c_voigt, pixels, frames + 0.5 * xj)
    return total.reshape(len(frames), *q_lab.shape[:2])


def _nearest_allowed(q_c, lattice, centering: str, reach: float) -> np.ndarray:
    """hkl (3, N) of the reflection nearest to each Q_c (columns of (3, N); Cartesian distance) that the centering
    allows, wherever that can be within ``reach`` (the harvest's DeltaQ_max): farther pixels are never harvested.

    Why not rounding h = B^-1 Q_c alone: every node but the rounded one is at least
    pi / max(a, b, c) away (half the spacing of some family of hkl planes), so the
    rounded node is the answer when it is allowed and nearer than that; otherwise
    (oblique cells with a long edge such as calcite's c, or an extinct rounded node
    within reach of an allowed one) the 27 neighbours are searched, the first nearest in
    :data:`NEIGHBOURS` order winning.  Whether h0 + offset is allowed depends on h0 modulo the
    centering's period only, so the search takes the rounded nodes class by class and tries only
    the offsets allowed for that class (9 of 27 for R, 7 or 8 for F), on the residual Q_c - B h0.
    """
    b = lattice.B
    start = np.rint(np.einsum("ij,jn->in", np.linalg.inv(b), q_c)).astype(np.int64)
    safe = np.pi / max(lattice.a, lattice.b, lattice.c)
    if safe > reach:
        return start
    residual = q_c - np.einsum("ij,jn->in", b, start)
    d0 = np.einsum("in,in->n", residual, residual)
    doubt = np.flatnonzero(~(allowed_reflections(start.T, centering) & _nonzero(start) & (d0 < safe * safe)))
    base = np.take(start, doubt, axis=1)
    period = 3 if centering == "R" else 2
    residues = np.array(np.unravel_index(np.arange(period**3), (period,) * 3))  # (3, classes)
    residue = np.ravel_multi_index(base % period, (period,) * 3)
    digits = np.array([9, 3, 1])  # a number for each offset in -1..1 per index
    origin = np.where(np.abs(base).max(axis=0) <= 1, digits @ (1 - base), -1)  # base + offset = 000 for that one
    best = np.zeros(len(doubt), dtype=np.int64)
    for r in range(period**3):
        members = np.flatnonzero(residue == r)
        if not members.size:
            continue
        rest, near = np.take(residual, np.take(doubt, members), axis=1), np.take(origin, members)
        found, found_d = np.zeros(len(members), dtype=np.int64), np.full(len(members), np.inf)
        for i in np.flatnonzero(allowed_reflections(NEIGHBOURS + residues[:, r], centering)):
            p = b @ NEIGHBOURS[i]
            d = (rest[0] - p[0]) ** 2 + (rest[1] - p[1]) ** 2 + (rest[2] - p[2]) ** 2
            d[near == digits @ (NEIGHBOURS[i] + 1)] = np.inf
            closer = d < found_d
            found[closer], found_d[closer] = i, d[closer]
        best[members] = found
    start[:, doubt] = base + NEIGHBOURS[best].T
    return start


def _nonzero(hkl: np.ndarray) -> np.ndarray:
    """Columns of a (3, N) hkl that are not 000."""
    return (hkl[0] | hkl[1] | hkl[2]) != 0


def _counts_at(sim, options, c_voigt, pixels, frames) -> np.ndarray:
    """Mean counts at the (fractional) frame positions ``frames`` of the pixels whose Q_lab are the columns of
    ``pixels`` (3, P): (len(frames) * P,), frame by frame.

    Why this shape: one row per component, so the rotations are einsum products over contiguous rows (the
    (..., 3) stacks' einsum took ten times longer, and BLAS's threads spin on 3 x 3 products); only the pixels
    an allowed reflection lights (amp > 0) reach the model (the fit's fused pass) and the exponentials, the
    Bragg peak only within :data:`BRAGG_REACH` sigma, where exp has not yet underflowed to 0: every pixel's
    counts are still the docstring's formula, none is left out."""
    from difframe.tds.model import fused_classical, tds_intensity

    geo = sim.geometry
    lattice = geo.lattice
    b = lattice.B
    q_c = np.empty((3, len(frames), pixels.shape[1]))
    np.einsum("nij,jp->inp", geo.lab_to_crystal(frames), pixels, out=q_c)
    q_c = q_c.reshape(3, -1)  # (3, frames * P), frame by frame
    reach = float(options.get("DeltaQ_max", 0.15)) * lattice.max_reciprocal
    hkl = _nearest_allowed(q_c, lattice, sim.centering, reach)
    lit = np.flatnonzero(allowed_reflections(hkl.T, sim.centering) & _nonzero(hkl))
    hkl = np.take(hkl, lit, axis=1)  # a fifth of the time of hkl[:, lit]
    g = np.einsum("ij,jn->in", b, hkl)
    Q = np.ascontiguousarray(q_c[:, lit].T)  # (lit, 3) for the model
    q = Q - g.T
    qn = np.sqrt(np.einsum("ni,ni->n", q, q))
    amp = np.exp(-sim.debye_waller * np.einsum("in,in->n", g, g) / (16 * np.pi**2))
    sigma = float(options["DeltaQ_min"]) * lattice.max_reciprocal / 6.0
    q_safe = q * np.maximum(1.0, sigma / np.maximum(qn, 1e-12))[:, None]
    if sim.quantum_bose:
        tds = tds_intensity(Q, Q - q_safe, c_voigt, temperature=sim.temperature, density=sim.density,
                            quantum_bose=True)
    else:
        tds = fused_classical(Q, q_safe, c_voigt)[0]
    if sim.dispersion:
        x = np.pi * np.maximum(qn, sigma) / np.linalg.norm(b, axis=0).min()
        tds = tds / np.sinc(x / np.pi) ** 2
    lit_counts = sim.tds_scale * tds
    peak = np.flatnonzero(qn < BRAGG_REACH * sigma)
    lit_counts[peak] += sim.bragg * np.exp(-0.5 * (qn[peak] / sigma) ** 2)
    counts = np.full(q_c.shape[1], sim.background)
    counts[lit] += amp * lit_counts
    return counts


def _pilatus_header(sim: SimulationSpec, n: int) -> str:
    geo = sim.geometry
    lines = [
        "# Detector: PILATUS-like simulated by difframe, S/N 0-0000",
        f"# Pixel_size {geo.pixel_size * 1e-3:.6g} m x {geo.pixel_size * 1e-3:.6g} m",
        "# Exposure_time 1.000000 s",
        f"# Wavelength {geo.lmbda:.6f} A",
        f"# Detector_distance {geo.dist * 1e-3:.6f} m",
        f"# Beam_xy ({geo.det_origin_X:.2f}, {geo.det_origin_Y:.2f}) pixels",
        f"# Start_angle {float(geo.phi_of_frame(n)) - 0.5 * geo.angular_step:.4f} deg.",
        f"# Angle_increment {geo.angular_step:.4f} deg.",
        f"# Omega {geo.omega:.4f} deg.",
        f"# Kappa {geo.kappa:.4f} deg.",
        f"# Alpha {geo.alpha:.4f} deg.",
    ]
    return "\r\n".join(lines) + "\r\n"


def _parfile_text(values: Mapping[str, Any], title: str) -> str:
    """Python-literal assignments that :mod:`difframe.tds.parfile` (and tds2el) read back exactly."""
    lines = [f"# {title}, written by difframe tds simulate"]
    lines += [f"{key} = {value!r}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
