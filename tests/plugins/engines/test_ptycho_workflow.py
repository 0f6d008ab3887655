"""The ptychography flow end to end: recipe -> model -> DM then ML -> .ptyr, autosaves, PNGs, movie, hooks."""

import numpy as np
import pytest

import difframe
from difframe import Run
from difframe.errors import DataError, ParameterError
from difframe.manager import PluginManager
from difframe.ptycho.ptyr import read_ptyr
from difframe.types import RecipeSpec

from ptycho_truth import SHAPE, simulate, true_probe


class Recorder:
    """A recipe serving the simulated scan, and lifecycle hooks that record what they see."""

    def __init__(self, prep, stop_at=None):
        self.prep, self.stop_at, self.events = prep, stop_at, []

    @difframe.hookimpl
    def difframe_recipes(self):
        yield RecipeSpec(name="truth", summary="simulated scan of the tests", prepare=lambda p, ctx: self.prep)

    @difframe.hookimpl
    def difframe_engine_started(self, run, engine):
        self.events.append(("started", engine))

    @difframe.hookimpl
    def difframe_iteration_finished(self, run, engine, iteration, metrics):
        self.events.append(("iteration", engine, iteration, metrics["fourier_error"]))
        if iteration == self.stop_at:
            run.request_stop()

    @difframe.hookimpl
    def difframe_engine_finished(self, run, engine, summary):
        self.events.append(("finished", engine, summary["iterations"]))


def make_run(tmp_path, recorder, guess, **extra):
    params = {
        "run": "t",
        "io": {"paths": {"home": str(tmp_path)}, "autosave": {"interval": 4}},
        "plotclient": {"dump_interval": 4},
        "scans": {"a": {"data": {"source": "truth"}, "illumination": {"model": guess}}},
        "engines": {"e1": {"name": "DM", "numiter": 6, "numiter_contiguous": 2},
                    "e2": {"name": "ML", "numiter": 6, "numiter_contiguous": 3}},
    }
    params.update(extra)
    return Run(params, plugins=PluginManager(plugins=[recorder]))


@pytest.fixture(scope="module")
def scan():
    prep, probe, truth = simulate(photons=1e5)
    guess = np.abs(true_probe(truth.psize))
    guess *= np.sqrt(prep.data.sum(axis=(1, 2)).mean() / (guess**2).sum())
    return prep, probe, truth, guess


def test_dm_then_ml_writes_ptyr_autosaves_plots_movie_and_fires_hooks(tmp_path, scan):
    prep, probe, truth, guess = scan
    rec = Recorder(prep)
    results = make_run(tmp_path, rec, guess).run()
    assert results["reconstruction"] == tmp_path / "recons/t/t_ML_0012.ptyr"
    r = read_ptyr(results["reconstruction"])
    assert [i["engine"] for i in r.iter_info] == ["DM"] * 6 + ["ML"] * 6
    assert [i["iterations"] for i in r.iter_info] == list(range(1, 13))
    # counted within each engine and against its total too, as ptypy's records are
    assert [(i["iteration"], i["numiter"]) for i in r.iter_info] == [(k, 6) for k in range(1, 7)] * 2
    assert r.objects["a"]["data"].dtype == np.complex64 and r.probes["a"]["data"].shape == (1, *SHAPE)
    np.testing.assert_array_equal(r.positions["a"], prep.positions)
    assert r.params["engines"]["e2"]["name"] == "ML" and r.params["run"] == "t"
    # hooks: started/finished per engine in order, every iteration once, numbered across engines
    assert [e for e in rec.events if e[0] != "iteration"] == [("started", "e1"), ("finished", "e1", 6),
                                                               ("started", "e2"), ("finished", "e2", 6)]
    assert [e[2] for e in rec.events if e[0] == "iteration"] == list(range(1, 13))
    # autosave when a block crosses a multiple of 4: blocks end at 2, 4, 6 (DM) and 9, 12 (ML), plots likewise, a GIF movie
    assert sorted(p.name for p in (tmp_path / "dumps/t").iterdir()) == ["t_DM_0004.ptyr", "t_ML_0009.ptyr",
                                                                         "t_ML_0012.ptyr"]
    pngs = sorted(p.name for p in (tmp_path / "plots/t").glob("*.png"))
    assert pngs == ["t_DM_0004.png", "t_ML_0009.png", "t_ML_0012.png"]
    from PIL import Image

    movie = Image.open(results["movie"])
    assert movie.format == "GIF" and movie.n_frames == 4  # the last picture opens the movie, then all in order
    frames = []
    for n in (0, 3):
        movie.seek(n)
        frames.append(np.asarray(movie.convert("RGB")))
    np.testing.assert_array_equal(frames[0], frames[1])


