"""Nodes that had no test of their own (docs/parameters-status.md), each against what its doc says.

io.paths.plots / io.paths.movie (format strings under io.paths.home), scan.data.chunk_format (the link files'
names), scan.data.rebin (pixel blocks summed, pixel size multiplied), scan.data.recipe.sim.frame_shape (frame side
without scan.data.shape) and scan.illumination.aperture.diffuser (phase noise of the given rms inside the aperture).
"""

from types import SimpleNamespace

import numpy as np
import pytest

from difframe import Run
from difframe.param import Param
from difframe.ptycho.data import PreparedData
from difframe.ptycho.models import aperture
from difframe.ptycho.prepare import RawScan, prepare
from difframe.ptycho.ptyd import read_ptyd, write_ptyd
from difframe.ptycho.workflow import output_path


def test_plot_and_movie_paths_are_format_strings_under_home(tmp_path):
    run = Run({"run": "x", "io": {"paths": {"home": str(tmp_path)}}})
    assert output_path(run, "plots", "DM", 20) == tmp_path / "plots/x/x_DM_0020.png"
    assert output_path(run, "movie", "ML", 7) == tmp_path / "plots/x/x_ML.mpg"
    run = Run({"run": "x", "io": {"paths": {"home": str(tmp_path), "plots": "pics/%(engine)s-%(iterations)d.png",
                                            "movie": str(tmp_path / "abs" / "%(run)s.gif")}}})
    assert output_path(run, "plots", "ML", 7) == tmp_path / "pics/ML-7.png"
    assert output_path(run, "movie", "ML", 7) == tmp_path / "abs/x.gif"  # an absolute path stays itself


def test_chunk_format_names_the_linked_chunk_files(tmp_path):
    frames = np.arange(5 * 4 * 6, dtype=np.float32).reshape(5, 4, 6)
    prep = PreparedData(label="s", data=frames, mask=np.ones((4, 6), bool), positions=np.zeros((5, 2)),
                        energy_kev=6.2, distance_m=1.0, psize_m=(1e-4, 1e-4), center=(2.0, 3.0))
    path = write_ptyd(tmp_path / "d.ptyd", prep, save="link", chunk_format=".part%03d", frames_per_chunk=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.ptyd", "d.ptyd.part000", "d.ptyd.part001",
                                                         "d.ptyd.part002"]
    np.testing.assert_array_equal(read_ptyd(path).frames, frames)


def test_rebin_sums_pixel_blocks_and_multiplies_the_pixel_size():
    rng = np.random.default_rng(1)
    frames = rng.poisson(5.0, (3, 20, 30)).astype(np.float32)
    raw = RawScan(frames=frames, positions=np.zeros((3, 2)), energy_kev=8.0, distance_m=2.0, psize_m=(75e-6, 75e-6),
                  center=(10, 15))
    p = Param({"data": {"rebin": 2, "auto_center": False}, "if_conflict_use_meta": True,
               "geometry": {"energy": 6.2, "distance": 7.19, "psize": 172e-6, "prop_type": "farfield"}})
    ctx = SimpleNamespace(label="s", positions=None, plugins=None, params=None, data_type="single", dry_run=False)
    out = prepare(raw, p, ctx, save=False)
    np.testing.assert_array_equal(out.data, frames.reshape(3, 10, 2, 15, 2).sum(axis=(2, 4)))
    assert out.psize_m == (150e-6, 150e-6)


def test_sim_frame_shape_is_the_side_without_data_shape(tmp_path):
    scan = {"data": {"source": "sim", "recipe": {"sim": {"frame_shape": 24}}},
            "xy": {"type": "raster", "raster": {"nx": 2, "ny": 2}}}
    run = Run({"run": "f", "io": {"paths": {"home": str(tmp_path)}}, "scans": {"s": scan}})
    out = run.plugins.get("recipe", "sim").prepare(run.params.scans.s, run.scan_context("s"))
    assert out.data.shape == (4, 24, 24)


def test_diffuser_is_phase_noise_of_the_given_rms_inside_the_aperture():
    shape, psize = (128, 128), (1e-7, 1e-7)
    p = {"form": "rect", "edge": 0, "central_stop": None, "offset": 0.0, "diffuser": (0.3, 2.0)}
    plain = aperture(shape, psize, {**p, "diffuser": None}, np.random.default_rng(0), (8e-6, 8e-6))
    rough = aperture(shape, psize, p, np.random.default_rng(0), (8e-6, 8e-6))
    inside = np.abs(plain) > 0.99
    np.testing.assert_allclose(np.abs(rough), np.abs(plain), atol=1e-12)  # phase only
    phase = np.angle(rough[inside])
    assert np.std(phase) == pytest.approx(0.3, rel=0.2)
