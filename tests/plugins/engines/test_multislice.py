"""The multislice engine (e3PIE): its forward model against an independent numpy simulation of a two-slice
sample, one slice against ePIE, the truth scan against single-slice ePIE, bad input, chaining in a run."""

import numpy as np
import pytest

from difframe import optics
from difframe.errors import ParameterError, UsageError
from difframe.plugins.engines import multislice, multislice_kernels, pie
from difframe.ptycho import model as pm
from difframe.ptycho.data import PreparedData

from kernel_cases import FRAMES, SHAPE as KERNEL_SHAPE, close, random_weights
from ptycho_truth import (DET_PSIZE, DISTANCE, ENERGY_KEV, SHAPE, amplitude_guess, engine_params, positions,
                          start_model, true_probe)

#: slice spacing [m]: Fresnel number per object pixel psize^2 / (lambda dz) = 0.088 (73 nm pixels, 0.2 nm
#: wavelength); the propagation between the slices changes the diffracted amplitudes by 12 %
SPACING = 3e-4


def phase_slice(shape, seed):
    """A thin phase object exp(i phi), phi smooth and random with peak 1 rad."""
    rng = np.random.default_rng(seed)
    phi = pm.gaussian_smooth(rng.normal(size=shape) + 0j, 1.5).real
    return np.exp(1j * phi / np.abs(phi).max())


def two_slice_scan(photons=1e5, noise=True):
    """(PreparedData, probe (1, H, W), slices (2, Ho, Wo)) of a far-field scan of two phase slices SPACING apart,
    simulated from the physics in numpy: probe x slice 1, angular-spectrum propagation over SPACING,
    x slice 2, unitary FFT to the detector, Poisson counts."""
    lam = optics.HC_KEV_M / ENERGY_KEV
    psize = np.full(2, lam * DISTANCE / (SHAPE[0] * DET_PSIZE))
    pos = positions(psize)
    obj_shape, origin = pm.object_frame([pos], psize, SHAPE)
    slices = np.stack([phase_slice(obj_shape, 3), phase_slice(obj_shape, 8)])
    probe = true_probe(psize)
    probe *= np.sqrt(photons / (np.abs(probe) ** 2).sum())
    fy = np.fft.fftfreq(SHAPE[0], psize[0])[:, None]
    fx = np.fft.fftfreq(SHAPE[1], psize[1])[None, :]
    transfer = np.exp(2j * np.pi * SPACING * (np.sqrt(1 / lam**2 - fy**2 - fx**2) - 1 / lam))
    corners = pm.corners_of(pos, pm.Storage(slices, psize, origin, ENERGY_KEV), SHAPE)
    frames = []
    for y, x in corners:
        first, second = slices[:, y:y + SHAPE[0], x:x + SHAPE[1]]
        exit_wave = np.fft.ifft2(np.fft.fft2(probe[0] * first) * transfer) * second
        frames.append(np.abs(np.fft.fftshift(np.fft.fft2(exit_wave, norm="ortho"))) ** 2)
    data = np.array(frames)
    if noise:
        data = np.random.default_rng(0).poisson(data)
    prep = PreparedData(label="sim", data=data.astype(np.float32), mask=np.ones(SHAPE, bool), positions=pos,
                        energy_kev=ENERGY_KEV, distance_m=DISTANCE, psize_m=(DET_PSIZE, DET_PSIZE),
                        center=(16, 16))
    return prep, probe, slices


@pytest.fixture(scope="module")
def scan():
    return two_slice_scan()


