"""The simulator: Bragg peaks where the geometry predicts them, TDS as the physics says, files tds2el reads."""

import copy
import json

import fabio
import numpy as np
import pytest

from difframe.crystal.geometry import Geometry
from difframe.errors import UsageError
from difframe.params import ParamTree
from difframe.tds.config import geometry_of, read_tds_config
from difframe.tds.simulate import (SimulationSpec, _expected_counts, _nearest_allowed, _predict_spots,
                                   allowed_reflections, exposure_substeps, simulate, simulate_from_file)

SPEC = {
    "crystal": {"name": "MgO", "cell": [4.212, 4.212, 4.212, 90, 90, 90], "centering": "F",
                "generators": "1~,4(z),3(111)", "constants": {"C11": 297.0, "C12": 95.2, "C44": 155.7},
                "density": 3.585, "temperature": 300.0},
    "geometry": {"lmbda": 0.4, "dist": 30.0, "pixel_size": 0.172, "det_origin_X": 60.0, "det_origin_Y": 56.0,
                 "angular_step": 0.5, "kappa": 10.0, "r1": 12.0, "r2": -7.0, "r3": 25.0, "d1": 0.3, "d2": -0.2},
    "detector": {"shape": [112, 120], "gap_columns": [90, 91], "beamstop_radius": 3.0},
    "scan": {"frames": 40, "prefix": "mgo_", "max_hkl": 4, "max_spots": 6},
    "intensity": {"seed": 3},
    "options": {"DeltaQ_max": 0.15, "DeltaQ_min": 0.04, "threshold": 500000.0},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "mgo-run"
    truth = simulate(SPEC, out)
    stack = np.array([fabio.open(str(out / name)).data for name in truth["frames"]])
    return out, truth, stack


def test_bragg_peaks_land_where_predicted(run):
    out, truth, stack = run
    spots = truth["spots"]
    assert len(spots["hkl"]) >= 2
    assert all(allowed_reflections(np.array(spots["hkl"]), "F"))
    for f, r, c in zip(spots["frame"], spots["row"], spots["col"]):
        fi, ri, ci = (int(round(x)) for x in (f, r, c))
        box = stack[fi - 2:fi + 3, ri - 2:ri + 3, ci - 2:ci + 3]
        offset = np.array(np.unravel_index(box.argmax(), box.shape)) - 2
        assert np.all(np.abs(offset) <= 1), offset
        assert box.max() > 500000.0  # strong enough to exercise `threshold`


def test_frames_mask_and_normalisation_files(run):
    out, truth, stack = run
    assert stack.dtype == np.int32 and stack.shape == (40, 112, 120)
    assert np.all(stack[:, :, [90, 91]] == -1) and stack[:, :, :90].min() >= 0
    image = fabio.open(str(out / "mgo_0004.cbf"))
    assert "x-CBF_BYTE_OFFSET" in image.header.get("conversions", "")
    header = image.header["_array_data.header_contents"]
    assert "# Start_angle 1.2500 deg." in header and "# Wavelength 0.400000 A" in header
    mask = fabio.open(str(out / "filter.edf")).data
    assert mask.shape == (112, 120) and mask[:, 90].sum() == 0 and mask[56, 60] == 0 and mask[0, 0] == 1
    lines = (out / "normalisation.dat").read_text().splitlines()
    assert [line.split()[0] for line in lines] == truth["frames"]
    assert np.allclose([float(line.split()[1]) for line in lines], truth["normalisation"], atol=1e-6)


def test_seeded_stack_is_the_one_simulated_before_the_vectorised_counts(run):
    """SHA-256 of the 40 frames (int32, little-endian) written at commit bf35c0b, before the simulator's counts were
    vectorised (numpy 2.4): the same seed gives the same frames, count for count (the expected counts agree to
    ~1e-13, so no Poisson draw moved)."""
    import hashlib

    _, _, stack = run
    digest = hashlib.sha256(stack.astype("<i4").tobytes()).hexdigest()
    assert digest == "95dcf4ca5453859e51f9110e0d7549b41d8cdace37b3d43eb23528e661c6fd22"


def test_input_files_read_back_into_the_tree(run):
    out, truth, _ = run
    tds = read_tds_config(out / "input.par")
    resolved = ParamTree.build().resolve({"tds": tds}).tds
    assert resolved.ascii_generators == "1~,4(z),3(111)"
    assert resolved.images_prefix == str(out / "mgo_") and resolved.filter_file == str(out / "filter.edf")
    assert resolved.collectSpots == truth["spots"]["hkl"]
    assert resolved.CGUESS["A11"][0] == 297.0 and resolved.CGUESS["A12"][0] == pytest.approx(1.1 * 95.2)
    geometry = geometry_of(resolved)
    expected = Geometry.from_mapping({**SPEC["geometry"], "AA": 4.212, "BB": 4.212, "CC": 4.212,
                                      "dim1": 112, "dim2": 120})
    assert geometry == expected
    assert json.loads((out / "truth.json").read_text())["constants"] == {"C11": 297.0, "C12": 95.2, "C44": 155.7}


def _independent_t(q_c, g, c):
    """T = Q^T Gamma(q)^-1 Q by an explicit loop over points (no shared code with the model)."""
    from difframe.crystal.symmetry import voigt_to_tensor

    t4 = voigt_to_tensor(c)
    out = []
    for qq, gg in zip(q_c, g):
        small = qq - gg
        gamma = np.einsum("ijkl,j,l->ik", t4, small, small)
        out.append(qq @ np.linalg.solve(gamma, qq))
    return np.array(out)


def _independent_quantum_t(q_c, g, c, temperature, density):
    """T = sum over branches of (Q.e)^2 x coth x / lambda, x = hbar omega / 2 k_B T, omega^2 = lambda / rho, by an
    eigen-decomposition per point and scipy's constants (no shared code with the model)."""
    from scipy.constants import hbar, k

    from difframe.crystal.symmetry import voigt_to_tensor

    t4 = voigt_to_tensor(c)
    out = []
    for qq, gg in zip(q_c, g):
        small = qq - gg
        lam, e = np.linalg.eigh(np.einsum("ijkl,j,l->ik", t4, small, small))  # GPa / Angstrom^2
        x = hbar * np.sqrt(lam * 1e29 / (density * 1e3)) / (2 * k * temperature)  # GPa/A^2 -> Pa/m^2; g/cm^3 -> kg/m^3
        out.append(np.sum((qq @ e) ** 2 * x / np.tanh(x) / lam))
    return np.array(out)


@pytest.mark.parametrize("dispersion", [False, True])
def test_expected_counts_follow_the_tds_formula(dispersion):
    spec = copy.deepcopy(SPEC)
    spec["intensity"] = {"dispersion": dispersion, "background": 2.0, "tds_scale": 300.0, "debye_waller": 0.3}
    sim = SimulationSpec.from_mapping(spec)
    geo = sim.geometry
    q_lab = geo.q_lab_image(sim.shape)
    counts = _expected_counts(sim, {"DeltaQ_min": 0.04}, np.array(_mgo_voigt()), q_lab, np.array([7]))[0]
    rows, cols = (a.ravel() for a in np.mgrid[0:112, 0:120])
    q_c = q_lab[rows, cols] @ geo.lab_to_crystal(7).T
    hkl = _nearest_allowed_brute(q_c, geo.lattice)
    g = geo.lattice.q(hkl)
    small = np.linalg.norm(q_c - g, axis=1)
    sigma = 0.04 * geo.lattice.max_reciprocal / 6
    near = (small > 8 * sigma) & (small < 0.15 * geo.lattice.max_reciprocal)  # in a harvest shell, off the peak
    assert near.sum() >= 5
    pick = np.flatnonzero(near)[:: max(1, near.sum() // 8)]  # a few, spread over the shells
    rows, cols, q_c, hkl, g, small = rows[pick], cols[pick], q_c[pick], hkl[pick], g[pick], small[pick]
    allowed = allowed_reflections(hkl.astype(int), "F")
    amp = np.exp(-0.3 * (g**2).sum(1) / (16 * np.pi**2)) * allowed
    soft = np.sinc(small / np.linalg.norm(geo.lattice.B, axis=0).min()) ** 2 if dispersion else 1.0
    expected = 2.0 + amp * 300.0 * _independent_t(q_c, g, np.array(_mgo_voigt())) / soft
    assert np.allclose(counts[rows, cols], expected, rtol=1e-9)


def test_frames_integrate_over_their_exposure():
    """A 0.5 deg frame holds the mean of the two 0.25 deg frames that split its exposure (each integrated with
    its own sub-frames), not the intensity at its centre."""

    def spec(step, phi):
        changed = copy.deepcopy(SPEC)
        changed["geometry"].update(angular_step=step, phi=phi)
        changed["intensity"] = {"bragg": 0.0, "background": 0.0}
        return SimulationSpec.from_mapping(changed)

    wide, narrow = spec(0.5, 0.0), spec(0.25, -0.125)
    options = {"DeltaQ_min": 0.04}
    geo, c = wide.geometry, np.array(_mgo_voigt())
    q_lab = geo.q_lab_image(wide.shape)
    n_wide, n_narrow = exposure_substeps(wide, options, q_lab), exposure_substeps(narrow, options, q_lab)
    assert n_wide > n_narrow > 1
    frames = np.array([3, 14, 22, 37])
    whole = _expected_counts(wide, options, c, q_lab, frames, n_wide)
    halves = _expected_counts(narrow, options, c, q_lab, np.stack([2 * frames, 2 * frames + 1], 1).ravel(),
                              n_narrow).reshape(len(frames), 2, *wide.shape).mean(axis=1)
    centre = _expected_counts(wide, options, c, q_lab, frames, 1)
    lattice = geo.lattice
    q_c = np.einsum("nij,hwj->nhwi", geo.lab_to_crystal(frames), q_lab).reshape(-1, 3)
    shell = (np.linalg.norm(q_c - lattice.q(_nearest_allowed_brute(q_c, lattice)), axis=-1)
             / lattice.max_reciprocal).reshape(whole.shape)
    harvested = (shell > 0.04) & (shell < 0.15) & (whole > 0)
    assert harvested.sum() > 200
    np.testing.assert_allclose(halves[harvested], whole[harvested], rtol=1e-6)
    assert np.abs(centre[harvested] / whole[harvested] - 1).max() > 0.01
    with pytest.raises(UsageError, match="scan.exposure_substeps = 0"):
        SimulationSpec.from_mapping({**SPEC, "scan": {**SPEC["scan"], "exposure_substeps": 0}})


def _nearest_allowed_brute(q_c, lattice, centering="F"):
    """hkl of the nearest reflection the centering allows, by brute force over all of them up to 7."""
    r = np.arange(-7, 8)
    every = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    every = every[allowed_reflections(every, centering) & np.any(every != 0, axis=1)]
    nodes = lattice.q(every)
    out = np.empty((len(q_c), 3), int)
    for a in range(0, len(q_c), 2048):  # bounded temporaries
        d2 = (nodes**2).sum(1)[None] - 2 * q_c[a:a + 2048] @ nodes.T
        out[a:a + 2048] = every[np.argmin(d2, axis=1)]
    return out


def _mgo_voigt():
    c = np.zeros((6, 6))
    c[:3, :3] = 95.2
    np.fill_diagonal(c, [297.0] * 3 + [155.7] * 3)
    return c


CALCITE = {"name": "calcite-like", "cell": [4.99, 4.99, 17.06, 90, 90, 120], "centering": "R",
           "generators": "1~,3(z),2(100)",
           "constants": {"C11": 137.0, "C12": 48.2, "C13": 56.8, "C15": 20.0, "C33": 81.1, "C44": 35.0}}


def _nearest_by_rule(q_c, lattice, centering, reach):
    """(N, 3) hkl by the rule the simulator states: the rounded node of B^-1 Q_c (always, when pi / max(a, b, c)
    exceeds the reach; else when it is allowed, not 000 and nearer than that), otherwise the nearest allowed non-000
    one of its 27 neighbours, the first in the order 0, -1, 1 per index on a tie."""
    start = np.rint(lattice.hkl(q_c)).astype(int)
    safe = np.pi / max(lattice.a, lattice.b, lattice.c)
    if safe > reach:
        return start
    keep = (allowed_reflections(start, centering) & np.any(start != 0, axis=1)
            & (np.linalg.norm(q_c - lattice.q(start), axis=1) < safe))
    best, best_d = start.copy(), np.full(len(q_c), np.inf)
    for offset in ((i, j, k) for i in (0, -1, 1) for j in (0, -1, 1) for k in (0, -1, 1)):
        hkl = start + offset
        d = np.linalg.norm(q_c - lattice.q(hkl), axis=1)
        d[~allowed_reflections(hkl, centering) | ~np.any(hkl != 0, axis=1)] = np.inf
        closer = d < best_d
        best[closer], best_d[closer] = hkl[closer], d[closer]
    return np.where(keep[:, None], start, best)


@pytest.mark.parametrize("cell, centering, search", [
    ((4.212, 4.212, 4.212), "F", False),  # MgO: rounding decides
    ((5.0, 6.0, 6.5, 84.0, 97.0, 106.0), "P", False),  # the triclinic cell below
    ((4.99, 4.99, 17.06, 90, 90, 120), "R", True),  # calcite: a long c, the neighbours are searched
    ((4.0, 4.5, 16.0), "F", True), ((3.5, 3.5, 14.0), "I", True), ((5.0, 20.0, 6.0, 90, 104, 90), "C", True),
])
def test_nearest_allowed_reflection_follows_its_rule(cell, centering, search):
    """The simulator's search against the rule it states, on random Q_c; within the harvest's reach the rule gives the
    nearest allowed reflection of all (brute force), which is what the harvest sees."""
    from difframe.crystal.lattice import Lattice

    lattice = Lattice(*cell)
    reach = 0.15 * lattice.max_reciprocal
    assert (np.pi / max(cell[:3]) < reach) == search
    rng = np.random.default_rng(41)
    q_c = np.concatenate([rng.uniform(-4, 4, (4000, 3)) @ lattice.B.T,  # anywhere, and near nodes
                          lattice.q(rng.integers(-3, 4, (4000, 3))) + rng.normal(0, reach, (4000, 3))])
    found = _nearest_allowed(q_c.T.copy(), lattice, centering, reach).T
    np.testing.assert_array_equal(found, _nearest_by_rule(q_c, lattice, centering, reach))
    brute = _nearest_allowed_brute(q_c, lattice, centering)
    within = np.linalg.norm(q_c - lattice.q(brute), axis=1) < reach
    assert within.sum() > 100
    np.testing.assert_array_equal(found[within], brute[within])


@pytest.mark.parametrize("crystal", ["MgO", "calcite-like", "MgO at 20 K, quantum"])
def test_expected_counts_at_every_pixel(crystal):
    """Every pixel of a frame through a Bragg peak, against the formula of the module docstring evaluated point by
    point (T by an explicit solve, or with the Bose factor by each point's phonon branches; Bragg peak, Debye-Waller,
    dispersion), the reflection chosen by the stated rule: a restriction of the model to part of the detector, or a
    slip in the vectorised rotations, shows here."""
    from difframe.crystal.symmetry import elastic_structure

    spec = copy.deepcopy(SPEC)
    spec["intensity"] = {"dispersion": True, "background": 2.0, "tds_scale": 300.0, "debye_waller": 0.3}
    spec["detector"]["shape"] = [56, 60] if crystal == "calcite-like" else [112, 120]
    if crystal == "calcite-like":
        spec["crystal"] = CALCITE
    quantum = crystal.endswith("quantum")
    if quantum:
        spec["crystal"].update(quantum_bose=True, temperature=20.0)
    sim = SimulationSpec.from_mapping(spec)
    geo, lattice = sim.geometry, sim.geometry.lattice
    options = {"DeltaQ_max": 0.15, "DeltaQ_min": 0.04}
    c = elastic_structure(sim.generators, lattice.direct).full_voigt(sim.constants)
    frame = _predict_spots(sim, options)["frame"][0]  # a Bragg peak on the Ewald sphere in this frame
    q_lab = geo.q_lab_image(sim.shape)
    counts = _expected_counts(sim, options, c, q_lab, np.array([frame]))[0].ravel()
    q_c = q_lab.reshape(-1, 3) @ geo.lab_to_crystal(frame).T
    reach, sigma = 0.15 * lattice.max_reciprocal, 0.04 * lattice.max_reciprocal / 6
    hkl = _nearest_by_rule(q_c, lattice, sim.centering, reach)
    g = lattice.q(hkl)
    small = np.linalg.norm(q_c - g, axis=1)
    lit = allowed_reflections(hkl, sim.centering) & np.any(hkl != 0, axis=1)
    floored = np.maximum(small, sigma)
    q_safe = (q_c - g) * (floored / small)[:, None]
    t = np.zeros(len(q_c))
    t[lit] = (_independent_quantum_t(q_c[lit], q_c[lit] - q_safe[lit], c, 20.0, 3.585) if quantum
              else _independent_t(q_c[lit], q_c[lit] - q_safe[lit], c))
    amp = np.exp(-0.3 * (g**2).sum(1) / (16 * np.pi**2)) * lit
    soft = np.sinc(floored / np.linalg.norm(lattice.B, axis=0).min()) ** 2
    expected = 2.0 + amp * (300.0 * t / soft + sim.bragg * np.exp(-0.5 * (small / sigma) ** 2))
    peak = lit & (small < 4 * sigma)  # the Bragg term outweighs the TDS (pixels are wider than sigma)
    assert peak.sum() >= 1 and np.all(counts[peak] > 1e4)
    assert (lit & (small > 0.04 * lattice.max_reciprocal) & (small < reach)).sum() > 50  # harvest shells
    if crystal != "calcite-like":  # the rounded reflection extinct: background only
        assert (~lit).sum() > 0 and np.all(counts[~lit] == 2.0)
    else:  # the neighbour search decided at some pixels
        assert np.any(hkl != np.rint(lattice.hkl(q_c)))
    np.testing.assert_allclose(counts, expected, rtol=1e-9)  # 1 / sinc^2 magnifies rounding near zone boundaries


def test_never_overwrites_and_names_bad_constants(run, tmp_path):
    out, _, _ = run
    with pytest.raises(UsageError, match="already holds a simulation"):
        simulate(SPEC, out)
    bad = copy.deepcopy(SPEC)
    del bad["crystal"]["constants"]["C44"]
    with pytest.raises(UsageError, match="C44"):
        simulate(bad, tmp_path / "a")
    bad["crystal"]["constants"].update(C44=155.7, C14=3.0)
    with pytest.raises(UsageError, match="C14"):
        simulate(bad, tmp_path / "b")
    bad = copy.deepcopy(SPEC)
    bad["crystal"]["constants"]["C12"] = 400.0
    with pytest.raises(UsageError, match="not mechanically stable"):
        simulate(bad, tmp_path / "c")
    with pytest.raises(UsageError, match="cell"):
        simulate({**SPEC, "crystal": {**SPEC["crystal"], "cell": [4.2, 4.2]}}, tmp_path / "d")
    with pytest.raises(UsageError, match="lmbda"):
        simulate({**SPEC, "geometry": {k: v for k, v in SPEC["geometry"].items() if k != "lmbda"}}, tmp_path / "e")
    assert not any((tmp_path / d).exists() and any((tmp_path / d).iterdir()) for d in "abcde")


def test_example_specs_are_valid_and_spec_file_errors_name_the_file(tmp_path):
    from pathlib import Path

    examples = Path(__file__).resolve().parents[3] / "examples" / "tds"
    for name in ("mgo.toml", "mg_hexagonal.toml", "aragonite.toml"):
        from difframe.params import load_source

        sim = SimulationSpec.from_mapping(load_source(examples / name), name)
        assert sim.frames == 90 and sim.bragg > 500000.0
    bad = tmp_path / "bad.toml"
    bad.write_text("[crystal]\ncell = [1.0]\n")
    with pytest.raises(UsageError, match="bad.toml: crystal.cell"):
        simulate_from_file(bad, tmp_path / "out")


ARAGONITE = {"C11": 171.1, "C12": 60.3, "C13": 27.8, "C22": 110.1, "C23": 41.9, "C33": 98.4, "C44": 39.3,
             "C55": 24.2, "C66": 40.2}
LOW_SYMMETRY = {
    "monoclinic": ([5.0, 7.0, 6.0, 90.0, 104.0, 90.0], "1~,2(y)", {**ARAGONITE, "C15": 5.0, "C25": -4.0,
                                                                   "C35": 6.0, "C46": 3.0}),
    "triclinic": ([5.0, 6.0, 6.5, 84.0, 97.0, 106.0], "1~", {**ARAGONITE, "C14": 2.0, "C15": 3.0, "C16": -2.0,
                                                            "C24": 1.0, "C25": -3.0, "C26": 2.0, "C34": 2.0,
                                                            "C35": 4.0, "C36": -1.0, "C45": 1.0, "C46": 2.0,
                                                            "C56": -1.0}),
}


@pytest.mark.parametrize("family", sorted(LOW_SYMMETRY))
def test_oblique_cells_bragg_peaks_land_where_predicted(family, tmp_path):
    """Off-diagonal B end to end: the brightest pixel of each predicted reflection is where the geometry says."""
    cell, generators, constants = LOW_SYMMETRY[family]
    spec = copy.deepcopy(SPEC)
    spec["crystal"] = {"name": family, "cell": cell, "generators": generators, "constants": constants}
    spec["scan"] = {"frames": 40, "prefix": "f_", "max_hkl": 3, "max_spots": 6}
    spec["detector"]["gap_columns"] = []
    truth = simulate(spec, tmp_path / family)
    stack = np.array([fabio.open(str(tmp_path / family / name)).data for name in truth["frames"]])
    spots = truth["spots"]
    assert len(spots["hkl"]) >= 2 and len(truth["free"]) == (13 if family == "monoclinic" else 21)
    for f, r, c in zip(spots["frame"], spots["row"], spots["col"]):
        fi, ri, ci = (int(round(x)) for x in (f, r, c))
        box = stack[fi - 2:fi + 3, ri - 2:ri + 3, ci - 2:ci + 3]
        offset = np.array(np.unravel_index(box.argmax(), box.shape)) - 2
        assert np.all(np.abs(offset) <= 1), (family, offset)
        assert box.max() > 3 * np.median(box)  # a peak (sub-pixel Bragg peaks need not reach the threshold)
