"""`difframe tds INPUT.par` and `tds2el INPUT.par` as a user runs them, on a simulated MgO scan with known constants."""

import json
import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import h5py
import numpy as np
import pytest

from difframe.run import Run
from difframe.tds.config import read_tds_config
from difframe.tds.simulate import simulate

ROOT = Path(__file__).resolve().parents[3]
VENV_BIN = ROOT / ".venv" / "bin"


def command(name: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / name), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    """The MgO example (visSim on) with 4 spots and a smaller visSim grid, simulated once."""
    spec = tomllib.loads((ROOT / "examples" / "tds" / "mgo.toml").read_text())
    spec["scan"]["max_spots"] = 4
    spec["options"].update(testSpot_N=8, testSpot_Niter=20)
    folder = tmp_path_factory.mktemp("cli")
    truth = simulate(spec, folder / "mgo-run")
    return folder, truth


@pytest.fixture(scope="module")
def difframe_run(scan):
    folder, _ = scan
    done = command("difframe", "-v", "tds", "mgo-run/input.par", cwd=folder)
    assert done.returncode == 0, done.stderr
    return done


def test_difframe_tds_recovers_the_simulated_constants(scan, difframe_run):
    folder, truth = scan
    run = folder / "mgo-run"
    result = json.loads((run / "fit_results.json").read_text())
    assert result["converged"] and result["fixed"] == [truth["fixed"]] == ["C11"]
    assert result["spots"] == len(truth["spots"]["hkl"]) and result["points"] > 1000
    for name, value in truth["constants"].items():
        fitted = result["constants"][name]
        assert fitted["value"] == pytest.approx(value, rel=0.02), name
        assert abs(fitted["value"] - value) <= 4 * fitted["sigma"] + 1e-9, name
    assert result["constants"]["C23"]["value"] == result["constants"]["C12"]["value"]  # cubic relations applied
    out = difframe_run.stdout
    assert out.count("Elastic constants [GPa]") == 1  # the table once, on stdout
    assert "json: mgo-run/fit_results.json" in out  # paths as the user named them
    assert "fit converged: C11 = 297 (fixed)" in difframe_run.stderr and "Voigt matrix" not in difframe_run.stderr
    assert (run / "spot_0000.png").stat().st_size > 0 and (run / "simtests.h5").exists()


def test_tds2el_is_the_same_command(scan, difframe_run):
    # the same input (frames, harvest, fit) in a copy; visSim off: its PNGs cost most of a run and are
    # checked on difframe's run above, while this test compares the harvest and fit tds2el gives
    folder, _ = scan
    first = json.loads((folder / "mgo-run" / "fit_results.json").read_text())
    run = _variant(scan, "tds2el", conf_edit=lambda text: text.replace("\nvisSim = 1\n", "\nvisSim = 0\n"))
    assert "visSim = 0" in (run / "tds2el.par").read_text()
    done = command("tds2el", "tds2el/input.par", cwd=folder)
    assert done.returncode == 0, done.stderr
    assert not (run / "simtests.h5").exists()
    again = json.loads((run / "fit_results.json").read_text())
    assert again["constants"] == first["constants"] and again["points"] == first["points"]
    assert done.stdout.count("Elastic constants [GPa]") == 1