def _epoch_reference(probe, slices, corners, order, meas, weights, scale, bg, transfer, slab, alpha, beta,
                     update_probe, tiny):
    """The e3PIE epoch written frame by frame in numpy (complex128)."""
    probe, slices = probe.astype(complex), slices.astype(complex)
    h, w = KERNEL_SHAPE
    wts = np.broadcast_to(weights, meas.shape)
    err, dev, change, bg_sums = np.zeros(FRAMES), np.zeros(FRAMES), np.zeros(FRAMES), np.zeros((2, h, w))
    scale_sums = np.zeros((FRAMES, 2))

    def convolve(x, kernel):
        return np.fft.ifft2(np.fft.fft2(x) * kernel)

    for n in order:
        y, x = corners[n]
        win = slices[:, y:y + h, x:x + w]  # a view: the slices are updated through it
        waves = [probe]
        for s in range(len(win) - 1):
            waves.append(convolve(waves[s] * win[s], slab))
        chi = waves[-1] * win[-1]
        field = np.fft.fft2(chi, norm="ortho") if transfer is None else convolve(chi, transfer)
        model = (np.abs(field) ** 2).sum(axis=0)
        im = np.maximum(scale[n] * model + bg, tiny)
        valid = wts[n] > 0
        amp, am = np.sqrt(meas[n]), np.sqrt(im)
        err[n] = ((am - amp) ** 2)[valid].sum() / max(valid.sum(), 1)
        logs = np.where(meas[n] > 0, meas[n] * np.log(np.where(meas[n] > 0, meas[n], 1) / im), 0)
        dev[n] = (2 * (im - meas[n] + logs))[valid].sum()
        bg_sums += wts[n] * (1 - meas[n] / im), wts[n] * meas[n] / im**2
        scale_sums[n] = (wts[n] * (1 - meas[n] / im) * model).sum(), (wts[n] * meas[n] / im**2 * model**2).sum()
        factor = np.where(valid, amp / am - 1, 0)
        dchi = (np.fft.ifft2(field * factor, norm="ortho") if transfer is None
                else convolve(field * factor, np.conj(transfer)))
        change[n] = (np.abs(dchi) ** 2).sum()
        for s in range(len(win) - 1, -1, -1):
            old, psi = win[s].copy(), waves[s]
            win[s] += alpha * (np.conj(psi) * dchi).sum(axis=0) / (np.abs(psi) ** 2).sum(axis=0).max()
            dpsi = beta * np.conj(old) * dchi / (np.abs(old) ** 2).max()
            if s > 0:
                dchi = convolve(dpsi, np.conj(slab))
            elif update_probe:
                probe = probe + dpsi
    return probe, slices, err, dev, change, bg_sums, scale_sums


@pytest.mark.parametrize("variant", ["far field", "near field, probe fixed"])
def test_epoch_kernel_against_numpy(kernel_case, variant):
    """The fused epoch against the numpy statement, for 2 or 3 slices, 1 or 2 probe modes, both precisions,
    per-frame weights, scales and background."""
    c = kernel_case
    rng = c["rng"]
    slices = (1 + 0.2 * c["obj"]).astype(c["dtype"])
    if len(slices) == 1:
        slices = np.concatenate([slices, (1 + 0.2 * rng.normal(size=slices.shape)).astype(c["dtype"])])
    probe = (1 + 0.3 * c["probe"]).astype(c["dtype"])
    weights = random_weights(c, shared=False)
    meas = rng.poisson(3.0 * probe.shape[0], (FRAMES, *KERNEL_SHAPE)).astype(c["real"])
    bg = rng.uniform(0.0, 2.0, KERNEL_SHAPE).astype(c["real"])
    scale = rng.uniform(0.6, 1.5, FRAMES).astype(c["real"])
    order = rng.permutation(FRAMES).astype(np.int64)
    fy, fx = np.fft.fftfreq(KERNEL_SHAPE[0])[:, None], np.fft.fftfreq(KERNEL_SHAPE[1])[None, :]
    slab = np.exp(-1j * 25 * (fy**2 + fx**2)).astype(c["dtype"])
    transfer = None if variant == "far field" else np.exp(-1j * 40 * (fy**2 + fx**2)).astype(c["dtype"])
    update_probe = variant == "far field"
    tiny = float(np.finfo(c["real"]).tiny) * 1e6
    ref = _epoch_reference(probe, slices, c["corners"], order, meas, weights, scale, bg, transfer, slab, 0.7, 0.4,
                           update_probe, tiny)
    err, dev, change = np.zeros(FRAMES), np.zeros(FRAMES), np.zeros(FRAMES)
    bg_sums, scale_sums = np.zeros((2, *KERNEL_SHAPE), c["real"]), np.zeros((FRAMES, 2))
    out_p, out_o = probe.copy(), slices.copy()
    multislice_kernels.multislice_epoch(out_p, out_o, c["corners"], order, meas, weights, scale, bg,
                                        np.empty((0, 0), c["dtype"]) if transfer is None else transfer, slab,
                                        c["real"].type(0.7), c["real"].type(0.4), update_probe, tiny, err, dev, change,
                                        bg_sums, scale_sums)  # steps in the model's precision, as the engine passes them
    assert np.abs(out_o - slices).max() > 0.05 and (np.abs(out_p - probe).max() > 0.05) == update_probe
    tol = 1e-4 if c["dtype"] == np.complex64 else 1e-10
    for got, want in zip((out_p, out_o, err, dev, change, bg_sums, scale_sums), ref):
        close(got, want, tol)


