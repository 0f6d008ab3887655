"""Position refinement against simulated truth.

Frames are simulated in plain numpy at continuous (sub-pixel) positions: the
object is Fourier-shifted by each frame's fractional offset before its window
is cut out, so the truth lies between the model's integer windows.  The model
gets the true object and probe and positions off by 2 px RMS (up to 3 px); repeated
refinement must bring them back to within a fraction of a pixel, up to the
global shift ptychography cannot determine.  Run as a script under mpiexec,
this file is also the two-rank half of the MPI test.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.fft
from scipy.special import xlogy

from difframe import optics, parallel
from difframe.errors import DataError, ParameterError
from difframe.ptycho import model as pm
from difframe.ptycho import positions as pr

SHAPE = (64, 64)
LAM_NF, Z_NF, PSIZE_NF = 1e-10, 1e-3, 1e-7  # near field: Fresnel phase of ~8 rad at the frame's Nyquist edge
MPIEXEC = Path(sys.executable).parent / "mpiexec"


def _smooth(shape, sigma, rng, n):
    f = pm.gaussian_smooth(rng.normal(size=(n, *shape)) + 0j, sigma).real
    return f / np.abs(f).max(axis=(-2, -1), keepdims=True)


def focused_probe():
    """A defocused lens pupil: a compact probe (~20 px) with rings."""
    fy, fx = scipy.fft.fftfreq(SHAPE[0])[:, None], scipy.fft.fftfreq(SHAPE[1])[None]
    rho2 = (fy**2 + fx**2) / 0.1**2
    return scipy.fft.fftshift(scipy.fft.ifft2((rho2 < 1) * np.exp(6j * rho2)))[None]


def diffuser_probe(rng):
    """A broad Gaussian beam through a smooth random phase plate, as near-field ptychography uses."""
    y, x = np.indices(SHAPE) - np.asarray(SHAPE)[:, None, None] // 2
    return (np.exp(-(y**2 + x**2) / (2 * 13.0**2)) * np.exp(2j * _smooth(SHAPE, 2.0, rng, 1)[0]))[None]


def simulate(nearfield=False, photons=1e7, n_side=9, step=6, seed=0, background=None, scale=None):
    """Counts of a jittered raster at continuous positions, with the truth that made them."""
    rng = np.random.default_rng(seed)
    if nearfield:
        psize = np.array([PSIZE_NF, PSIZE_NF])
        prop, probe = optics.NearField(SHAPE, psize, LAM_NF, Z_NF, dtype=np.complex128), diffuser_probe(rng)
    else:
        psize = optics.farfield_object_psize(optics.energy_to_wavelength(6.2), 2.0, SHAPE, 172e-6)
        prop, probe = optics.FarField(SHAPE, centred=False), focused_probe()
    probe *= np.sqrt(photons / (np.abs(probe) ** 2).sum())
    g = (np.arange(n_side) - n_side // 2) * step
    pos = (np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
           + rng.uniform(-2, 2, (n_side**2, 2))) * psize
    obj_shape, origin = pm.object_frame([pos], psize, SHAPE, pad=8)
    f = _smooth(obj_shape, 1.5, rng, 2)
    obj = ((0.75 + 0.2 * f[0]) * np.exp(1.5j * f[1]))[None]
    # the window of frame n starts at c + d (c whole, 0 <= d < 1): shift the periodic object by d, cut at c
    start = (pos - origin) / psize - np.asarray(SHAPE) // 2
    c = np.floor(start).astype(int)
    d = start - c
    fy, fx = scipy.fft.fftfreq(obj_shape[0])[:, None], scipy.fft.fftfreq(obj_shape[1])[None]
    ramp = np.exp(2j * np.pi * (fy * d[:, 0, None, None] + fx * d[:, 1, None, None]))
    shifted = scipy.fft.ifft2(scipy.fft.fft2(obj[0]) * ramp)
    rows = c[:, 0, None, None] + np.arange(SHAPE[0])[None, :, None]
    cols = c[:, 1, None, None] + np.arange(SHAPE[1])[None, None, :]
    views = shifted[np.arange(len(c))[:, None, None], rows, cols][:, None]
    expected = (np.abs(prop.forward(probe[None, :, None] * views[:, None])) ** 2).sum(axis=(1, 2))
    if scale is not None:
        expected *= scale[:, None, None]
    if background is not None:
        expected += background
    return {"data": rng.poisson(expected).astype(np.float32), "pos": pos, "psize": psize, "origin": origin,
            "obj": obj, "probe": probe, "nearfield": nearfield}


def model_of(sim, positions, data_type="single", **terms):
    """Model with the true object and probe, windows at ``positions``; ``terms``: background, scale."""
    cdtype, rdtype = optics.dtypes_for(data_type)
    obj = pm.Storage(sim["obj"].copy(), sim["psize"], sim["origin"], 6.2)
    probe = pm.Storage(sim["probe"].copy(), sim["psize"], -(np.asarray(SHAPE) // 2) * sim["psize"], 6.2)
    prop = (optics.NearField(SHAPE, sim["psize"], LAM_NF, Z_NF, dtype=cdtype) if sim["nearfield"]
            else optics.FarField(SHAPE, centred=False))
    scan = pm.ScanViews(label="s1", intensity=sim["data"].astype(rdtype), weights=np.ones(SHAPE, rdtype),
                        corners=pm.corners_of(positions, obj, SHAPE), positions=positions.copy(),
                        object_id="s1", probe_id="s1", propagator=prop)
    for name, value in terms.items():
        setattr(scan, name, value)
    return pm.PtychoModel({"s1": obj}, {"s1": probe}, [scan], data_type)


def perturbed(sim, rms=1.5, seed=5, limit=3.0):
    """True positions plus random errors (``rms`` per axis, at most ``limit`` px), every other one whole pixels.

    The limit is the capture range of a local search: the object's features are
    ~3 px wide, and a window moved further has no misfit slope pointing back
    (near field, 1.5 px RMS unlimited: 3 of 81 frames started 4 px off and stayed lost).
    """
    err = np.random.default_rng(seed).normal(0, rms, sim["pos"].shape)
    err *= np.minimum(1.0, limit / np.hypot(*err.T))[:, None]
    err[::2] = np.round(err[::2])
    return sim["pos"] + err * sim["psize"]


def refine(model, times, max_shift=5.0, **kw):
    scan = model.scans[0]
    original = scan.positions.copy()
    for _ in range(times):
        shifts = pr.refine_scan(model, scan, max_shift_px=max_shift, **kw)
        stats = pr.apply_shifts(model, scan, shifts, max_shift_px=max_shift, original_positions=original)
    return stats


def rms_error(positions, sim):
    """RMS distance [px] from the truth after removing the mean shift (undetermined by the data)."""
    d = (positions - sim["pos"]) / sim["psize"]
    d -= d.mean(axis=0)
    return float(np.sqrt((d**2).sum(axis=1).mean()))


@pytest.fixture(scope="module")
def far():
    return simulate()


def test_far_field_poisson_recovers_subpixel_positions(far):
    model = model_of(far, perturbed(far))
    assert rms_error(model.scans[0].positions, far) > 1.2
    stats = refine(model, 8)
    # measured: 0.023 px at 1e7 photons per frame, 0.04 at 1e5, 0.11 at 1e4
    assert rms_error(model.scans[0].positions, far) < 0.1
    assert stats["max_shift_px"] < 1e-9  # settled: no frame cycles between two corners
    scan = model.scans[0]
    np.testing.assert_array_equal(scan.corners, pm.corners_of(scan.positions, model.objects["s1"], SHAPE))


def test_near_field_gaussian_recovers_positions():
    sim = simulate(nearfield=True, seed=1)
    model = model_of(sim, perturbed(sim, seed=6))
    stats = refine(model, 8, likelihood="gaussian")
    assert rms_error(model.scans[0].positions, sim) < 0.1  # measured 0.02
    assert stats["max_shift_px"] < 1e-9


def test_background_and_scales_are_part_of_the_model():
    rng = np.random.default_rng(7)
    scale = rng.uniform(0.6, 1.4, 81)
    background = 20.0 + 30.0 * rng.random(SHAPE)
    sim = simulate(seed=2, background=background, scale=scale)
    start = perturbed(sim, seed=8)
    model = model_of(sim, start, background=background, scale=scale)
    refine(model, 8)
    assert rms_error(model.scans[0].positions, sim) < 0.1
    # the terms are used: the misfit at the truth is lower with them than without
    truth = model_of(sim, sim["pos"], background=background, scale=scale)
    bare = model_of(sim, sim["pos"])
    assert pr.misfit(truth, truth.scans[0]).sum() < 0.5 * pr.misfit(bare, bare.scans[0]).sum()


@pytest.mark.parametrize("likelihood", ["poisson", "gaussian"])
@pytest.mark.parametrize("nearfield", [False, True])
def test_misfit_matches_numpy(likelihood, nearfield):
    """Two probe and two object modes, a per-frame mask with holes, background and scales, moved windows."""
    rng = np.random.default_rng(3)
    sim = simulate(nearfield=nearfield, n_side=3, photons=1e5, seed=4)
    sim["probe"] = np.concatenate([sim["probe"], 0.3 * np.roll(sim["probe"], 3, axis=-1)])
    sim["obj"] = np.concatenate([sim["obj"], 0.2 * sim["obj"][:, ::-1]])
    scale, background = rng.uniform(0.5, 1.5, 9), rng.random(SHAPE)
    model = model_of(sim, sim["pos"], data_type="double", scale=scale, background=background)
    scan = model.scans[0]
    scan.weights = (rng.random((9, *SHAPE)) > 0.1).astype(float)
    corners = scan.corners + rng.integers(-2, 3, (9, 2))

    views = pm.gather(sim["obj"], corners, SHAPE)
    prop = (optics.NearField(SHAPE, sim["psize"], LAM_NF, Z_NF, dtype=np.complex128) if nearfield
            else optics.FarField(SHAPE, centred=False))
    fields = np.stack([[prop.forward(p * views[:, o]) for o in range(2)] for p in sim["probe"]])
    im = scale[:, None, None] * (np.abs(fields) ** 2).sum(axis=(0, 1)) + background
    meas = sim["data"].astype(float)
    if likelihood == "poisson":
        expected = 2 * (scan.weights * (im - meas + xlogy(meas, meas) - xlogy(meas, im))).sum(axis=(1, 2))
    else:
        expected = (scan.weights * (im - meas) ** 2 / (meas + 1)).sum(axis=(1, 2))
    np.testing.assert_allclose(pr.misfit(model, scan, corners, likelihood), expected, rtol=1e-9)

    corners[4] = (-1, 0)  # off the object
    got = pr.misfit(model, scan, corners, likelihood)
    assert got[4] == np.inf and np.isfinite(np.delete(got, 4)).all()


def test_refine_clips_each_shift(far):
    model = model_of(far, perturbed(far))
    shifts = pr.refine_scan(model, model.scans[0], max_shift_px=0.3)
    assert np.hypot(*shifts.T).max() == pytest.approx(0.3)


def test_apply_shifts_clips_total_displacement(far):
    model = model_of(far, far["pos"])
    scan = model.scans[0]
    shifts = np.zeros((81, 2))
    shifts[10] = (3.0, 4.0)
    shifts[11] = (0.5, 0.0)
    stats = pr.apply_shifts(model, scan, shifts, max_shift_px=1.0, original_positions=far["pos"])
    moved = (scan.positions - far["pos"]) / far["psize"]
    np.testing.assert_allclose(moved[[10, 11]], [(0.6, 0.8), (0.5, 0.0)])
    np.testing.assert_allclose(np.delete(moved, [10, 11], axis=0), 0, atol=1e-12)
    assert stats["max_shift_px"] == pytest.approx(1.0)
    assert stats["rms_shift_px"] == pytest.approx(np.sqrt(1.25 / 81))
    # a second move the same way stays on the radius: the limit is on the total from the original positions
    pr.apply_shifts(model, scan, shifts, max_shift_px=1.0, original_positions=far["pos"])
    np.testing.assert_allclose((scan.positions[10] - far["pos"][10]) / far["psize"], (0.6, 0.8))


def test_apply_shifts_refuses_to_leave_the_object(far):
    model = model_of(far, far["pos"])
    scan = model.scans[0]
    before = scan.positions.copy(), scan.corners.copy()
    shifts = np.zeros((81, 2))
    shifts[0] = (-40.0, 0.0)  # frame 0 is a corner of the raster, 8 px from the object's edge
    with pytest.raises(DataError, match=r"scan 's1'.*frame 0 .*off object 's1'"):
        pr.apply_shifts(model, scan, shifts, max_shift_px=50.0, original_positions=far["pos"])
    np.testing.assert_array_equal(scan.positions, before[0])
    np.testing.assert_array_equal(scan.corners, before[1])


def test_bad_settings(far):
    model = model_of(far, far["pos"])
    with pytest.raises(ParameterError, match="whole number"):
        pr.refine_scan(model, model.scans[0], max_shift_px=2.0, step_px=1.5)
    with pytest.raises(ParameterError, match="likelihood"):
        pr.refine_scan(model, model.scans[0], max_shift_px=2.0, likelihood="euclid")


def _refined_positions(ranks):
    """Positions after 4 refinements of the perturbed far-field scan, frames split over ``ranks``."""
    sim = simulate(n_side=5)
    model = model_of(sim, perturbed(sim))
    model.keep_share(ranks)
    refine(model, 4)
    return model.scans[0].positions / sim["psize"], model.scans[0].num_frames


@pytest.mark.skipif(not MPIEXEC.exists(), reason="no mpiexec beside the interpreter")
def test_two_ranks_give_one_rank_positions(tmp_path):
    out = subprocess.run([str(MPIEXEC), "-n", "2", sys.executable, __file__, str(tmp_path)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    # one file per rank: two ranks printing long lines to one pipe may interleave them
    reports = [json.loads(path.read_text()) for path in sorted(tmp_path.glob("rank*.json"))]
    assert len(reports) == 2
    assert sorted(r["held"] for r in reports) == [12, 13]
    alone, held = _refined_positions(parallel.Ranks())
    assert held == 25
    for r in reports:
        np.testing.assert_allclose(r["positions"], alone, atol=1e-9)


if __name__ == "__main__":
    ranks = parallel.world()
    positions, held = _refined_positions(ranks)
    (Path(sys.argv[1]) / f"rank{ranks.rank}.json").write_text(json.dumps({"held": held, "positions": positions.tolist()}))



def test_refinement_through_subpixel_windows_recovers_subpixel_positions(far):
    """An engine with windows at exact positions (difframe.ptycho.subpixel) refines them on a half-pixel grid
    around each exact position; frames 1.5 px RMS off come back as close as with the whole-pixel search."""
    model = model_of(far, perturbed(far))
    refine(model, 8, subpixel_windows=True, step_px=0.5)
    assert rms_error(model.scans[0].positions, far) < 0.1


def test_exact_windows_refinement_finds_a_quadratic_misfits_minimum_from_six_candidates(monkeypatch):
    """Through sub-pixel windows the grid is the cross plus one diagonal: on a misfit that is an exact quadratic
    of the shift (tilted axes, so the cross term matters), the move is its minimum, and a minimum beyond the grid
    moves the frame to the best candidate evaluated; only the six candidates are evaluated."""
    from types import SimpleNamespace

    rng = np.random.default_rng(5)
    n, step = 40, 0.5
    minima = rng.uniform(-0.15, 0.15, (n, 2))  # [px] from each exact position: the centre is the best candidate
    minima[:5] = [[0.9, 0.8], [-0.9, 0.7], [0.8, -0.9], [-0.7, -0.8], [0.0, 1.3]]  # beyond the grid
    hess = np.array([[2.0, 1.2], [1.2, 3.0]])
    frac = rng.uniform(-0.5, 0.5, (n, 2))
    evaluated = []

    def misfits(model, scan, corners, likelihood, shifts):
        d = shifts - frac[:, None] - minima[:, None]
        evaluated.append(shifts.shape[1])
        return 7.0 + np.einsum("nki,ij,nkj->nk", d, hess, d)

    monkeypatch.setattr(pr, "_misfits", misfits)
    storage = SimpleNamespace(origin=np.zeros(2), psize=np.ones(2))
    corners = rng.integers(0, 50, (n, 2))
    scan = SimpleNamespace(positions=corners + 16 + frac, first=0, num_frames=n, corners=corners, shape=(32, 32))
    model = SimpleNamespace(objects={"o": storage})
    scan.object_id = "o"
    moves = pr.refine_scan(model, scan, max_shift_px=10.0, subpixel_windows=True, step_px=step)
    assert sorted(evaluated) == [1, 5]
    np.testing.assert_allclose(moves[5:], minima[5:], atol=1e-9)
    # beyond the grid: the best candidate, here the best of the whole 3 x 3 grid too
    grid = step * pr.OFFSETS
    for k in range(5):
        d = grid - minima[k]
        np.testing.assert_allclose(moves[k], grid[np.argmin(np.einsum("ki,ij,kj->k", d, hess, d))])
