"""The model terms for real data (background, frame scales, orthogonal probe modes) against simulated truth."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from difframe.plugins.engines import dm, ml
from difframe import frame_threads
from difframe.ptycho import kernels
from difframe.ptycho import model as pm
from difframe.parallel import Ranks

from ptycho_truth import SHAPE, amplitude_guess, engine_params, object_error, simulate, start_model


def _background_map():
    """A smooth, non-negative background of 20-60 counts per pixel per frame (FFT order = any order here)."""
    y, x = np.indices(SHAPE) / SHAPE[0]
    return 20.0 + 40.0 * np.exp(-((y - 0.3) ** 2 + (x - 0.6) ** 2) / 0.2)


@pytest.fixture(scope="module")
def with_background():
    prep, probe, truth = simulate(photons=1e6, seed=4)
    bg = _background_map()
    prep.data = np.random.default_rng(9).poisson(prep.data + bg).astype(np.float32)
    return prep, probe, truth, bg


def test_background_is_recovered_and_improves_the_object(with_background):
    prep, probe, truth, bg = with_background
    fitted = start_model(prep, amplitude_guess(prep, truth.psize))
    fitted.scans[0].background = np.zeros(SHAPE, np.float32)
    plain = copy.deepcopy(fitted)
    plain.scans[0].background = None
    final = []
    for model in (fitted, plain):
        for module, options in ((dm, {}), (ml, {"type": "poisson", "reg_del2": False})):
            engine = module.factory(engine_params(module.PARAMETERS, probe_support=None, **options), model)
            engine.initialize()
            metrics = engine.iterate(80)
        final.append(metrics[-1]["deviance"])
    recovered = np.fft.fftshift(fitted.scans[0].background)  # model maps are in FFT order (far field)
    # per pixel the map is as noisy as 49 frames' counts there; its shape is well determined, its level
    # within 20 % (it also takes up the high-angle scattering 160 iterations have not yet put in the object)
    smooth = pm.gaussian_smooth(recovered + 0j, 3).real
    assert np.corrcoef(smooth.ravel(), bg.ravel())[0, 1] > 0.7  # measured: 0.80
    assert abs(recovered.mean() / bg.mean() - 1) < 0.2
    assert object_error(fitted, truth, probe) < 0.7 * object_error(plain, truth, probe)
    # with the background the data fit reaches the Poisson noise level, ~1 per pixel (measured: 1.21, without: 5.38)
    assert final[0] < 1.3 and final[0] < 0.5 * final[1], final


def test_dm_floating_intensities_recover_frame_scales():
    prep, probe, truth = simulate(photons=1e8)
    scales = np.random.default_rng(5).uniform(0.7, 1.3, prep.num_frames)
    prep.data *= scales[:, None, None].astype(np.float32)
    model = start_model(prep, probe)
    model.objects["sim"].data[...] = truth.data
    engine = dm.factory(engine_params(dm.PARAMETERS, floating_intensities=True, fit_background=False), model)
    engine.initialize()
    engine.iterate(100)
    got = model.scans[0].scale
    # scales are kept at mean 1: compare shapes (the probe carries the overall flux)
    np.testing.assert_allclose(got / got.mean(), scales / scales.mean(), rtol=0.04)


def test_dm_data_fit_does_not_drift(with_background):
    """The deviance DM reports is that of its current probe x object: it must not end worse than its best."""
    prep, probe, truth, _ = with_background
    model = start_model(prep, amplitude_guess(prep, truth.psize))
    model.scans[0].background = np.zeros(SHAPE, np.float32)
    engine = dm.factory(engine_params(dm.PARAMETERS), model)
    engine.initialize()
    deviance = [m["deviance"] for m in engine.iterate(100)]
    assert deviance[-1] <= 1.02 * min(deviance)


def test_orthogonal_modes_keep_the_intensity_and_mix_pods_alike():
    rng = np.random.default_rng(0)
    probe = (rng.normal(size=(3, *SHAPE)) + 1j * rng.normal(size=(3, *SHAPE))).astype(np.complex64)
    views = (rng.normal(size=(5, 2, *SHAPE)) + 1j * rng.normal(size=(5, 2, *SHAPE))).astype(np.complex64)
    mixing, powers = pm.orthogonal_modes(probe)
    mixed = probe.copy()
    pm.mix_modes(mixed, mixing)
    gram = np.conj(mixed.reshape(3, -1)) @ mixed.reshape(3, -1).T
    np.testing.assert_allclose(np.abs(gram - np.diag(np.diag(gram))).max() / np.abs(gram).max(), 0, atol=1e-5)
    np.testing.assert_allclose(np.diag(gram).real, powers, rtol=1e-4)
    assert np.all(np.diff(powers) <= 0)
    np.testing.assert_allclose((np.abs(mixed) ** 2).sum(0), (np.abs(probe) ** 2).sum(0), rtol=1e-4, atol=1e-3)
    # pods of the old modes, mixed by the kernel, are the pods of the new modes
    pods = pm.exit_waves(probe, views).reshape(5, 6, *SHAPE)
    kernels.mix_probe_modes(pods, mixing.astype(np.complex64), 2)
    np.testing.assert_allclose(pods, pm.exit_waves(mixed, views).reshape(5, 6, *SHAPE), rtol=1e-4, atol=1e-4)


def test_three_mode_probe_powers_are_recovered():
    """A partially coherent probe of three orthogonal modes with powers 0.70 / 0.22 / 0.08: DM then ML with
    three modes from the default starting diversity recover the powers to a few percent."""
    prep, probe, truth = simulate(photons=1e8, probe_modes=1, seed=2)
    base = probe[0]
    y, x = np.indices(SHAPE) - np.asarray(SHAPE)[:, None, None] / 2
    modes = np.stack([base, base * x / 4, base * y / 4])
    mixing, _ = pm.orthogonal_modes(modes)
    pm.mix_modes(modes, mixing)
    target = np.array([0.70, 0.22, 0.08])
    modes *= np.sqrt(target * 1e8 / (np.abs(modes) ** 2).sum(axis=(1, 2)))[:, None, None]
    storage = truth
    corners = pm.corners_of(prep.positions, storage, SHAPE)
    from difframe import optics

    fields = optics.FarField(SHAPE).forward(pm.exit_waves(modes, pm.gather(storage.data, corners, SHAPE)))
    prep.data = np.random.default_rng(3).poisson(pm.intensity(fields)).astype(np.float32)
    guess = amplitude_guess(prep, truth.psize)
    from difframe.ptycho.models import add_diversity

    model = start_model(prep, add_diversity(guess, None, 3, np.random.default_rng(0), "illumination"))
    for module, options in ((dm, {}), (ml, {"type": "poisson", "reg_del2": False})):
        engine = module.factory(engine_params(module.PARAMETERS, fit_background=False, **options), model)
        engine.initialize()
        metrics = engine.iterate(100)
    got = np.array([metrics[-1][f"mode_power_{k}"] for k in range(3)])
    np.testing.assert_allclose(got, target, atol=0.03)


def test_initial_background_choices():
    frames = np.random.default_rng(1).poisson(5.0, (6, *SHAPE)).astype(np.float32)
    weights = np.ones(SHAPE, np.float32)
    weights[0, 0] = 0
    ranks = Ranks()
    assert not pm.initial_background(frames, weights, "zero", "s", ranks).any()
    low = pm.initial_background(frames, weights, "min", "s", ranks)
    assert low[0, 0] == 0 and np.array_equal(low[1:], frames.min(axis=0)[1:])
    assert pm.initial_background(frames, weights, 3.5, "s", ranks)[5, 5] == 3.5
    with pytest.raises(Exception, match="background.init: a map of shape"):
        pm.initial_background(frames, weights, np.zeros((3, 3)), "s", ranks)
    with pytest.raises(Exception, match="non-negative"):
        pm.initial_background(frames, weights, -1.0, "s", ranks)


def _band_limited_object(y, x):
    """Amplitude and phase as smooth functions of continuous pixel coordinates (plane waves below Nyquist/2)."""
    waves = [(0.07, 0.02, 0.3), (-0.03, 0.11, 1.1), (0.13, -0.08, 2.0), (0.05, 0.17, -0.7), (-0.19, 0.04, 0.4)]
    phase = sum(np.cos(2 * np.pi * (fy * y + fx * x) + ph) for fy, fx, ph in waves) / len(waves)
    amp = 0.8 + 0.15 * sum(np.sin(2 * np.pi * (fx * y - fy * x) + ph) for fy, fx, ph in waves) / len(waves)
    return amp * np.exp(0.8j * phase)


def test_subpixel_positions_fit_frames_measured_between_pixels():
    """Frames simulated at their exact positions from an object known at every real coordinate: ML through
    sub-pixel windows ends closer to the data and to the true object than through rounded windows."""
    prep, probe, truth = simulate(photons=1e6)
    storage = pm.Storage(truth.data, truth.psize, truth.origin, truth.energy_kev)
    centre = (prep.positions - storage.origin) / storage.psize - np.asarray(SHAPE) // 2
    assert np.abs(centre - np.rint(centre)).mean() > 0.2  # the scan's positions lie between pixels
    i, j = np.mgrid[:SHAPE[0], :SHAPE[1]]
    exits = probe[None] * _band_limited_object(centre[:, 0, None, None] + i, centre[:, 1, None, None] + j)[:, None]
    counts = np.fft.fftshift(pm.intensity(np.fft.fft2(exits, norm="ortho")), axes=(-2, -1))  # detector order
    prep.data = np.random.default_rng(4).poisson(counts).astype(np.float32)
    yy, xx = np.mgrid[:truth.data.shape[-2], :truth.data.shape[-1]]
    truth.data = _band_limited_object(yy, xx)[None]
    start = start_model(prep, amplitude_guess(prep, truth.psize))
    engine = dm.factory(engine_params(dm.PARAMETERS), start)
    engine.initialize()
    engine.iterate(40)
    ends = {}
    for sub in (False, True):
        model = copy.deepcopy(start)
        engine = ml.factory(engine_params(ml.PARAMETERS, type="poisson", reg_del2=False, illumination_precond=True,
                                          subpixel_positions=sub),
                            model)
        engine.initialize()
        ends[sub] = (engine.iterate(40)[-1]["deviance"], object_error(model, truth, probe))
    assert ends[True][0] < 0.8 * ends[False][0]
    assert ends[True][1] < 0.8 * ends[False][1]
    assert ends[True][0] < 1.5  # near the noise level of 1 per pixel


def test_more_probe_modes_than_frames_are_refused():
    prep, probe, truth = simulate()
    prep.data, prep.positions = prep.data[:3], prep.positions[:3]
    with pytest.raises(pm.ParameterError, match=r"scans\.sim\.coherence\.num_probe_modes: 4 probe modes but only 3"):
        start_model(prep, np.ones((4, *SHAPE), complex))
    assert start_model(prep, np.ones((3, *SHAPE), complex)).probes["sim"].data.shape[0] == 3


def test_dm_in_cache_sized_chunks_on_two_threads_is_reproducible(with_background, monkeypatch):
    """DM's Fourier pass split into chunks of 3 frames over 2 threads (background and scales fitted, their sums
    made per thread) gives the bits of a second such run and, within float rounding, the one-chunk result."""
    prep, probe, truth, _ = with_background
    results = []
    for cache_bytes, threads in ((3 * SHAPE[0] * SHAPE[1] * 8, 2), (3 * SHAPE[0] * SHAPE[1] * 8, 2), (2**20, 1)):
        monkeypatch.setattr(frame_threads, "CACHE_BYTES", cache_bytes)
        monkeypatch.setattr(frame_threads, "workers", lambda threads=threads: threads)
        model = start_model(prep, amplitude_guess(prep, truth.psize))
        model.scans[0].background = np.zeros(SHAPE, np.float32)
        engine = dm.factory(engine_params(dm.PARAMETERS, floating_intensities=True), model)
        engine.initialize()
        deviance = engine.iterate(15)[-1]["deviance"]
        results.append((deviance, model.objects["sim"].data.copy(), model.scans[0].background.copy(),
                        model.scans[0].scale.copy()))
    for a, b in zip(results[0][1:], results[1][1:]):
        assert np.array_equal(a, b)
    assert results[0][0] == results[1][0]
    for a, b in zip(results[0][1:], results[2][1:]):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-3 * np.abs(b).max())
    assert abs(results[0][0] / results[2][0] - 1) < 1e-3
