"""Recipe 'sim': frames against independent numpy propagation of the returned truth, detector effects."""

from types import SimpleNamespace

import numpy as np
import pytest

from difframe import hookimpl
from difframe.manager import PluginManager
from difframe.optics import fresnel_propagate
from difframe.param import Param
from difframe.plugins.recipes.sim import prepare as sim
from difframe.ptycho.ptyd import read_ptyd
from difframe.types import DetectorTemplateSpec


class TinyDetector:
    """A 2 x 2 module detector with a 2-pixel gap, registered only in these tests."""

    @hookimpl
    def difframe_detector_templates(self):
        yield DetectorTemplateSpec(name="tiny", summary="test", shape=(34, 34), pixel_size=(100e-6, 100e-6),
                                   module_shape=(16, 16), gap=(2, 2), saturation=50, dark_counts=0.5, dtype="int32")


@pytest.fixture(scope="module")
def plugins():
    return PluginManager(plugins=[TinyDetector()])


def grid(n=3, step=4e-7):
    y, x = np.meshgrid(np.arange(n) * step, np.arange(n) * step, indexing="ij")
    return np.stack([y.ravel(), x.ravel()], axis=1)


def context(plugins, positions=None):
    return SimpleNamespace(label="sim", positions=grid() if positions is None else positions, plugins=plugins,
                           params=None, data_type="double", dry_run=False)


def params(**over):
    p = {"data": {"shape": 32, "simulation": {}, "recipe": {"sim": {"seed": 3, "poisson": False}}},
         "geometry": {"energy": 8.0, "distance": 2.0, "psize": 100e-6, "prop_type": "farfield"},
         "illumination": {"aperture": {"form": "circ", "size": 1.5e-6, "edge": 1}, "photons": 1e6},
         "sample": {"model": "flower"}, "coherence": {"num_probe_modes": 1, "num_object_modes": 1}}
    for path, value in over.items():
        node = p
        *parents, leaf = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return Param(p)


def numpy_farfield(field):
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(field, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def views(truth, shape=(32, 32)):
    c = truth["view_corners"]
    return np.stack([truth["object"][0][r:r + shape[0], q:q + shape[1]] for r, q in c])


def test_noise_free_frames_are_the_far_field_of_probe_times_object(plugins):
    out = sim(params(), context(plugins))
    truth = out.meta["truth"]
    expected = np.abs(numpy_farfield(truth["probe"][0] * views(truth))) ** 2
    np.testing.assert_allclose(out.data, expected, rtol=1e-4, atol=1e-6 * expected.max())
    # object pixel is lambda z / (N psize); positions are the snapped grid, 4 pixels apart here
    assert truth["object_psize"][0] == pytest.approx(out.wavelength_m * 2.0 / (32 * 100e-6))
    steps = np.diff(out.positions[:, 1])[:2] / truth["object_psize"][1]
    np.testing.assert_allclose(steps, np.round(4e-7 / truth["object_psize"][1]))
    assert (np.abs(truth["probe"]) ** 2).sum() == pytest.approx(1e6)


def test_poisson_noise_is_seeded_and_unbiased(plugins):
    exact = sim(params(), context(plugins)).data
    p = params(**{"data.recipe.sim.poisson": True})
    a, b = sim(p, context(plugins)).data, sim(p, context(plugins)).data
    np.testing.assert_array_equal(a, b)
    assert np.all(a == np.round(a)) and a.sum() == pytest.approx(exact.sum(), rel=5e-3)


def test_psf_blurs_but_keeps_the_counts(plugins):
    sharp = sim(params(), context(plugins)).data
    blurred = sim(params(**{"data.simulation.psf": 3.0}), context(plugins)).data
    assert blurred.sum() == pytest.approx(sharp.sum(), rel=1e-3) and blurred.max() < 0.8 * sharp.max()


def test_detector_template_gaps_saturation_dark_counts(plugins):
    out = sim(params(**{"data.simulation.detector": "tiny", "illumination.photons": 1e4}), context(plugins))
    # the 32 x 32 frame is the middle of the 34 x 34 detector: gap rows/cols 16, 17 -> frame 15, 16
    gap = np.zeros((32, 32), bool)
    gap[15:17], gap[:, 15:17] = True, True
    mask = out.frame_mask()
    assert not mask[:, gap].any()
    assert (out.data[:, gap] == 0).all() and out.data.max() == 50
    assert (~mask[:, ~gap]).sum() == (out.data[:, ~gap] >= 50).sum()  # saturated pixels invalid
    dark = sim(params(**{"data.simulation.detector": "tiny", "illumination.photons": 1e-6}), context(plugins))
    assert dark.data[:, ~gap].mean() == pytest.approx(0.5, rel=0.1)
    assert out.psize_m == (100e-6, 100e-6)


def test_near_field_and_simulation_overrides(plugins):
    p = params(**{"geometry.prop_type": "nearfield", "geometry.psize": 5e-8, "geometry.distance": 1e-3,
                  "data.simulation.illumination": {"photons": 10.0}})
    out = sim(p, context(plugins, positions=grid(step=2e-7)))
    truth = out.meta["truth"]
    assert out.propagation == "nearfield" and (np.abs(truth["probe"]) ** 2).sum() == pytest.approx(10.0)
    expected = np.abs(fresnel_propagate(truth["probe"][0] * views(truth), (5e-8, 5e-8), out.wavelength_m, 1e-3)) ** 2
    np.testing.assert_allclose(out.data, expected, rtol=1e-4, atol=1e-6 * expected.max())


def test_probe_modes_add_incoherently_and_dfile_is_saved(plugins, tmp_path):
    p = params(**{"coherence.num_probe_modes": 2, "illumination.diversity": {"power": 0.5, "noise": (1.0, 2.0)},
                  "data.dfile": str(tmp_path / "sim.ptyd"), "data.save": "append"})
    out = sim(p, context(plugins))
    truth = out.meta["truth"]
    expected = sum(np.abs(numpy_farfield(m * views(truth))) ** 2 for m in truth["probe"])
    np.testing.assert_allclose(out.data, expected, rtol=1e-4, atol=1e-6 * expected.max())
    np.testing.assert_allclose(read_ptyd(tmp_path / "sim.ptyd").frames, out.data, rtol=1e-6)
