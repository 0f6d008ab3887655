"""The tds2el flow end to end on a small synthetic scan: input files -> harvest file -> dry run / fit."""

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import harvest_support as hs
from difframe.errors import UsageError
from difframe.manager import PluginManager
from difframe.run import Run
from difframe.tds.config import read_tds_config as load_input

ROOT = Path(__file__).resolve().parents[3]
VENV_BIN = ROOT / ".venv" / "bin"

CONF = """\
lmbda = 0.7
dist = 60.0
pixel_size = 1.2
det_origin_X = 20.0
det_origin_Y = 30.0
AA = BB = CC = 4.212
angular_step = 1.0
phi = -10.0
r1 = 12.0
r2 = -7.0
r3 = 31.0
DeltaQ_max = 0.3
DeltaQ_min = 0.05
load_from_file = None
save_to_file = "harvest_spots.h5"
threshold = 500000.0
if False:
    collectSpots = [[9, 9, 9]]
    file_maxima = "tagged_selectedpeaks.p"
if True:
    collectSpots = [[-1, -1, 1], [-2, -2, -1], [0, 0, -1], [1, 1, 1]]
REPLICA_COLLECTION = 0
"""

INPUT = """\
conf_file = "tds2el.par"
filter_file = "filter.edf"
images_prefix = "scan_"
images_postfix = ".cbf"
ascii_generators = "1~,4(z),3(111)"
normalisation_file = "normalisation.dat"
"""


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tds2el")
    files = hs.write_scan(folder)
    hs.write_mask(folder)
    hs.write_normalisation(folder, [f.name for f in files])
    (folder / "tds2el.par").write_text(CONF)
    (folder / "input.par").write_text(INPUT)
    return folder


def run_tds(tds, plugins=None) -> dict:
    return Run({"tds": tds}, plugins=plugins).run()


def test_input_files_give_the_harvest_of_the_library(experiment):
    from difframe.tds.config import geometry_of
    from difframe.tds.harvest import HarvestOptions, harvest, load_harvest

    tds = load_input(experiment / "input.par")
    assert tds["collectSpots"][0] == [-1, -1, 1]
    results = run_tds(tds)
    path = experiment / "harvest_spots.h5"
    assert results == {"harvest": str(path)}
    written = load_harvest(path)
    geometry = geometry_of(tds)
    direct = harvest(geometry, sorted(experiment.glob("scan_*.cbf")),
                     HarvestOptions(delta_q_min=0.05, delta_q_max=0.3, threshold=5e5, spots=np.array(hs.SPOTS),
                                    mask_file=str(experiment / "filter.edf"),
                                    normalisation_file=str(experiment / "normalisation.dat")))
    np.testing.assert_array_equal(written.Q, direct.Q)
    np.testing.assert_array_equal(written.intensity, direct.intensity)
    assert written.attrs["input_files"][0].endswith("scan_0000.cbf") and len(written.attrs["input_files"]) == 40