def test_vis_sim_shows_the_model_at_the_fitted_constants(scan, difframe_run, tmp_path, monkeypatch):
    from difframe.tds import visualise

    folder, truth = scan
    # the volumes in simtests.h5 are checked here; the PNG of each spot (most of visSim's time) is checked on
    # difframe's run above and in test_tds_visualise
    monkeypatch.setattr(visualise, "_slices_png", lambda path, *args: path)
    run = folder / "mgo-run"
    fitted = json.loads((run / "fit_results.json").read_text())["constants"]
    tds = read_tds_config(run / "input.par")
    tds.update(load_from_file=str(run / "harvest_spots.h5"), save_to_file=None, output_directory=str(tmp_path))

    def volumes(**changes):
        Run({"tds": {**tds, **changes}}).run()
        with h5py.File(tmp_path / "simtests.h5") as f:
            return (f["spot_0000/data/intensity"][()], f["spot_0000/model/intensity"][()],
                    f["spot_0000/model"].attrs["constants"])

    data, at_guess, label_guess = volumes(doMinimisation=0)
    data_again, at_fit, label_fit = volumes(doMinimisation=1)
    np.testing.assert_array_equal(data, data_again)
    assert label_guess.startswith("model (CGUESS") and f"C12 = {truth['constants']['C12'] * 1.1:.4g}" in label_guess
    assert label_fit.startswith("model (fitted") and f"C44 = {fitted['C44']['value']:.4g}" in label_fit
    shown = np.isfinite(data)  # the measured nodes (NaN elsewhere)
    assert not np.allclose(at_fit[shown], at_guess[shown], rtol=1e-3)  # the fit moved the constants and the model
    assert np.abs(at_fit - data)[shown].sum() < np.abs(at_guess - data)[shown].sum()


def _variant(scan, name: str, conf_edit=None, drop_frame: str | None = None) -> Path:
    """A copy of the simulated run's input (frames linked) with its conf_file edited or a frame left out."""
    folder, truth = scan
    source, target = folder / "mgo-run", folder / name
    target.mkdir()
    for path in source.iterdir():
        if path.suffix == ".cbf":
            if path.name != drop_frame:
                os.symlink(path, target / path.name)
        elif path.name in ("input.par", "tds2el.par", "filter.edf", "normalisation.dat"):
            shutil.copy(path, target / path.name)
    if conf_edit:
        conf = target / "tds2el.par"
        conf.write_text(conf_edit(conf.read_text()))
    return target


def test_cguess_naming_a_forbidden_constant_exits_2_naming_it(scan, difframe_run):
    def edit(text):
        lines = [line for line in text.splitlines() if not line.startswith(("CGUESS", "load_from_file"))]
        lines += [f"load_from_file = {str(scan[0] / 'mgo-run' / 'harvest_spots.h5')!r}",
                  "CGUESS = {'A11': [297, 1, 900], 'A12': [100, 1, 900], 'A13': [90, 1, 900], 'A44': [160, 1, 900]}"]
        return "\n".join(lines) + "\n"

    run = _variant(scan, "bad-cguess", conf_edit=edit)
    done = command("difframe", "tds", run / "input.par", cwd=run)
    assert done.returncode == 2
    message = done.stderr.strip().splitlines()
    assert len(message) == 1 and "A13" in message[0], done.stderr
    assert not (run / "fit_results.json").exists()


def test_missing_frame_exits_1_naming_it(scan, difframe_run):
    run = _variant(scan, "missing-frame", drop_frame="mgo_0010.cbf")
    done = command("tds2el", run / "input.par", cwd=run)
    assert done.returncode == 1
    message = done.stderr.strip().splitlines()
    assert len(message) == 1 and "mgo_0010.cbf is missing" in message[0], done.stderr
    assert not (run / "harvest_spots.h5").exists()  # refused before harvesting anything


def test_dry_run_opens_every_frame_and_names_an_unreadable_one(scan, capsys):
    from difframe.cli import main

    run = _variant(scan, "dry-run")
    assert main(["tds", str(run / "input.par"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    frames = sorted(p.name for p in run.glob("*.cbf"))
    listed = [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("tds.images_prefix: ")]
    assert [Path(p).name for p in listed] == frames and len(frames) > 10
    assert not (run / "harvest_spots.h5").exists()  # nothing was run
    # a frame whose file is gone (a dangling link): one message naming it, exit 1, as in a run
    broken = _variant(scan, "dry-run-broken", drop_frame="mgo_0010.cbf")
    os.symlink(broken / "nowhere.cbf", broken / "mgo_0010.cbf")
    assert main(["tds", str(broken / "input.par"), "--dry-run"]) == 1
    message = capsys.readouterr().err.strip().splitlines()
    assert len(message) == 1 and message[0].startswith("difframe tds: error: tds.images_prefix = ")
    assert "mgo_0010.cbf': no such file" in message[0]