def _engine(model, **options):
    engine = multislice.factory(engine_params(multislice.PARAMETERS, **options), model)
    engine.initialize()
    return engine


def _phase_correlation(a, b, lit):
    """Correlation of the phases of two slices where the probe lit them (global phase removed)."""
    a = np.angle(a[lit] * np.conj(a[lit].mean()))
    b = np.angle(b[lit] * np.conj(b[lit].mean()))
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_forward_model_explains_the_simulated_slices_and_no_single_slice_does():
    """Noise-free frames, the true probe, steps 0: the true slices fit to float32 rounding; the same slices in
    the other order, or their product as one slice, leave a clear misfit."""
    prep, probe, slices = two_slice_scan(noise=False)

    def deviance(layers, num_slices):
        model = start_model(prep, probe)
        model.objects["sim"].data = np.ascontiguousarray(layers, dtype=model.cdtype)
        engine = _engine(model, num_slices=num_slices, slice_spacing=SPACING, alpha=0.0, beta=0.0,
                         probe_support=None)
        return engine.iterate(1)[0]["deviance"]

    assert deviance(slices, 2) < 1e-4
    assert deviance(slices[::-1], 2) > 1.0
    assert deviance(slices[:1] * slices[1:], 1) > 1.0


def test_background_recovered_with_true_slices_and_probe():
    """Steps 0: slices and probe stay true, only the per-epoch Newton step of the background acts, on noise-free
    two-slice frames plus 50 counts per pixel."""
    prep, probe, slices = two_slice_scan(noise=False)
    prep.data[...] += 50.0
    model = start_model(prep, probe)
    model.objects["sim"].data = np.ascontiguousarray(slices, dtype=model.cdtype)
    model.scans[0].background = np.full(SHAPE, 10.0, np.float32)
    engine = _engine(model, num_slices=2, slice_spacing=SPACING, alpha=0.0, beta=0.0, probe_support=None,
                     fit_background=True, background_update_start=0)
    metrics = engine.iterate(8)
    np.testing.assert_allclose(model.scans[0].background, 50.0, rtol=0.02)
    assert metrics[-1]["deviance"] < 0.01 * metrics[0]["deviance"]


@pytest.mark.parametrize("case", ["far field", "near field, two probe modes"])
def test_one_slice_is_epie(scan, case):
    """With one slice the update is ePIE's, frame for frame in the same seeded order, with any propagator and
    probe modes."""
    from dataclasses import replace

    prep, probe, _ = scan
    guess = amplitude_guess(prep, pm.object_psize(prep))
    if case != "far field":  # the same frames read as a hologram 0.1 mm downstream, at the object pixel
        prep = replace(prep, propagation="nearfield", distance_m=1e-4, psize_m=tuple(pm.object_psize(prep)))
        guess = np.concatenate([guess, 0.3 * np.roll(guess, 3, axis=-1)])
    a, b = start_model(prep, guess), start_model(prep, guess)
    ms = _engine(a, num_slices=1, slice_spacing=SPACING, seed=2).iterate(3)
    # ePIE in e3PIE's random order from the first epoch (its default visits the first from the centre out)
    ep = pie._factory("ePIE")(engine_params(pie.VARIANTS["ePIE"][1], seed=2, centre_out_epochs=0), b)
    ep.initialize()
    ref = ep.iterate(3)
    assert np.abs(b.objects["sim"].data - 1).max() > 0.1  # the object moved
    np.testing.assert_allclose(a.objects["sim"].data, b.objects["sim"].data, atol=2e-4)
    np.testing.assert_allclose(a.probes["sim"].data, b.probes["sim"].data, atol=2e-4 * np.abs(guess).max())
    for got, want in zip(ms, ref):
        assert got["deviance"] == pytest.approx(want["deviance"], rel=1e-3)
        assert got["fourier_error"] == pytest.approx(want["fourier_error"], rel=1e-3)
        assert got.get("mode_power_1", 0.0) == pytest.approx(want.get("mode_power_1", 0.0), rel=1e-3)