def test_dry_run_stops_with_the_structure_then_fit_writes_results(experiment, tmp_path):
    tds = load_input(experiment / "input.par")
    if not (experiment / "harvest_spots.h5").exists():
        run_tds(tds)
    tds.update(load_from_file=str(experiment / "harvest_spots.h5"), save_to_file=None, show_hkls=True)
    assert "   0    0   -1" in run_tds(tds)["hkls"]  # show_hkls lists and stops
    tds.update(fitSpots=True, show_hkls=False)
    with pytest.raises(UsageError, match=r"CGUESS is missing(.|\n)*1.000000 A44(.|\n)*A11, A12, A44"):
        run_tds(tds)
    tds.update(CGUESS={"C11": [297.0, 297.0, 297.0], "A12": [95.0, 0.0, 300.0], "A44": [150.0, 1.0, 400.0]},
               collectSpots=[[0, 0, -1], [1, 1, 1]], output_directory=str(tmp_path), show_hkls=False)
    events = []

    class Watcher:
        from difframe import hookimpl

        @hookimpl
        def difframe_iteration_finished(self, run, engine, iteration, metrics):
            events.append((engine, iteration, metrics["cost"]))

    plugins = PluginManager()
    plugins.add_plugin(Watcher(), name="watcher")
    results = run_tds(tds, plugins)
    assert "C12/C11" in results["report"]
    assert Path(results["json"]).parent == tmp_path and (tmp_path / "parametri.txt").exists()
    import json

    fitted = json.loads(Path(results["json"]).read_text())
    assert fitted["spots"] == 2 and fitted["fixed"] == ["C11"]
    # a cubic cell: the IEEE setting is difframe's frame, the same tensor and sigma
    assert fitted["ieee"]["same_as_fit_frame"] and "IEEE setting" not in results["report"]
    voigt = [[fitted["constants"][f"C{min(i, j)}{max(i, j)}"]["value"] for j in range(1, 7)] for i in range(1, 7)]
    np.testing.assert_allclose(fitted["ieee"]["voigt"], voigt, atol=1e-9)
    assert fitted["ieee"]["voigt_sigma"][0][1] == pytest.approx(fitted["constants"]["C12"]["sigma"])
    assert events and events[0][0] == "tds_fit" and events[-1][1] == len(events)


def test_cguess_naming_a_constant_the_symmetry_forbids(experiment):
    tds = load_input(experiment / "input.par")
    if not (experiment / "harvest_spots.h5").exists():
        run_tds(tds)
    tds.update(load_from_file=str(experiment / "harvest_spots.h5"), save_to_file=None, fitSpots=True,
               CGUESS={"A11": [297, 1, 500], "A13": [90, 0, 300], "A44": [150, 1, 400]})
    with pytest.raises(UsageError, match="A13"):
        run_tds(tds)


def test_rough_volume_mode(experiment, tmp_path):
    tds = load_input(experiment / "input.par")
    tds.update(DO_ELASTIC=0, save_to_file=str(tmp_path / "volume.h5"), testSpot_N=16)
    assert run_tds(tds) == {"harvest": str(tmp_path / "volume.h5")}
    with h5py.File(tmp_path / "volume.h5") as f:
        data, counts, axis = f["volume/data"][()], f["volume/counts"][()], f["volume/x"][()]
    import fabio

    mask = fabio.open(str(experiment / "filter.edf")).data != 0
    frames = [fabio.open(str(p)).data for p in sorted(experiment.glob("scan_*.cbf"))]
    valid = sum(int(((d >= 0) & mask).sum()) for d in frames)
    assert counts.sum() == valid  # every unmasked, non-negative pixel of every frame is binned once
    assert data.shape == (16, 16, 16) and np.isfinite(data[counts > 0]).all() and np.isnan(data[counts == 0]).all()
    assert np.allclose(np.diff(axis), axis[1] - axis[0]) and abs(axis[0] + axis[-1]) < 1e-12


