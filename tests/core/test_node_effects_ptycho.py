"""Each engine node's EFFECT against an independent statement of what its doc says (numpy formulas of one
iteration on the tiny simulated scan of tests/plugins/engines/ptycho_truth.py, exact identities, simulated
truth), for the nodes docs/parameters-status.md listed without a test.

DM and RAAR share their machinery (difframe.ptycho.projection_engine), so each DM/RAAR node is checked on both;
the PIE family's nodes are checked on every engine that declares them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "engines"))

from difframe.plugins.engines import dm, ml, multislice, opr, pie, raar  # noqa: E402
from difframe.ptycho import model as pm  # noqa: E402

from ptycho_truth import SHAPE, amplitude_guess, engine_params, simulate, start_model  # noqa: E402

PROJECTION = {"DM": dm, "RAAR": raar}


@pytest.fixture(scope="module")
def scan():
    """(PreparedData, true probe, true object storage): 49 frames of 32 x 32, 1e6 photons per frame."""
    return simulate(photons=1e6)


def _projection(name, scan, **options):
    """A DM or RAAR engine started on the true object and the amplitude guess (double precision)."""
    prep, probe, truth = scan
    model = start_model(prep, amplitude_guess(prep, truth.psize), data_type="double")
    model.objects["sim"].data[...] = truth.data
    module = PROJECTION[name]
    engine = module.factory(engine_params(module.PARAMETERS, probe_support=None, fit_background=False, **options),
                            model)
    engine.initialize()
    return model, engine


def _object_formula(model, exits, inertia, smooth):
    """O' = (a <P> smooth(O) + sum_n conj(P) psi_n) / (a <P> + sum_n |P|^2) over each frame's window."""
    scan, obj, probe = model.scans[0], model.objects["sim"].data, model.probes["sim"].data
    weight = inertia * scan.intensity.mean()  # the doc: relative to the mean measured power per pixel
    base = pm.gaussian_smooth(obj, smooth) if smooth else obj
    num, den = weight * base[0], np.full(obj.shape[-2:], weight)
    h, w = SHAPE
    for (y, x), psi in zip(scan.corners, exits[:, 0]):
        num[y:y + h, x:x + w] += np.conj(probe[0]) * psi
        den[y:y + h, x:x + w] += np.abs(probe[0]) ** 2
    return num / den


def _probe_formula(model, exits, inertia):
    """P' = (a N <|O|^2> P + sum_n conj(O_n) psi_n) / (a N <|O|^2> + sum_n |O_n|^2)."""
    scan, obj, probe = model.scans[0], model.objects["sim"].data[0], model.probes["sim"].data[0]
    weight = inertia * scan.num_frames * np.mean(np.abs(obj) ** 2)
    num, den = weight * probe, np.full(probe.shape, weight)
    h, w = SHAPE
    for (y, x), psi in zip(scan.corners, exits[:, 0]):
        window = obj[y:y + h, x:x + w]
        num += np.conj(window) * psi
        den += np.abs(window) ** 2
    return num / den


