"""Data preparation: orientation, centring, crop, rebin, frame selection, geometry conflicts."""

from types import SimpleNamespace

import numpy as np
import pytest

from difframe.errors import DataError, ParameterError
from difframe.param import Param
from difframe.ptycho.prepare import RawScan, mass_center, orient, orientation_flags, prepare

CTX = SimpleNamespace(label="s1", positions=None, plugins=None, params=None, data_type="single", dry_run=False)


def raw_with_spot(n=4, shape=(20, 30), spot=(5, 7), **kw):
    frames = np.zeros((n, *shape), np.float32)
    frames[:, spot[0], spot[1]] = 10.0
    base = dict(frames=frames, positions=np.arange(2 * n, dtype=float).reshape(n, 2) * 1e-6,
                energy_kev=8.0, distance_m=2.0, psize_m=(75e-6, 75e-6), center=spot)
    base.update(kw)
    return RawScan(**base)


def params(**data):
    return Param({"data": data, "geometry": {"energy": 6.2, "distance": 7.19, "psize": 172e-6,
                                             "prop_type": "farfield"}, "if_conflict_use_meta": True})


@pytest.mark.parametrize("code", range(8))
def test_orientation_codes_are_ptypy_binary_flags(code):
    a = np.arange(2 * 3 * 5).reshape(2, 3, 5)
    expected = a
    transpose, flipud, fliplr = bool(code & 4), bool(code & 2), bool(code & 1)
    if transpose:
        expected = np.transpose(expected, (0, 2, 1))
    if flipud:
        expected = expected[:, ::-1]
    if fliplr:
        expected = expected[:, :, ::-1]
    out, center = orient(a, (1.0, 4.0), code)
    np.testing.assert_array_equal(out, expected)
    assert orientation_flags(code) == orientation_flags((transpose, flipud, fliplr))
    # the centre follows the pixel it marks
    marked = np.zeros((3, 5)); marked[1, 4] = 1
    moved, _ = orient(marked[None], None, code)
    assert tuple(np.argwhere(moved[0])[0]) == center


def test_orientation_rejects_bad_codes():
    for bad in (8, (True, False), "x"):
        with pytest.raises(ParameterError, match="orientation"):
            orientation_flags(bad)


def test_crop_puts_the_centre_in_the_middle_and_pads_outside():
    raw = raw_with_spot(spot=(2, 3))
    out = prepare(raw, params(shape=8, center=(2, 3)), CTX)
    assert out.shape == (8, 8) and out.center == (4.0, 4.0)
    assert out.data[0, 4, 4] == 10 and out.data.sum() == 40
    assert not out.mask[0, 0] and out.mask[4, 4]  # padded pixels are invalid


def test_auto_center_finds_the_centre_of_mass():
    y, x = np.indices((40, 40))
    blob = np.exp(-((y - 17.3) ** 2 + (x - 22.6) ** 2) / 8.0)
    raw = RawScan(frames=np.repeat(blob[None], 3, 0), positions=np.zeros((3, 2)), center=None)
    cy, cx = mass_center(raw.frames, np.ones((40, 40), bool))
    assert (cy, cx) == (pytest.approx(17.3, abs=1e-6), pytest.approx(22.6, abs=1e-6))
    out = prepare(raw, params(shape=16, auto_center=True), CTX)
    assert np.unravel_index(out.data[0].argmax(), out.shape) == (8, 8)


def test_rebin_sums_blocks_and_scales_pixel_and_centre():
    raw = raw_with_spot(shape=(8, 8), spot=(4, 4))
    raw.frames[:, 4:6, 4:6] = 1.0
    out = prepare(raw, params(rebin=2), CTX)
    assert out.shape == (4, 4) and out.psize_m == (150e-6, 150e-6)
    assert out.data[0, 2, 2] == 4 and out.data.sum() == 16
    assert out.center == (1.75, 1.75)  # pixel 4 of 8 lies in the first half of binned pixel 2
    with pytest.raises(ParameterError, match="rebin"):
        prepare(raw_with_spot(shape=(9, 8)), params(rebin=2), CTX)