def test_engines_iterate_with_blas_on_one_thread(tmp_path, scan):
    """OpenBLAS's threads spin after each call and slow the engines' numba and FFTW threads
    (difframe.fft.blas_one_thread): a run's engines iterate with BLAS on one thread, lifted after the run."""
    import threadpoolctl

    def blas_threads():
        return {lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"}

    prep, probe, truth, guess = scan
    seen = []

    class Watcher(Recorder):
        @difframe.hookimpl
        def difframe_iteration_finished(self, run, engine, iteration, metrics):
            seen.append(blas_threads())

    before = blas_threads()
    make_run(tmp_path, Watcher(prep), guess, plotclient={"dump_interval": None}).run()
    assert len(seen) == 12 and all(threads <= {1} for threads in seen)
    assert blas_threads() == before


def test_stop_request_ends_after_the_current_block(tmp_path, scan):
    prep, probe, truth, guess = scan
    rec = Recorder(prep, stop_at=3)
    results = make_run(tmp_path, rec, guess, plotclient={"dump_interval": None}).run()
    assert [e[2] for e in rec.events if e[0] == "iteration"] == [1, 2, 3, 4]  # block of 2 finishes
    assert "plot" not in results
    assert len(read_ptyr(results["reconstruction"]).iter_info) == 4
    # the stop came during DM: ML never starts and the result is named after DM
    assert results["reconstruction"].name == "t_DM_0004.ptyr"
    assert [e for e in rec.events if e[0] != "iteration"] == [("started", "e1"), ("finished", "e1", 4)]


def test_resume_from_ptyr_continues_where_it_stopped(tmp_path, scan):
    prep, probe, truth, guess = scan
    quiet = {"dump_interval": None}
    first = make_run(tmp_path / "one", Recorder(prep), guess, plotclient=quiet).run()["reconstruction"]
    rec = Recorder(prep)
    recon = {"model": "recon", "recon": {"rfile": str(first)}}
    make_run(tmp_path / "two", rec, guess, scans={"a": {"data": {"source": "truth"}, "illumination": recon,
                                                         "sample": recon}}, plotclient=quiet).run()
    fresh = Recorder(prep)
    make_run(tmp_path / "three", fresh, guess, plotclient=quiet).run()
    resumed_first = [e[3] for e in rec.events if e[0] == "iteration"][0]
    fresh_first = [e[3] for e in fresh.events if e[0] == "iteration"][0]
    assert resumed_first < 0.5 * fresh_first


def test_not_a_ptyr_and_bad_sharing_are_named(tmp_path, scan):
    import h5py

    bad = tmp_path / "x.ptyr"
    with h5py.File(bad, "w") as f:
        f["data"] = np.zeros(3)
    with pytest.raises(DataError, match="not a .ptyr"):
        read_ptyr(bad)
    (tmp_path / "y.ptyr").write_bytes(b"not hdf5 at all")
    with pytest.raises(DataError, match="y.ptyr"):
        read_ptyr(tmp_path / "y.ptyr")
    prep, probe, truth, guess = scan
    run = make_run(tmp_path, Recorder(prep), guess,
                   scans={"a": {"data": {"source": "truth"}, "sharing": {"object_share_with": "nope"}}})
    with pytest.raises(ParameterError, match="scans.a.sharing.object_share_with"):
        run.run()
    assert not (tmp_path / "recons").exists()


def test_plot_command_draws_a_ptyr_and_names_a_bad_one(tmp_path, scan, capsys):
    from PIL import Image

    from difframe.cli import main
    from difframe.param import Param
    from difframe.ptycho.ptyr import iter_info_entry, write_ptyr

    from ptycho_truth import start_model

    prep, probe, truth, guess = scan
    model = start_model(prep, np.concatenate([guess, 0.3 * guess]))
    info = [iter_info_entry(i, "DM", 0.1, {"fourier_error": 1.0 / i, "likelihood": 2.0 / i, "exit_change": 0.5})
            for i in range(1, 6)]
    write_ptyr(tmp_path / "r.ptyr", model, Param(run="r"), {"run": "r", "iter_info": info})
    assert main(["plot", str(tmp_path / "r.ptyr"), "-o", str(tmp_path / "r.png")]) == 0
    image = Image.open(tmp_path / "r.png")
    assert image.format == "PNG" and image.size[0] > image.size[1] > 100
    (tmp_path / "bad.ptyr").write_text("nope")
    assert main(["plot", str(tmp_path / "bad.ptyr")]) == 1
    assert "bad.ptyr" in capsys.readouterr().err
    assert not (tmp_path / "bad.png").exists()


# ------------------------------------------------------------- progress, locks, stale temporaries


def test_progress_lines_off_a_terminal_carry_engine_iteration_and_the_deviance_on_file(tmp_path, scan, caplog,
                                                                                     monkeypatch):
    import re

    from difframe import progress

    monkeypatch.setattr(progress, "INTERVAL", 0.0)  # a line at every block instead of every 10 s
    prep, probe, truth, guess = scan
    caplog.set_level("INFO", logger="difframe.progress")
    engines = {"e1": {"name": "DM", "numiter": 4, "numiter_contiguous": 2},
               "e2": {"name": "ML", "numiter": 3, "numiter_contiguous": 3}}
    results = make_run(tmp_path, Recorder(prep), guess, plotclient={"dump": False}, engines=engines).run()
    lines = [r.getMessage() for r in caplog.records if r.name == "difframe.progress"]
    assert lines[0].startswith("run t: ptychography of scan a (truth) with DM x 4 then ML x 3")
    assert str(tmp_path / "recons" / "t") in lines[0]
    assert lines[-1].startswith("run t done in") and str(results["reconstruction"]) in lines[-1]
    deviance = [i["metrics"]["deviance"] for i in read_ptyr(results["reconstruction"]).iter_info]
    seen = []
    for line in lines:
        m = re.fullmatch(r"(DM \(e1\)|ML \(e2\)): (\d+)/([34]) \[.*<.*, +[\d.]+(?:it/s|s/it), deviance=(\S+)\]",
                         line)
        if m:
            engine, k = m.group(1)[:2], int(m.group(2))
            seen.append((engine, k, int(m.group(3))))
            total = k + (4 if engine == "ML" else 0)
            assert float(m.group(4)) == pytest.approx(deviance[total - 1], rel=1e-2)  # shown to 3 digits
    # one line per block, none repeated: blocks end at 2, 4 (DM, 2 per block) and 3 (ML)
    assert seen == [("DM", 2, 4), ("DM", 4, 4), ("ML", 3, 3)]


def test_quiet_run_reports_no_progress(tmp_path, scan, caplog):
    prep, probe, truth, guess = scan
    caplog.set_level("DEBUG")
    make_run(tmp_path, Recorder(prep), guess, plotclient={"dump": False}, verbose_level=0,
             engines={"e1": {"name": "DM", "numiter": 2}}).run()
    assert not [r for r in caplog.records if r.name == "difframe.progress"]


def _pid_of_a_finished_process() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_second_run_refuses_while_a_live_run_holds_the_lock_and_takes_over_a_dead_ones(tmp_path, scan):
    import json
    import os
    import socket

    from difframe.errors import UsageError

    prep, probe, truth, guess = scan
    lock = tmp_path / ".difframe-t.lock"
    short = {"plotclient": {"dump": False}, "engines": {"e1": {"name": "DM", "numiter": 2}}}
    lock.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "run": "t",
                                "started": "2026-01-01T00:00:00", "command": "difframe run first.toml"}))
    with pytest.raises(UsageError, match=rf"run 't' is already running .*pid {os.getppid()} .*first.toml"):
        make_run(tmp_path, Recorder(prep), guess, **short).run()
    assert not (tmp_path / "recons").exists() and lock.exists()
    # another run name writes other files: it runs
    other = make_run(tmp_path, Recorder(prep), guess, **short, run="u").run()
    assert other["reconstruction"].name == "u_DM_0002.ptyr"
    # the holder died without releasing: taken over, and released at the end
    lock.write_text(json.dumps({"pid": _pid_of_a_finished_process(), "host": socket.gethostname(), "run": "t"}))
    assert make_run(tmp_path, Recorder(prep), guess, **short).run()["reconstruction"].exists()
    assert not lock.exists()