@pytest.mark.parametrize("name", ["DM", "RAAR"])
@pytest.mark.parametrize("object_inertia, obj_smooth_std", [(0.1, None), (2.0, None), (2.0, 3)])
def test_projection_object_inertia_and_smoothing_follow_the_update_formula(scan, name, object_inertia,
                                                                             obj_smooth_std):
    """engine.DM/RAAR.object_inertia and engine.RAAR.obj_smooth_std: one iteration before the probe update
    starts is one object update, numpy's formula with the inertia term a x mean power x blurred object."""
    model, engine = _projection(name, scan, object_inertia=object_inertia, obj_smooth_std=obj_smooth_std,
                                probe_update_start=5)
    assert engine.mean_power == pytest.approx(model.scans[0].intensity.mean())
    before = model.objects["sim"].data.copy()
    metrics = engine.iterate(1)[0]
    assert metrics["overlap_loops"] == 1  # no probe update: one object update, no inner loop
    got = model.objects["sim"].data[0].copy()
    model.objects["sim"].data[...] = before
    expected = _object_formula(model, engine.exits["sim"], object_inertia, obj_smooth_std)
    without = _object_formula(model, engine.exits["sim"], 1e-9, None)
    assert np.abs(expected - without).max() > 1e-3  # the term matters at this weight
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["DM", "RAAR"])
@pytest.mark.parametrize("update_object_first", [False, True])
def test_projection_probe_inertia_and_update_order(scan, name, update_object_first):
    """engine.RAAR.probe_inertia and engine.DM/RAAR.update_object_first: with one overlap pass the probe is
    numpy's formula of the object before (probe first) or after (object first) the object update."""
    model, engine = _projection(name, scan, probe_inertia=0.5, probe_update_start=0, overlap_max_iterations=1,
                                update_object_first=update_object_first)
    obj_before, probe_before = model.objects["sim"].data.copy(), model.probes["sim"].data.copy()
    engine.iterate(1)
    exits = engine.exits["sim"]
    obj_after, probe_after = model.objects["sim"].data.copy(), model.probes["sim"].data.copy()
    if update_object_first:
        assert not np.allclose(obj_after, obj_before)
    else:  # the probe took the pass; the object waits for the next loop
        np.testing.assert_array_equal(obj_after, obj_before)
    model.probes["sim"].data[...] = probe_before
    model.objects["sim"].data[...] = obj_after if update_object_first else obj_before
    np.testing.assert_allclose(probe_after[0], _probe_formula(model, exits, 0.5), rtol=1e-9, atol=1e-9)
    light = _probe_formula(model, exits, 0.001)
    assert np.abs(light - probe_after[0]).max() > 1e-3 * np.abs(light).max()  # the inertia weight matters


@pytest.mark.parametrize("name", ["DM", "RAAR"])
def test_projection_probe_update_start(scan, name):
    """engine.RAAR.probe_update_start: the probe is untouched for that many iterations, then moves."""
    model, engine = _projection(name, scan, probe_update_start=2)
    probe = model.probes["sim"].data.copy()
    engine.iterate(2)
    np.testing.assert_array_equal(model.probes["sim"].data, probe)
    engine.iterate(1)
    assert np.abs(model.probes["sim"].data - probe).max() > 1e-3 * np.abs(probe).max()


@pytest.mark.parametrize("name", ["DM", "RAAR"])
@pytest.mark.parametrize("overlap_max_iterations, overlap_converge_factor", [(4, 0.0), (1, 0.0), (6, 1e9), (8, 0.02)])
def test_projection_overlap_loop_is_bounded_and_ends_on_the_probe_change(scan, name, overlap_max_iterations,
                                                                         overlap_converge_factor):
    """engine.DM/RAAR.overlap_max_iterations and overlap_converge_factor: the inner loop runs until the relative
    probe change falls below the factor, at most max iterations."""
    model, engine = _projection(name, scan, probe_update_start=0, overlap_max_iterations=overlap_max_iterations,
                                overlap_converge_factor=overlap_converge_factor)
    changes = []
    update = engine._probe_update
    engine._probe_update = lambda: changes.append(update()) or changes[-1]
    for _ in range(3):
        changes.clear()
        loops = engine.iterate(1)[0]["overlap_loops"]
        below = [i for i, c in enumerate(changes) if c < overlap_converge_factor]
        expected = min(overlap_max_iterations, below[0] + 1 if below else overlap_max_iterations)
        assert loops == expected == len(changes), (changes, loops)
    if overlap_converge_factor == 0.02:  # the factor really cut the loop short at least once
        assert 1 < loops < overlap_max_iterations or len(changes) < overlap_max_iterations