def test_two_slices_fit_what_one_slice_cannot(scan):
    """1e5 photons per frame, 49 frames, 40 epochs from a flat object and the probe's modulus: e3PIE with two
    slices reaches a deviance of 1.6 per pixel, ePIE on the same data 3.9; the recovered slices' phases
    correlate with their true slices (0.95, 0.96), less with the other one (0.37, 0.26) or each other (0.43)."""
    prep, probe, slices = scan
    guess = amplitude_guess(prep, pm.object_psize(prep))
    multi, single = start_model(prep, guess), start_model(prep, guess)
    ms = _engine(multi, num_slices=2, slice_spacing=SPACING).iterate(40)
    ep = pie._factory("ePIE")(engine_params(pie.VARIANTS["ePIE"][1]), single)
    ep.initialize()
    one = ep.iterate(40)
    assert set(ms[-1]) >= {"fourier_error", "deviance", "exit_change"}
    assert ms[-1]["deviance"] < 2.0 and ms[-1]["deviance"] < 0.5 * one[-1]["deviance"]
    assert ms[-1]["fourier_error"] < one[-1]["fourier_error"]

    scan_views = multi.scans[0]
    light = np.zeros(slices.shape[-2:])
    pm.scatter_add(light, np.broadcast_to(np.abs(probe[0]) ** 2, (scan_views.num_frames, *SHAPE)),
                   scan_views.corners)
    lit = light > 0.3 * light.max()
    got = multi.objects["sim"].data
    assert got.shape == slices.shape
    own = [_phase_correlation(got[k], slices[k], lit) for k in range(2)]
    other = [_phase_correlation(got[k], slices[1 - k], lit) for k in range(2)]
    between = _phase_correlation(got[0], got[1], lit)
    assert min(own) > 0.85
    assert min(own) > max(other) + 0.3 and min(own) > between + 0.3


def test_bad_input_is_named(scan):
    prep, probe, _ = scan
    model = start_model(prep, probe)
    for spacing in (0.0, -1e-6):
        with pytest.raises(ParameterError, match=r"engine\.e3PIE\.slice_spacing = .*: expected a distance > 0"):
            multislice.factory(engine_params(multislice.PARAMETERS, slice_spacing=spacing), model)
    with pytest.raises(ParameterError, match=r"engine\.e3PIE\.num_slices = 0"):
        multislice.factory(engine_params(multislice.PARAMETERS, num_slices=0), model)

    modes = start_model(prep, probe, object_modes=2)
    with pytest.raises(ParameterError, match=r"engine\.e3PIE\.num_slices = 3: object 'sim' has 2 layers"):
        _engine(modes, num_slices=3)

    from difframe.param import Param

    refining = engine_params(multislice.PARAMETERS, position_refinement=Param(active=True))
    with pytest.raises(ParameterError, match=r"engine\.e3PIE\.position_refinement\.active"):
        multislice.factory(refining, start_model(prep, probe)).initialize()

    class TwoRanks:
        size, is_root = 2, True

    model.ranks = TwoRanks()
    with pytest.raises(UsageError, match="e3PIE.*one process only.*mpiexec"):
        _engine(model)

    from difframe.manager import PluginManager
    from difframe.params import ParamTree

    tree = ParamTree.build(PluginManager())
    with pytest.raises(ParameterError, match=r"engines\.m\.num_slices"):
        tree.resolve({"engines": {"m": {"name": "e3PIE", "num_slices": 0}}})
    assert {p.rpartition(".")[2] for p in tree.nodes if p.startswith("engine.e3PIE.")} == set(multislice.PARAMETERS)