def test_stale_part_files_of_the_runs_outputs_are_removed_at_the_next_start(tmp_path, scan):
    prep, probe, truth, guess = scan
    stale = [tmp_path / "recons/t/.t_DM_0002.ptyr.k3j9x_1.part", tmp_path / "dumps/t/.t_DM_0004.ptyr.abc.part",
             tmp_path / "plots/t/.t_DM_0002.png.q1.part"]
    kept = [tmp_path / "recons/t/.notes.txt.zz.part",  # not a file this run writes
            tmp_path / "recons/u/.u_DM_0002.ptyr.x.part"]  # another run's
    for path in stale + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    make_run(tmp_path, Recorder(prep), guess, plotclient={"dump": False},
             engines={"e1": {"name": "DM", "numiter": 2}}).run()
    assert [p.exists() for p in stale] == [False] * 3 and all(p.exists() for p in kept)


def _typed_layout(path) -> dict:
    """node name -> (ptypy type attribute, shape, dtype) of every node of a typed HDF5 file."""
    import h5py

    nodes = {}
    with h5py.File(path) as f:
        f.visititems(lambda name, node: nodes.__setitem__(
            name, (node.attrs.get("type"), getattr(node, "shape", None), getattr(node, "dtype", None))))
    return nodes


def test_autosaves_hold_the_whole_history_in_the_layout_of_the_final_file(tmp_path, scan):
    import h5py

    prep, probe, truth, guess = scan
    engines = {"e1": {"name": "DM", "numiter": 4, "numiter_contiguous": 2},
               "e2": {"name": "ML", "numiter": 3, "numiter_contiguous": 3}}
    results = make_run(tmp_path, Recorder(prep), guess, plotclient={"dump": False}, engines=engines,
                       io={"paths": {"home": str(tmp_path)}, "autosave": {"interval": 3}}).run()
    final = read_ptyr(results["reconstruction"])
    saves = {int(p.stem[-4:]): p for p in (tmp_path / "dumps/t").glob("*.ptyr")}
    assert sorted(saves) == [4, 7]  # blocks end at 2, 4 (DM) and 7 (ML): history appended at 4 and 7
    for count, path in saves.items():
        history = read_ptyr(path).iter_info
        assert len(history) == count
        for got, want in zip(history, final.iter_info):
            assert got.keys() == want.keys()
            for key in want:
                np.testing.assert_array_equal(got[key], want[key])
    # the last autosave holds the final state: the same typed nodes as write_ptyr's file, the same values
    last, whole = _typed_layout(saves[7]), _typed_layout(results["reconstruction"])
    only_final = {k for k in whole if k.startswith("content/runtime/probe_mode_powers")}
    assert last.keys() == whole.keys() - only_final
    assert all(last[k] == whole[k] for k in last)
    with h5py.File(saves[7]) as a, h5py.File(results["reconstruction"]) as b:
        for key in ("content/obj/a/data", "content/probe/a/data", "content/positions/a", "entry/object_a/phase"):
            np.testing.assert_array_equal(a[key][()], b[key][()])
        assert a["header/description"][()] == b"difframe autosave"