@pytest.mark.parametrize("name", ["DM", "RAAR"])
def test_projection_fourier_relax_factor_bounds_the_amplitude_error(scan, name):
    """engine.RAAR.fourier_relax_factor (beta = 1: the exit waves start as PO and the first step is the plain
    projection): 0 puts the measured moduli on every frame; f moves a frame only down to a mean squared
    amplitude error of f^2 x its mean intensity; a huge f leaves every frame at PO."""
    prep = scan[0]

    def step(factor):
        model, engine = _projection(name, scan, fourier_relax_factor=factor, beta=1.0, probe_update_start=5)
        po = engine.detector["sim"].copy()
        engine.iterate(1)
        return model.scans[0], po, engine.detector["sim"].copy()

    scan0, po, exact = step(0.0)
    meas = np.sqrt(scan0.intensity)
    np.testing.assert_allclose(np.abs(exact[:, 0]), meas, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(step(1e6)[2], po, rtol=1e-9, atol=1e-9)
    before = ((np.abs(po[:, 0]) - meas) ** 2).mean(axis=(-2, -1))
    factor = float(np.median(np.sqrt(before / scan0.intensity.mean(axis=(-2, -1)))))  # half the frames above
    bounded = step(factor)[2]
    after = ((np.abs(bounded[:, 0]) - meas) ** 2).mean(axis=(-2, -1))
    bound = factor**2 * scan0.intensity.mean(axis=(-2, -1))
    moved = before > bound
    assert 0 < moved.sum() < prep.num_frames  # both kinds of frame occur
    np.testing.assert_allclose(after[moved], bound[moved], rtol=1e-6)
    np.testing.assert_allclose(bounded[~moved], po[~moved], rtol=1e-9, atol=1e-9)


def _scaled_frames(photons=1e6):
    """Noise-free frames scale_n |F(P O_n)|^2 with known per-frame scales of mean 1."""
    from difframe import optics

    prep, probe, truth = simulate(photons=photons)
    scales = np.random.default_rng(5).uniform(0.7, 1.3, prep.num_frames)
    scales /= scales.mean()
    corners = pm.corners_of(prep.positions, truth, SHAPE)
    exact = pm.intensity(optics.FarField(SHAPE).forward(pm.exit_waves(probe, pm.gather(truth.data, corners, SHAPE))))
    prep.data[...] = scales[:, None, None] * exact
    return prep, probe, truth, scales


@pytest.mark.parametrize("name", ["RAAR", "rPIE", "mPIE", "OPR", "e3PIE"])
def test_floating_intensities_recover_the_frame_scales(name):
    """engine.RAAR/rPIE/mPIE/OPR/e3PIE.floating_intensities: from the true object and probe, the fitted
    per-frame scales are the simulated ones; without the node no scales are fitted.  (e3PIE: slice 2 starts
    as ones, so its model is the single slice propagated, whose far-field intensity is the same.)"""
    prep, probe, truth, scales = _scaled_frames()
    fitted = []
    for floating in (True, False):
        model = start_model(prep, probe, data_type="double")
        model.objects["sim"].data[...] = truth.data
        if name == "RAAR":
            engine = raar.factory(engine_params(raar.PARAMETERS, floating_intensities=floating, fit_background=False,
                                                probe_support=None, probe_update_start=1000), model)
            engine.initialize()
        else:  # steps 0: object and probe stay true, only the scales' Newton steps act
            engine = _pie_engine(name, model, alpha=0.0, beta=0.0, floating_intensities=floating,
                                 probe_support=None)
        engine.iterate(30 if name == "RAAR" else 8)
        fitted.append(model.scans[0].scale)
    # PIE with steps 0: the scales alone fit the frames (1 %); RAAR moves the object with them (measured 5.3 %
    # at worst, 2 % rms, where the unfitted scales of 1 are 17 % rms off)
    got = fitted[0] / fitted[0].mean()
    np.testing.assert_allclose(got, scales, rtol=0.01 if name != "RAAR" else 0.07)
    assert np.sqrt(np.mean((got / scales - 1) ** 2)) < 0.25 * np.sqrt(np.mean((1 / scales - 1) ** 2))
    assert fitted[1] is None


def _pie_engine(name, model, **options):
    if name == "OPR":
        engine = opr.factory(engine_params(opr.PARAMETERS, **options), model)
    elif name == "e3PIE":
        engine = multislice.factory(engine_params(multislice.PARAMETERS, **{"slice_spacing": 3e-4, **options}),
                                    model)
    else:
        engine = pie._factory(name)(engine_params(pie.VARIANTS[name][1], **options), model)
    engine.initialize()
    return engine


def _one_frame(scan):
    """The scan's central frame alone: one frame per epoch makes an epoch one update of object and probe."""
    from dataclasses import replace

    prep = scan[0]
    mid = prep.num_frames // 2
    return replace(prep, data=prep.data[mid:mid + 1].copy(), positions=prep.positions[mid:mid + 1].copy())


def _one_epoch(name, prep, guess, **options):
    model = start_model(prep, guess, data_type="double")
    obj, probe = model.objects["sim"].data.copy(), model.probes["sim"].data.copy()
    _pie_engine(name, model, probe_support=None, **options).iterate(1)
    return model.objects["sim"].data[:1] - obj[:1], model.probes["sim"].data - probe, obj


@pytest.mark.parametrize("name", ["mPIE", "e3PIE"])
def test_pie_step_sizes_scale_the_object_and_probe_updates(scan, name):
    """engine.mPIE/e3PIE.alpha and beta: on one frame an epoch moves the object by alpha x and the probe by
    beta x the same direction (mPIE's momentum multiplies both by 1 + momentum alike)."""
    prep = _one_frame(scan)
    guess = amplitude_guess(scan[0], scan[2].psize)
    extra = {"num_slices": 1} if name == "e3PIE" else {}
    d_obj_1, d_probe_1, _ = _one_epoch(name, prep, guess, alpha=0.3, beta=0.2, probe_update_start=0, **extra)
    d_obj_2, d_probe_2, _ = _one_epoch(name, prep, guess, alpha=0.6, beta=0.7, probe_update_start=0, **extra)
    assert np.abs(d_obj_1).max() > 1e-3 and np.abs(d_probe_1).max() > 1e-3 * np.abs(guess).max()
    np.testing.assert_allclose(d_obj_2, 2.0 * d_obj_1, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(d_probe_2, 3.5 * d_probe_1, rtol=1e-7, atol=1e-9)
    d_obj_0, d_probe_0, _ = _one_epoch(name, prep, guess, alpha=0.0, beta=0.7, probe_update_start=0, **extra)
    assert not d_obj_0.any()
    np.testing.assert_allclose(d_probe_0, d_probe_2, rtol=1e-7, atol=1e-9)  # simultaneous: beta's step alone


def test_e3pie_steps_with_two_slices(scan):
    """engine.e3PIE.alpha / beta with two slices: alpha 0 leaves every slice (the probe moves); beta 0 leaves
    the waves incident on the slices, so the probe and slice 1 (reached only through the wave incident on
    slice 2) hold while the last slice moves, as the docs' update chain says."""
    prep, probe, truth = scan
    guess = amplitude_guess(prep, truth.psize)
    for alpha, beta in ((0.0, 1.0), (1.0, 0.0)):
        model = start_model(prep, guess, data_type="double")
        engine = _pie_engine("e3PIE", model, num_slices=2, alpha=alpha, beta=beta, probe_update_start=0,
                             probe_support=None)
        before = model.objects["sim"].data.copy(), model.probes["sim"].data.copy()
        engine.iterate(2)
        moved_obj = np.abs(model.objects["sim"].data - before[0]).max(axis=(-2, -1))
        moved_probe = np.abs(model.probes["sim"].data - before[1]).max()
        if alpha == 0.0:
            assert not moved_obj.any() and moved_probe > 1e-3 * np.abs(guess).max()
        else:
            assert moved_obj[0] == 0.0 and moved_obj[1] > 1e-3 and moved_probe == 0.0


def test_mpie_probe_regularisation_is_the_probe_denominator(scan):
    """engine.mPIE.probe_regularisation: D_P = (1 - r) |O|^2 + r max|O|^2, so on one frame the probe step with
    r = 1 is the step with r = 0 times |O|^2 / max|O|^2 of the frame's window."""
    prep = _one_frame(scan)
    guess = amplitude_guess(scan[0], scan[2].psize)
    shape = start_model(prep, guess).objects["sim"].data.shape
    rng = np.random.default_rng(7)
    obj = (0.5 + 0.5 * rng.random(shape)) * np.exp(1j * rng.normal(size=shape))

    def step(r):
        model = start_model(prep, guess, data_type="double")
        model.objects["sim"].data[...] = obj
        window = pm.gather(obj, model.scans[0].corners, SHAPE)[0, 0]
        probe = model.probes["sim"].data.copy()
        _pie_engine("mPIE", model, alpha=0.0, beta=1.0, probe_update_start=0, probe_regularisation=r,
                    probe_support=None).iterate(1)
        return model.probes["sim"].data[0] - probe[0], window

    full, window = step(1.0)
    plain, _ = step(0.0)
    power = np.abs(window) ** 2
    np.testing.assert_allclose(full, plain * power / power.max(), rtol=1e-6, atol=1e-9 * np.abs(plain).max())
    assert np.abs(full - plain).max() > 0.1 * np.abs(plain).max()


@pytest.mark.parametrize("name", ["mPIE", "e3PIE"])
def test_pie_seed_fixes_the_order(scan, name):
    """engine.mPIE/e3PIE.seed: the same seed gives the same result bit for bit, another seed another one."""
    prep, probe, truth = scan
    guess = amplitude_guess(prep, truth.psize)
    out = []
    for seed in (4, 4, 5):
        model = start_model(prep, guess)
        _pie_engine(name, model, seed=seed).iterate(2)
        out.append(model.objects["sim"].data.copy())
    np.testing.assert_array_equal(out[0], out[1])
    assert np.abs(out[0] - out[2]).max() > 1e-3


@pytest.mark.parametrize("name", ["ePIE", "rPIE", "mPIE", "e3PIE", "OPR"])
def test_pie_probe_update_start(scan, name):
    """engine.ePIE/rPIE/mPIE/e3PIE/OPR.probe_update_start: the probe holds for that many epochs, then moves,
    while the object moves from the first epoch."""
    prep, probe, truth = scan
    guess = amplitude_guess(prep, truth.psize)
    model = start_model(prep, guess)
    engine = _pie_engine(name, model, probe_update_start=2, probe_support=None)
    obj, probe0 = model.objects["sim"].data.copy(), model.probes["sim"].data.copy()
    engine.iterate(2)
    np.testing.assert_array_equal(model.probes["sim"].data, probe0)
    assert np.abs(model.objects["sim"].data - obj).max() > 1e-2
    engine.iterate(1)
    assert np.abs(model.probes["sim"].data - probe0).max() > 1e-3 * np.abs(probe0).max()


def test_opr_start_is_plain_rpie_until_then(scan):
    """engine.OPR.start: before epoch `start` OPR is rPIE (same seed and steps, same result); from it each frame
    gets its own probe and the two part."""
    prep, probe, truth = scan
    steps = dict(alpha=0.5, beta=0.5, object_regularisation=0.1, probe_regularisation=0.2, seed=3,
                 probe_update_start=0)
    a, b = start_model(prep, np.abs(probe)), start_model(prep, np.abs(probe))
    relaxed = _pie_engine("OPR", a, num_modes=2, start=2, **steps)
    plain = _pie_engine("rPIE", b, **steps)
    relaxed.iterate(2)
    plain.iterate(2)
    assert not relaxed.deviations  # not yet relaxed
    for kind in ("objects", "probes"):
        x, y = getattr(a, kind)["sim"].data, getattr(b, kind)["sim"].data
        assert np.abs(x - y).max() < 1e-4 * np.abs(y).max()
    relaxed.iterate(2)
    plain.iterate(2)
    assert np.abs(relaxed.deviations["sim"]).max() > 0
    assert np.abs(a.objects["sim"].data - b.objects["sim"].data).max() > 1e-3


# -- ML --------------------------------------------------------------------------------------------------------

def _ml(scan, iterations=1, truth_start=True, **options):
    prep, probe, truth = scan
    model = start_model(prep, amplitude_guess(prep, truth.psize), data_type="double")
    if truth_start:
        model.objects["sim"].data[...] = truth.data
    engine = ml.factory(engine_params(ml.PARAMETERS, probe_support=None, fit_background=False,
                                      **{"reg_del2": False, **options}), model)
    engine.initialize()
    obj, probe0 = model.objects["sim"].data.copy(), model.probes["sim"].data.copy()
    metrics = engine.iterate(iterations)
    return model, metrics, obj, probe0


def test_ml_scale_probe_object_scales_the_probe_share_of_the_step(scan):
    """engine.ML.scale_probe_object: the first search direction is (-grad_O, -s grad_P), so the ratio of the
    probe's to the object's change doubles with s (the line search scales both alike)."""
    ratio = {}
    for s in (1.0, 2.0):
        model, _, obj, probe = _ml(scan, scale_probe_object=s)
        ratio[s] = (np.linalg.norm(model.probes["sim"].data - probe) / np.linalg.norm(model.objects["sim"].data - obj))
    assert ratio[2.0] == pytest.approx(2.0 * ratio[1.0], rel=1e-6)


def test_ml_intensity_renormalization_weights_the_gaussian_likelihood(scan):
    """engine.ML.intensity_renormalization: the Gaussian likelihood of the start is
    sum (|F(PO)|^2 - I)^2 / (I + 1/r) per point, numpy's statement for two values of r."""
    prep, probe, truth = scan
    for r in (1.0, 0.01):
        model, metrics, obj, probe0 = _ml(scan, type="gaussian", intensity_renormalization=r)
        sc = model.scans[0]
        model_i = pm.intensity(sc.propagator.forward(pm.exit_waves(probe0, pm.gather(obj, sc.corners, SHAPE))))
        expected = np.sum((model_i - sc.intensity) ** 2 / (sc.intensity + 1.0 / r)) / sc.intensity.size
        assert metrics[0]["likelihood"] == pytest.approx(expected, rel=1e-9)


def test_ml_reg_del2_amplitude_is_the_prior_weight_and_smooths(scan):
    """engine.ML.reg_del2_amplitude: the prior adds amplitude x c x sum |neighbour differences|^2 to the
    likelihood (linear in the amplitude), and a strong prior leaves a smoother object."""
    like = {a: _ml(scan, reg_del2=True, reg_del2_amplitude=a)[1][0]["likelihood"] for a in (0.0, 1.0, 3.0)}
    assert like[3.0] - like[0.0] == pytest.approx(3.0 * (like[1.0] - like[0.0]), rel=1e-9)
    assert like[1.0] > like[0.0]

    def roughness(obj):
        return sum(float(np.sum(np.abs(np.diff(obj[0], axis=a)) ** 2)) for a in (0, 1))

    weak = _ml(scan, iterations=15, truth_start=False, reg_del2=True, reg_del2_amplitude=0.0)[0]
    strong = _ml(scan, iterations=15, truth_start=False, reg_del2=True, reg_del2_amplitude=50.0)[0]
    assert roughness(strong.objects["sim"].data) < 0.7 * roughness(weak.objects["sim"].data)


# -- scan nodes ------------------------------------------------------------------------------------------------

def test_scan_background_active_gives_the_scan_its_starting_map(scan):
    """scan.background.active: True gives the scan the map background.init says (5 counts per valid pixel,
    the engines then fit it), False leaves the model purely coherent (no map)."""
    from types import SimpleNamespace

    from difframe.param import Param
    from difframe.ptycho.workflow import init_background

    prep = scan[0]
    for active in (True, False):
        model = start_model(prep, amplitude_guess(prep, scan[2].psize))
        run = SimpleNamespace(params=Param(scans=Param(sim=Param(background=Param(active=active, init=5.0)))))
        init_background(run, model)
        bg = model.scans[0].background
        if active:
            np.testing.assert_array_equal(bg, np.where(model.scans[0].weights > 0, 5.0, 0.0))
            engine = dm.factory(engine_params(dm.PARAMETERS, background_update_start=0), model)
            engine.initialize()
            engine.iterate(2)
            assert np.abs(model.scans[0].background - 5.0).max() > 0.1  # fitted, not frozen
        else:
            assert bg is None


def _edf_stack(tmp_path, n=4, shape=(6, 8)):
    from fabio.edfimage import EdfImage

    frames = np.random.default_rng(2).poisson(30, (n, *shape)).astype(np.float32)
    files = []
    for i, frame in enumerate(frames):
        EdfImage(data=frame).write(str(tmp_path / f"f{i}.edf"))
        files.append(str(tmp_path / f"f{i}.edf"))
    return frames, files


def _stack_scan(**stack):
    return {"data": {"source": "stack", "recipe": {"stack": stack}},
            "geometry": {"energy": 6.2, "distance": 1.0, "psize": 172e-6}}


def _ctx():
    from types import SimpleNamespace

    from difframe.parallel import Ranks

    return SimpleNamespace(label="t", positions=None, plugins=None, params=None, data_type="single", dry_run=True,
                           ranks=Ranks())


def test_stack_delimiter_reads_a_comma_separated_table(tmp_path):
    """scan.data.recipe.stack.delimiter: ',' reads a CSV positions table to the values written; the default
    (whitespace) refuses it naming the table."""
    from difframe.errors import DataError
    from difframe.plugins.recipes.stack import prepare as stack_recipe

    frames, files = _edf_stack(tmp_path)
    pos = np.random.default_rng(4).uniform(-2e-6, 2e-6, (len(files), 2))
    np.savetxt(tmp_path / "pos.csv", pos, delimiter=",", header="y,x")
    out = stack_recipe(_stack_scan(files=files, positions=str(tmp_path / "pos.csv"), delimiter=","), _ctx())
    np.testing.assert_allclose(out.positions, pos, rtol=1e-12)
    np.testing.assert_array_equal(out.data, frames)
    with pytest.raises(DataError, match=r"stack\.positions = .*pos\.csv.*not a numeric table"):
        stack_recipe(_stack_scan(files=files, positions=str(tmp_path / "pos.csv")), _ctx())


def test_stack_reader_forces_the_detector_reader(tmp_path):
    """scan.data.recipe.stack.reader: the named reader reads every frame, whatever the files' names ('edf'
    reads EDF frames saved as .img to numpy's values); 'cbf' on them fails naming the file."""
    from difframe.errors import DataError
    from difframe.plugins.recipes.stack import prepare as stack_recipe

    frames, files = _edf_stack(tmp_path)
    renamed = []
    for f in files:
        Path(f).rename(f[:-4] + ".img")
        renamed.append(f[:-4] + ".img")
    np.savetxt(tmp_path / "pos.txt", np.zeros((len(files), 2)))
    out = stack_recipe(_stack_scan(files=renamed, positions=str(tmp_path / "pos.txt"), reader="edf"), _ctx())
    np.testing.assert_array_equal(out.data, frames)
    assert "reader edf" in out.meta["source"]
    with pytest.raises(DataError, match=r"f0\.img"):
        stack_recipe(_stack_scan(files=renamed, positions=str(tmp_path / "pos.txt"), reader="cbf"), _ctx())


def test_nodes_whose_doc_says_not_read_change_nothing():
    """scan.coherence.spectrum / object_dispersion / probe_dispersion, scan.data.experimentID / load_parallel,
    scan.geometry.resolution, scan.tags, scan.illumination.diversity.shift, scan.sample.diversity.shift and
    plotclient.some_plotting_options are accepted (ptypy files carry them) and, as their docs say, change
    nothing: the prepared frames, positions and geometry are those of the run without them, and the object
    pixel is lambda z / (N psize) whatever scan.geometry.resolution says."""
    import copy

    from difframe import Run, optics
    from difframe.ptycho.workflow import prepare_scans

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_watch import sim_params  # the watch tests' small simulated scan

    plain_scan = sim_params("unused", 0)["scans"]["s"]
    given_scan = copy.deepcopy(plain_scan)
    for path, value in {"coherence.spectrum": [1.0], "coherence.object_dispersion": "linear",
                        "coherence.probe_dispersion": "irregular", "data.experimentID": "beamtime 42",
                        "data.load_parallel": "data", "geometry.resolution": 3e-8, "tags": "test,ignored",
                        "illumination.diversity.shift": 5e-7, "sample.diversity.shift": 5e-7}.items():
        node = given_scan
        *parents, key = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[key] = value
    plain = prepare_scans(Run({"scans": {"s": plain_scan}}))["s"]
    run = Run({"scans": {"s": given_scan}, "plotclient": {"some_plotting_options": "cmap=gray"}})
    assert run.params.scans.s.geometry.resolution == 3e-8 and run.params.scans.s.tags == "test,ignored"
    given = prepare_scans(run)["s"]
    np.testing.assert_array_equal(given.data, plain.data)
    np.testing.assert_array_equal(given.positions, plain.positions)
    assert (given.energy_kev, given.distance_m, tuple(given.psize_m)) == \
        (plain.energy_kev, plain.distance_m, tuple(plain.psize_m))
    wavelength = optics.energy_to_wavelength(plain.energy_kev)
    np.testing.assert_allclose(pm.object_psize(given), wavelength * plain.distance_m /
                               (np.array(plain.data.shape[1:]) * np.array(plain.psize_m)), rtol=1e-12)
