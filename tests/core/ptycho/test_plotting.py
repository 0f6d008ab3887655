"""Pictures that read right: phase map, complex colour and its key, scale bars, log errors with engine switches, movies."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from matplotlib.colors import rgb_to_hsv
from matplotlib.figure import Figure
from PIL import Image

from difframe.errors import DataError
from difframe.ptycho import plotting

PSIZE = np.array([1.31e-7, 1.31e-7])


def _storage(data, psize=PSIZE):
    return SimpleNamespace(data=np.asarray(data, dtype=np.complex64), psize=psize)


def _object(phase_low, phase_high, amplitude=1.0, shape=(40, 48)):
    ramp = np.linspace(phase_low, phase_high, shape[1])[None, :] * np.ones(shape[0])[:, None]
    stripes = 0.5 + 0.4 * (np.arange(shape[1]) // 6 % 2)[None, :] * np.ones(shape[0])[:, None]
    return _storage((amplitude * stripes * np.exp(1j * ramp))[None])


def _probe(amplitude=1.0):
    y, x = np.mgrid[-8:8, -8:8]
    return _storage((amplitude * np.exp(-(x**2 + y**2) / 20) * np.exp(0.3j * x))[None])


def _records(engines=(("DM", 5), ("ML", 5)), last=4e-5):
    records, total = [], 0
    n_all = sum(n for _, n in engines)
    for engine, n in engines:
        for k in range(1, n + 1):
            total += 1
            value = last ** ((total - 1) / (n_all - 1))  # 1 ... last, geometric
            records.append({"engine": engine, "iteration": k, "iterations": total, "error": np.array([value, value / 2, np.nan])})
    return records


def test_phase_is_sequential_over_its_range_and_cyclic_only_when_it_spans_two_pi():
    narrow = plotting.draw({"S": _object(-0.85, 0.77)}, {"S": _probe()}, [])
    image = narrow.axes[1].images[0]
    assert image.get_cmap().name == "viridis"
    low, high = image.get_clim()
    assert -0.851 <= low < -0.8 and 0.72 < high <= 0.771  # the shown range, not [-pi, pi]
    wrapped = plotting.draw({"S": _object(0, 4 * np.pi)}, {"S": _probe()}, [])
    image = wrapped.axes[1].images[0]
    assert image.get_cmap().name == "twilight" and image.get_clim() == pytest.approx((-np.pi, np.pi))


def test_complex_colour_decodes_to_phase_and_amplitude_and_the_wheel_says_so():
    theta = np.linspace(-3, 3, 13)
    amplitude = np.linspace(0.1, 1.0, 13)
    hsv = rgb_to_hsv(plotting.complex_rgb(amplitude * np.exp(1j * theta)))
    np.testing.assert_allclose(hsv[:, 0] * 2 * np.pi - np.pi, theta, atol=1e-6)
    np.testing.assert_allclose(hsv[:, 2], amplitude / amplitude.max(), atol=1e-6)
    fig = Figure()
    ax = fig.add_subplot()
    plotting.colour_wheel(ax)
    wheel = ax.images[0].get_array()  # origin lower, extent [-1, 1]: row 0 is y = -1
    size = wheel.shape[0]
    labels = {t.get_text(): t.get_position() for t in ax.texts}
    for text, angle in (("0", 0.0), ("\u03c0/2", np.pi / 2), ("-\u03c0/2", -np.pi / 2)):
        x, y = labels[text]
        assert np.arctan2(y, x) == pytest.approx(angle)  # the label sits where that phase is on the wheel
        row = int(round((0.8 * np.sin(angle) + 1) / 2 * (size - 1)))
        col = int(round((0.8 * np.cos(angle) + 1) / 2 * (size - 1)))
        h, s, v = rgb_to_hsv(wheel[row, col, :3])
        assert h * 2 * np.pi - np.pi == pytest.approx(angle, abs=0.05) and v == pytest.approx(0.8, abs=0.03)
    assert wheel[0, 0, 3] == 0 and wheel[size // 2, size // 2, 3] == 1  # outside the disc transparent


def _bars(ax):
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    return [a for a in ax.artists if isinstance(a, AnchoredSizeBar)]


def test_every_image_has_a_scale_bar_in_physical_units():
    fig = plotting.draw({"S": _object(-0.5, 0.5)}, {"S": _storage(np.ones((2, 16, 16)), PSIZE * 2)}, [])
    images = [ax for ax in fig.axes if ax.images and ax.get_title().startswith(("object", "phase", "probe S"))]
    assert len(images) == 4
    for ax in images:
        (bar,) = _bars(ax)
        width_px = ax.images[0].get_array().shape[1]
        rect = bar.size_bar.get_children()[0]
        label = bar.txt_label.get_text()
        number, unit = label.split()
        metres = float(number) * {"nm": 1e-9, "\u00b5m": 1e-6}[unit]
        psize = PSIZE[1] * (2 if ax.get_title().startswith("probe") else 1)
        assert rect.get_width() == pytest.approx(metres / psize)  # the bar is as long as its label says
        assert 0.1 * width_px <= rect.get_width() <= 0.25 * width_px
    assert [plotting.length_label(v) for v in (5e-9, 2e-7, 1e-6, 5e-5, 2e-3)] == \
        ["5 nm", "200 nm", "1 \u00b5m", "50 \u00b5m", "2 mm"]
    bare = plotting.draw({"S": np.ones((1, 8, 8), complex)}, {"S": np.ones((1, 8, 8), complex)}, [])
    assert not any(_bars(ax) for ax in bare.axes)  # no pixel size known: no bar rather than a wrong one


def test_errors_on_a_log_axis_with_engine_switches_marked():
    fig = Figure()
    ax = fig.add_subplot()
    records = _records((("DM", 5), ("DM", 3), ("ML", 4)))
    plotting.draw_errors(ax, records)
    assert ax.get_yscale() == "log"
    curve = ax.lines[0].get_ydata()
    assert curve.min() == pytest.approx(4e-5) and curve.max() == 1.0  # the final error is shown, not clipped to 0
    switches = sorted(line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == ":")
    assert switches == [5.5, 8.5]  # a second DM engine is a switch too (its count restarts)
    assert [t.get_text().strip() for t in ax.texts] == ["DM", "DM", "ML"]
    assert plotting.engine_segments(records) == [(1, "DM"), (6, "DM"), (9, "ML")]


def test_movie_frames_share_the_last_colour_limits_and_open_on_the_named_state(tmp_path):
    states = [(1.0, "t: DM, iteration 2"), (3.0, "t: ML, iteration 4")]
    frames = []
    for k, (amplitude, title) in enumerate(states):
        objects = {"S": _object(-0.5, 0.5, amplitude)}
        frames.append(plotting.save_png(tmp_path / f"f{k}.png", objects, {"S": _probe(amplitude)},
                                        _records()[: 5 * (k + 1)], title))
    assert all(Image.open(f).format == "PNG" for f in frames)
    movie = plotting.make_movie(frames, tmp_path / "t_ML.mpg")
    fixed = plotting.limits(frames[-1].picture)
    for frame in frames:
        fig = plotting.draw_picture(frame.picture, fixed)
        assert fig.axes[0].images[0].get_clim() == pytest.approx(fixed["amplitude"]["S"])
        assert fig.get_suptitle() == frame.picture.title  # engine and iteration on every frame
    gif = Image.open(movie)
    assert gif.format == "GIF" and gif.n_frames == 3
    shown = []
    for n in range(3):
        gif.seek(n)
        shown.append(np.asarray(gif.convert("L"), dtype=float))
    np.testing.assert_array_equal(shown[0], shown[2])  # the first frame is the final state the name says
    left = slice(shown[0].shape[0] // 5, None), slice(0, shown[0].shape[1] // 6)  # the amplitude panel
    assert shown[1][left].mean() < 0.8 * shown[2][left].mean()  # a third of the amplitude looks darker
    with pytest.raises(DataError, match="colour limits"):
        plotting.make_movie([Path(frames[0])], tmp_path / "plain.gif")


def test_a_ptyr_read_back_is_drawn_with_its_own_pixel_sizes(tmp_path):
    from difframe.param import Param
    from difframe.ptycho.ptyr import read_ptyr, write_ptyr

    obj, probe = _object(-0.3, 0.3), _storage(np.ones((1, 16, 16)), np.array([5e-8, 5e-8]))
    obj.origin, probe.origin, obj.energy_kev, probe.energy_kev = np.zeros(2), np.zeros(2), 6.2, 6.2
    obj.center = probe.center = np.zeros(2)
    model = SimpleNamespace(objects={"S": obj}, probes={"S": probe}, scans=[])
    write_ptyr(tmp_path / "r.ptyr", model, Param({}), {"iter_info": _records()})
    rec = read_ptyr(tmp_path / "r.ptyr")
    fig = plotting.draw(rec.objects, rec.probes, rec.iter_info)
    amplitude, probe_ax = fig.axes[0], next(ax for ax in fig.axes if ax.get_title().startswith("probe S"))
    assert _bars(amplitude)[0].txt_label.get_text() == "1 \u00b5m"  # 48 px x 131 nm = 6.3 um wide
    assert _bars(probe_ax)[0].txt_label.get_text() == "100 nm"  # 16 px x 50 nm = 800 nm wide
    errors = next(ax for ax in fig.axes if ax.get_title().startswith("errors"))
    assert errors.get_yscale() == "log" and len(errors.lines) == 3  # Fourier error, deviance, the DM -> ML switch
