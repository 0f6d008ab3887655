"""DM and ML on a simulated scan with known object and probe."""

import copy

import numpy as np
import pytest

from difframe.plugins.engines import dm, ml

from ptycho_truth import SHAPE, amplitude_guess, engine_params, object_error, simulate, start_model


@pytest.fixture(scope="module")
def after_dm(simulated):
    prep, probe, truth = simulated
    model = start_model(prep, amplitude_guess(prep, truth.psize))
    engine = dm.factory(engine_params(dm.PARAMETERS), model)
    engine.initialize()
    metrics = engine.iterate(40)
    engine.finalize()
    return model, metrics


def test_dm_reconstructs_noise_free_object_to_fraction_of_percent():
    prep, probe, truth = simulate(photons=1e9)
    model = start_model(prep, amplitude_guess(prep, truth.psize), data_type="double")
    engine = dm.factory(engine_params(dm.PARAMETERS, obj_smooth_std=None, fourier_relax_factor=0.0), model)
    engine.initialize()
    engine.iterate(60)
    assert model.objects["sim"].data.dtype == np.complex128
    assert object_error(model, truth, probe) < 0.01


def test_ml_after_dm_beats_dm_alone_and_reaches_noise_level(simulated, after_dm):
    prep, probe, truth = simulated
    dm_alone = start_model(prep, amplitude_guess(prep, truth.psize))
    engine = dm.factory(engine_params(dm.PARAMETERS), dm_alone)
    engine.initialize()
    engine.iterate(100)
    model = copy.deepcopy(after_dm[0])  # DM 40 iterations
    engine = ml.factory(engine_params(ml.PARAMETERS), model)
    engine.initialize()
    metrics = engine.iterate(60)
    assert model.objects["sim"].data.dtype == np.complex64
    err_dm, err_ml = object_error(dm_alone, truth, probe), object_error(model, truth, probe)
    assert err_ml < 0.5 * err_dm
    # Gaussian likelihood per point of Poisson data near the truth is ~1 (chi-square per degree of freedom)
    assert 0.8 < metrics[-1]["likelihood"] < 1.3
    assert metrics[-1]["likelihood"] < metrics[0]["likelihood"]


def test_poisson_likelihood_decreases(simulated, after_dm):
    model = copy.deepcopy(after_dm[0])
    engine = ml.factory(engine_params(ml.PARAMETERS, type="poisson"), model)
    engine.initialize()
    values = [m["likelihood"] for m in engine.iterate(10)]
    assert np.all(np.diff(values) < 0)


@pytest.mark.parametrize("options", [dict(type="euclid"), dict(scale_precond=True),
                                     dict(smooth_gradient=1.0), dict(smooth_gradient=-3.0),
                                     dict(reg_del2=False), dict(illumination_precond=True)])
def test_ml_variants_improve_on_dm_start(simulated, after_dm, options):
    prep, probe, truth = simulated
    model = copy.deepcopy(after_dm[0])
    start = object_error(model, truth, probe)
    engine = ml.factory(engine_params(ml.PARAMETERS, **options), model)
    engine.initialize()
    metrics = engine.iterate(15)
    assert metrics[-1]["likelihood"] < metrics[0]["likelihood"]
    assert object_error(model, truth, probe) < start


def test_illumination_preconditioner_fits_the_data_faster(simulated, after_dm):
    """Dividing the gradients by the illumination lets the weakly lit rim and the probe keep pace: the same
    number of Poisson ML iterations from the same DM start ends closer to the data and to the true object."""
    prep, probe, truth = simulated
    ends = {}
    for precond in (False, True):
        model = copy.deepcopy(after_dm[0])
        engine = ml.factory(engine_params(ml.PARAMETERS, type="poisson", reg_del2=False,
                                          illumination_precond=precond), model)
        engine.initialize()
        ends[precond] = (engine.iterate(20)[-1]["deviance"], object_error(model, truth, probe))
    assert ends[True][0] < ends[False][0]
    assert ends[True][1] < ends[False][1]


def test_floating_intensities_recover_frame_scales():
    prep, probe, truth = simulate(photons=1e8)
    scales = np.random.default_rng(5).uniform(0.7, 1.3, prep.num_frames)
    prep.data *= scales[:, None, None].astype(np.float32)
    model = start_model(prep, probe)
    model.objects["sim"].data[...] = truth.data
    engine = ml.factory(engine_params(ml.PARAMETERS, floating_intensities=True, reg_del2=False), model)
    engine.initialize()
    engine.iterate(3)
    np.testing.assert_allclose(model.scans[0].scale, scales, rtol=0.02)


def test_probe_update_start_and_support_are_honoured(simulated):
    prep, probe, truth = simulated
    guess = amplitude_guess(prep, truth.psize)
    model = start_model(prep, guess)
    engine = dm.factory(engine_params(dm.PARAMETERS, probe_update_start=3, probe_support=0.5), model)
    engine.initialize()
    engine.iterate(3)
    np.testing.assert_allclose(model.probes["sim"].data, guess.astype(np.complex64))
    engine.iterate(1)
    p = model.probes["sim"].data[0]
    yy, xx = np.indices(SHAPE)
    outside = np.hypot(yy - 16, xx - 16) >= 8
    assert not np.allclose(p, guess[0]) and np.all(p[outside] == 0)


def test_clip_object_bounds_amplitude(simulated):
    prep, probe, truth = simulated
    model = start_model(prep, amplitude_guess(prep, truth.psize))
    engine = dm.factory(engine_params(dm.PARAMETERS, clip_object=(0.8, 0.9)), model)
    engine.initialize()
    engine.iterate(3)
    amp = np.abs(model.objects["sim"].data)
    assert amp.min() >= 0.8 - 1e-5 and amp.max() <= 0.9 + 1e-5


def test_two_scans_sharing_object_and_probe_reconstruct_one_object(simulated):
    from dataclasses import replace

    from difframe.errors import DataError
    from difframe.ptycho import model as pm

    prep, probe, truth = simulated
    half = prep.num_frames // 2
    parts = {"a": replace(prep, label="a", data=prep.data[:half], positions=prep.positions[:half]),
             "b": replace(prep, label="b", data=prep.data[half:], positions=prep.positions[half:])}
    guess = amplitude_guess(prep, truth.psize)
    init = dict(init_probe=lambda label, shape, psize: guess,
                init_object=lambda label, shape, psize, origin: np.ones((1, *shape), complex))
    model = pm.build_model(parts, {"a": (None, 1.0, None, 1.0), "b": ("a", 0.5, "a", 0.5)}, **init)
    assert list(model.objects) == ["a"] and list(model.probes) == ["a"]
    assert [s.object_power for s in model.scans] == [1.0, 0.5]
    # the shared object spans both halves exactly like the single-scan object
    assert model.objects["a"].data.shape == truth.data.shape
    np.testing.assert_allclose(model.objects["a"].origin, truth.origin)
    engine = dm.factory(engine_params(dm.PARAMETERS), model)
    engine.initialize()
    engine.iterate(40)
    joined = start_model(prep, guess)
    joined.objects["sim"] = model.objects["a"]
    assert object_error(joined, truth, probe) < 0.2  # one scan of all frames reaches 0.12 after 40 DM
    with pytest.raises(DataError, match="cycle"):
        pm.build_model(parts, {"a": ("b", 1.0, None, 1.0), "b": ("a", 1.0, None, 1.0)}, **init)