def _truth_run(tmp_path, prep, engines, scans):
    import difframe
    from difframe import Run
    from difframe.manager import PluginManager
    from difframe.types import RecipeSpec

    class Truth:
        @difframe.hookimpl
        def difframe_recipes(self):
            yield RecipeSpec(name="truth", summary="simulated scan", prepare=lambda p, ctx: prep)

    params = {"run": "c", "io": {"paths": {"home": str(tmp_path)}, "autosave": {"active": False}},
              "plotclient": {"dump_interval": None}, "engines": engines, "scans": scans}
    return Run(params, plugins=PluginManager(plugins=[Truth()])).run()


def test_chains_after_single_slice_engines_and_refuses_what_slices_cannot_serve(tmp_path, scan):
    """ePIE then e3PIE in one run: the .ptyr holds two slices, and a run resumed from it continues; object modes
    beside slices, and a single-slice engine after e3PIE, are refused before any data are read."""
    from difframe.ptycho.ptyr import read_ptyr

    prep, probe, _ = scan
    guess = amplitude_guess(prep, pm.object_psize(prep))
    scans = {"a": {"data": {"source": "truth"}, "illumination": {"model": guess}}}
    engines = {"a": {"name": "ePIE", "numiter": 3},
               "b": {"name": "e3PIE", "numiter": 3, "num_slices": 2, "slice_spacing": SPACING}}
    results = _truth_run(tmp_path, prep, engines, scans)
    r = read_ptyr(results["reconstruction"])
    assert r.objects["a"]["data"].shape[0] == 2
    assert [i["engine"] for i in r.iter_info] == ["ePIE"] * 3 + ["e3PIE"] * 3
    assert all(np.all(np.isfinite(i["error"])) for i in r.iter_info)

    # resumed from that .ptyr with the natural parameters (sample and illumination from the file, e3PIE with the
    # same slices), both layers load and it goes on where the first run ended: its first epoch fits better than
    # the first run's last (a single loaded layer gives 4.4 vs 3.8), and the slices it starts from are the file's
    recon = {"model": "recon", "recon": {"rfile": str(results["reconstruction"])}}
    started = {}

    def first_epoch(engine):
        started.setdefault("slices", engine.model.objects["a"].data.copy())

    from difframe.plugins.engines.multislice import MultislicePIE

    original = MultislicePIE._epoch
    try:
        MultislicePIE._epoch = lambda self: (first_epoch(self), original(self))[1]
        resumed = _truth_run(tmp_path, prep, {"b": engines["b"]},
                             {"a": {"data": {"source": "truth"}, "illumination": recon, "sample": recon}})
    finally:
        MultislicePIE._epoch = original
    again = read_ptyr(resumed["reconstruction"])
    assert again.iter_info[0]["error"][1] < r.iter_info[-1]["error"][1]
    assert started["slices"].shape == r.objects["a"]["data"].shape
    close(started["slices"], r.objects["a"]["data"], 1e-6)
    assert again.objects["a"]["data"].shape[0] == 2
    assert again.params["scans"]["a"]["coherence"]["num_object_modes"] == 1  # as written: the model asked for 2
    # the explicit form (as many object modes as slices) still works
    explicit = _truth_run(tmp_path, prep, {"b": engines["b"]}, {"a": {
        "data": {"source": "truth"}, "illumination": recon, "sample": recon, "coherence": {"num_object_modes": 2}}})
    assert read_ptyr(explicit["reconstruction"]).iter_info[0]["error"][1] < r.iter_info[-1]["error"][1]

    with pytest.raises(ParameterError, match=r"scans\.a\.coherence\.num_object_modes = 2: engine e3PIE"):
        _truth_run(tmp_path, prep, engines, {"a": {**scans["a"], "coherence": {"num_object_modes": 2}}})
    with pytest.raises(ParameterError, match=r"engines\.c\.name = 'ePIE' follows the multislice engine engines\.b"):
        _truth_run(tmp_path, prep, {**engines, "c": {"name": "ePIE", "numiter": 1}}, scans)
    with pytest.raises(ParameterError, match=r"engines\.c\.num_slices = 3: every e3PIE engine"):
        _truth_run(tmp_path, prep, {**engines, "c": {**engines["b"], "num_slices": 3}}, scans)