@pytest.mark.skipif(not (VENV_BIN / "mpiexec").exists(), reason="mpiexec not installed")
def test_mpi_harvest_is_identical_to_serial(experiment, tmp_path):
    tds_serial = load_input(experiment / "input.par")
    tds_serial["save_to_file"] = str(tmp_path / "serial.h5")
    run_tds(tds_serial)
    script = tmp_path / "harvest_mpi.py"
    script.write_text(
        "import sys\n"
        "from difframe.tds.config import read_tds_config as load_input\n"
        "from difframe.manager import PluginManager\n"
        "from difframe.tds.workflow import harvest_step, mpi_comm\n"
        "tds = load_input(sys.argv[1])\n"
        "tds['save_to_file'] = sys.argv[2]\n"
        "comm = mpi_comm()\n"
        "assert comm is not None and comm.Get_size() == 2\n"
        "harvest_step(tds, PluginManager(), comm)\n"
    )
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    done = subprocess.run([str(VENV_BIN / "mpiexec"), "-n", "2", sys.executable, str(script),
                           str(experiment / "input.par"), str(tmp_path / "mpi.h5")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    with h5py.File(tmp_path / "serial.h5") as a, h5py.File(tmp_path / "mpi.h5") as b:
        for name in ("points/Q", "points/intensity", "points/spot", "points/frame", "points/pixel", "spots/hkl",
                     "spots/G", "spots/centroid", "excluded_frames"):
            np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)
        assert len(a["points/Q"]) > 1000


def test_frame_numbering_with_a_hole_is_refused(tmp_path):
    from difframe.errors import DataError
    from difframe.tds.workflow import check_numbering

    def stack(names):
        return [tmp_path / n for n in names]

    check_numbering(stack(["s_0002.cbf", "s_0004.cbf", "s_0006.cbf"]), str(tmp_path / "s_"), ".cbf")  # even step
    check_numbering(stack(["s_1.cbf", "s_10.cbf", "s_2.cbf"]), str(tmp_path / "s_"), ".cbf")  # unpadded: name order
    with pytest.raises(DataError, match=r"s_0003\.cbf is missing: s_0002\.cbf is followed by s_0004\.cbf"):
        check_numbering(stack(["s_0001.cbf", "s_0002.cbf", "s_0004.cbf", "s_0005.cbf"]), str(tmp_path / "s_"), ".cbf")


def test_progress_lines_of_harvest_fit_and_vissim(experiment, tmp_path, caplog, monkeypatch):
    import re

    from difframe import hookimpl, progress
    from difframe.tds import visualise

    monkeypatch.setattr(progress, "INTERVAL", 0.0)  # a line at every step instead of every 10 s
    # the progress lines are checked here, not the PNG of each spot (most of visSim's time; see test_tds_visualise)
    monkeypatch.setattr(visualise, "_slices_png", lambda path, *args: path)
    caplog.set_level("INFO", logger="difframe.progress")
    tds = load_input(experiment / "input.par")
    tds.update(save_to_file=str(tmp_path / "harvest.h5"), output_directory=str(tmp_path))
    run_tds(tds)
    lines = [r.getMessage() for r in caplog.records if r.name == "difframe.progress"]
    assert lines[0] == f"run difframe: TDS harvest of 40 frames scan_0000.cbf .. scan_0039.cbf; results in {tmp_path}"
    counts = [int(m.group(1)) for m in map(re.compile(r"harvest: (\d+)/40 \[").match, lines) if m]
    assert counts == sorted(counts) and counts[-1] == 40 == len(list(experiment.glob("scan_*.cbf")))
    assert lines[-1].startswith("run difframe done in") and str(tmp_path / "harvest.h5") in lines[-1]

    caplog.clear()
    costs = []

    class Watcher:
        @hookimpl
        def difframe_iteration_finished(self, run, engine, iteration, metrics):
            costs.append(metrics["cost"])

    tds.update(load_from_file=str(tmp_path / "harvest.h5"), save_to_file=None, fitSpots=True, visSim=1,
               testSpot_N=8, testSpot_Niter=10, collectSpots=[[0, 0, -1], [1, 1, 1]],
               CGUESS={"C11": [297.0, 297.0, 297.0], "A12": [95.0, 0.0, 300.0], "A44": [150.0, 1.0, 400.0]})
    plugins = PluginManager()
    plugins.add_plugin(Watcher(), name="watcher")
    run_tds(tds, plugins)
    lines = [r.getMessage() for r in caplog.records if r.name == "difframe.progress"]
    fit = [m for m in map(re.compile(r"fit: (\d+) step \[.*cost=(\S+)\]").match, lines) if m]
    assert fit and int(fit[-1].group(1)) == len(costs)  # every evaluation counted, the last cost shown
    assert float(fit[-1].group(2)) == pytest.approx(costs[-1], rel=1e-2)
    assert any(line.startswith("visSim FISTA: 2/2 ") for line in lines)
