"""Reading frames in steps with a progress bar (difframe.ptycho.prepare.load_frames): the same frames and masks
as one read, errors naming the source's frame indices, one bar tick per step on rank 0 through the recipes, and
silence at verbose_level 0."""

from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from difframe import progress
from difframe.errors import DataError
from difframe.param import Param
from difframe.parallel import Ranks
from difframe.plugins.recipes.hdf5 import prepare as hdf5_recipe
from difframe.plugins.recipes.ptyd import prepare as ptyd_recipe
from difframe.ptycho import prepare as prep
from difframe.ptycho.data import PreparedData
from difframe.ptycho.ptyd import write_ptyd
from difframe.ptycho.raw import FrameSource, RawScan, load_share

SHAPE = (16, 20)
#: the scans' geometry (the recipes' files give none)
GEOMETRY = {"energy": 6.2, "distance": 1.0, "psize": 172e-6}


class Bars:
    """A Progress stand-in recording each bar's description, total and ticks."""

    def __init__(self):
        self.made = []

    def bar(self, desc, total=None, unit="it"):
        record = {"desc": desc, "total": total, "unit": unit, "ticks": [], "closed": False}
        self.made.append(record)
        return SimpleNamespace(update=lambda n=1, **m: record["ticks"].append(n),
                               close=lambda: record.update(closed=True))


def _source(frames, masks=None):
    reads = []

    def read(start, stop):
        reads.append((start, stop))
        return frames[start:stop].copy(), None if masks is None else masks[start:stop].copy()

    return RawScan(frames=FrameSource(frames.shape, read), mask=None if masks is not None else np.ones(SHAPE, bool),
                   meta={"source": "test.h5"}), reads


@pytest.fixture
def small_steps(monkeypatch):
    """Steps of 3 frames of 16 x 20 (4 bytes a pixel)."""
    monkeypatch.setattr(prep, "LOAD_STEP_BYTES", 3 * 4 * SHAPE[0] * SHAPE[1])


def test_steps_read_what_one_read_gives_and_tick_the_bar(small_steps):
    rng = np.random.default_rng(1)
    frames = rng.poisson(20, (11, *SHAPE)).astype(np.int32)
    frames[4, 2, 3] = -1  # a detector flag: masked in that frame only
    raw, reads = _source(frames)
    bars = Bars()
    got, mask = prep.load_frames(raw, slice(1, 11), "a", bars)
    want, want_mask = load_share(raw, slice(1, 11), "a")
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(mask, want_mask)
    assert mask.shape == (10, *SHAPE) and not mask[3, 2, 3] and mask[[0, 1, 2, 4]].all()
    assert reads[:4] == [(1, 4), (4, 7), (7, 10), (10, 11)]
    (bar,) = bars.made
    assert bar["total"] == 10 and bar["ticks"] == [3, 3, 3, 1] and bar["closed"] and bar["unit"] == "frame"
    flagless = rng.poisson(20, (7, *SHAPE)).astype(np.float32)
    got, mask = prep.load_frames(_source(flagless)[0], slice(0, 7), "a", None)
    np.testing.assert_array_equal(got, flagless)
    assert mask.shape == SHAPE and mask.all()  # one (H, W) mask when every step gave the same


def test_per_frame_masks_and_a_single_step(small_steps):
    rng = np.random.default_rng(2)
    frames = rng.poisson(5, (8, *SHAPE)).astype(np.float32)
    masks = rng.random((8, *SHAPE)) > 0.1
    got, mask = prep.load_frames(_source(frames, masks)[0], slice(0, 8), "a", Bars())
    np.testing.assert_array_equal(mask, masks)
    np.testing.assert_array_equal(got, frames)
    bars = Bars()
    prep.load_frames(_source(frames)[0], slice(2, 5), "a", bars)  # one step: one read, no bar
    assert bars.made == []


def test_a_bad_frame_is_named_by_its_index_in_the_source(small_steps):
    frames = np.ones((9, *SHAPE), np.float32)
    frames[7, 0, 0] = np.nan
    bars = Bars()
    with pytest.raises(DataError, match=r"test\.h5: frames \[7\] contain NaN"):
        prep.load_frames(_source(frames)[0], slice(0, 9), "a", bars)
    assert bars.made[0]["closed"] and sum(bars.made[0]["ticks"]) == 6  # the two good steps, then the bar closed


def _ctx(verbose_level, rank=0):
    ranks = Ranks()
    ranks.rank, ranks.size = rank, 1 if rank == 0 else 2
    return SimpleNamespace(label="t", positions=None, plugins=None, params=Param(verbose_level=verbose_level),
                           data_type="single", dry_run=True, ranks=ranks)


def test_the_recipes_report_reading_on_rank_0_only_and_not_when_quiet(tmp_path, small_steps, caplog, monkeypatch):
    """hdf5 and ptyd recipes (as cxi and stack, through prepare): plain lines on difframe.progress off a
    terminal at verbose_level 1, none at 0 (-q) and none on another rank."""
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: False, raising=False)
    monkeypatch.setattr(progress, "INTERVAL", 0.0)
    rng = np.random.default_rng(3)
    frames = rng.poisson(30, (10, *SHAPE)).astype(np.float32)
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["entry/data/data"], f["xy"] = frames, rng.uniform(-1e-6, 1e-6, (10, 2))
    write_ptyd(tmp_path / "s.ptyd", PreparedData(label="t", data=frames, mask=np.ones(SHAPE, bool),
                                                 positions=rng.uniform(-1e-6, 1e-6, (10, 2)), energy_kev=6.2,
                                                 distance_m=1.0, psize_m=(172e-6, 172e-6), center=(8, 10)))
    scans = {"hdf5": {"data": {"source": "hdf5", "recipe": {"hdf5": {"file": str(tmp_path / "s.h5"),
                                                                     "positions": "xy"}}}, "geometry": GEOMETRY},
             "ptyd": {"data": {"dfile": str(tmp_path / "s.ptyd")}, "geometry": GEOMETRY}}
    for name, recipe in (("hdf5", hdf5_recipe), ("ptyd", ptyd_recipe)):
        for level, rank, shown in ((1, 0, True), (0, 0, False), (1, 1, False)):
            caplog.clear()
            with caplog.at_level("INFO", logger="difframe.progress"):
                out = recipe(scans[name], _ctx(level, rank))
            if rank == 0:
                np.testing.assert_array_equal(out.data.sum(axis=0), frames.sum(axis=0))
            lines = [r.getMessage() for r in caplog.records if r.name == "difframe.progress"]
            if shown:
                assert lines and lines[-1].startswith("scan t: reading frames: 10/10"), (name, lines)
            else:
                assert not lines, (name, level, rank, lines)