def test_frame_selection_and_theory_positions():
    raw = raw_with_spot(n=6)
    assert prepare(raw, params(num_frames=4), CTX).num_frames == 4
    theory = np.full((3, 2), 5e-6)
    out = prepare(raw, params(positions_theory=theory), CTX)
    assert out.num_frames == 3 and np.all(out.positions == 5e-6)
    with pytest.raises(DataError, match="min_frames=10"):
        prepare(raw, params(min_frames=10), CTX)
    with pytest.raises(DataError, match="7 positions but the data only 6"):
        prepare(raw, params(positions_theory=np.zeros((7, 2))), CTX)
    nopos = raw_with_spot(positions=None)
    with pytest.raises(DataError, match="no positions"):
        prepare(nopos, params(), CTX)
    pattern = SimpleNamespace(**{**CTX.__dict__, "positions": np.ones((4, 2))})
    assert np.all(prepare(nopos, params(), pattern).positions == 1)


def test_if_conflict_use_meta_decides_between_source_and_parameters():
    raw = raw_with_spot()
    p = params(energy=9.0)
    assert prepare(raw, p, CTX).energy_kev == 8.0
    p.if_conflict_use_meta = False
    out = prepare(raw, p, CTX)
    assert out.energy_kev == 9.0 and out.distance_m == 7.19 and out.psize_m == (172e-6, 172e-6)
    unknown = raw_with_spot(energy_kev=None)
    p = params(); p.geometry.energy = None; p.geometry.lam = 1e-10
    assert prepare(unknown, p, CTX).energy_kev == pytest.approx(12.398419843320026)


def test_faulty_positions_counts_and_crops_are_refused_up_front(monkeypatch):
    positions = np.arange(8, dtype=float).reshape(4, 2) * 1e-6
    positions[2, 1] = np.inf
    with pytest.raises(DataError, match=r"scan s1: positions of frames \[2\] are NaN or infinite"):
        prepare(raw_with_spot(positions=positions), params(), CTX)
    theory = [[0.0, 0.0], [np.nan, 1e-6]]
    with pytest.raises(DataError, match=r"positions of frames \[1\] are NaN or infinite"):
        prepare(raw_with_spot(), params(positions_theory=theory), CTX)
    negative = raw_with_spot(meta={"source": "in.h5:/frames"})
    negative.frames[3, 0, 0] = -2.0
    with pytest.raises(DataError, match=r"in.h5:/frames: frames \[3\] have negative counts on valid pixels"):
        prepare(negative, params(), CTX)
    masked = np.ones((20, 30), bool)
    masked[0, 0] = False  # the same negative pixel masked out (a detector's flag value): accepted
    assert prepare(RawScan(**{**negative.__dict__, "mask": masked}), params(), CTX).num_frames == 4
    flagged = raw_with_spot(frames=np.full((4, 20, 30), 3, np.int32))
    flagged.frames[:, 4, :] = -1  # a module gap in every frame, a bad pixel in one
    flagged.frames[2, 9, 9] = -2
    out = prepare(flagged, params(), CTX)
    assert out.mask.shape == (4, 20, 30) and (~out.mask).sum() == 4 * 30 + 1 and not out.mask[2, 9, 9]
    assert out.data[out.frame_mask()].min() == 3
    with pytest.raises(DataError, match=r"scan s1: the 4 frames hold no counts on their valid pixels"):
        prepare(raw_with_spot(frames=np.zeros((4, 20, 30))), params(), CTX)
    monkeypatch.setenv("DIFFRAME_MEMORY_LIMIT", "1M")  # 4 frames of 1000 x 1000 float32 + mask: 19 MiB
    with pytest.raises(ParameterError, match=r"scans.s1.data.shape = 1000 \(rebin 1\): the cropped frames needs "
                                             r"19.1 MiB of memory, over the budget of 1 MiB"):
        prepare(raw_with_spot(), params(shape=1000), CTX)
