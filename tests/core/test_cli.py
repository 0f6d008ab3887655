"""The command line as a user meets it: exit codes, messages, output formats."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from difframe import __version__
from difframe.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"difframe {__version__}"


def test_help_imports_no_heavy_module():
    """`difframe --help` must not import numpy or any plugin (start-up time)."""
    code = ("import sys, contextlib, io\nfrom difframe.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try: main(['--help'])\n    except SystemExit: pass\n"
            "heavy = [m for m in ('numpy', 'scipy', 'h5py', 'difframe.plugins', 'difframe.manager') if m in sys.modules]\n"
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_no_command_prints_help_and_exits_2(capsys):
    code, out, _ = run_cli(capsys)
    assert code == 2 and "list-plugins" in out


def test_list_plugins_json(capsys):
    code, out, _ = run_cli(capsys, "list-plugins", "--json")
    rows = json.loads(out)
    assert code == 0
    raster = next(r for r in rows if r["name"] == "raster")
    assert raster["kind"] == "scan_pattern" and raster["plugin"] == "patterns.raster"
    assert raster["distribution"] == "difframe" and raster["version"] == __version__
    assert raster["status"] == "active" and raster["summary"]
    kinds = {"engine", "recipe", "detector_reader", "detector_template", "illumination_model", "sample_model",
             "scan_pattern", "minimiser"}
    assert {r["kind"] for r in rows if r["kind"]} <= kinds


def test_list_plugins_table_and_kind_filter(capsys):
    code, out, _ = run_cli(capsys, "list-plugins", "--kind", "scan_pattern")
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:3] == ["NAME", "KIND", "PLUGIN"]
    assert {line.split()[0] for line in lines[1:]} == {"raster", "round", "round_roi", "spiral", "spiral_roi", "custom"}


def test_params_subtree_text_and_json(capsys):
    code, out, _ = run_cli(capsys, "params", "scan.xy")
    assert code == 0 and ".scan.xy.spiral.r_out (float)" in out and "Outer radius" in out
    code, out, _ = run_cli(capsys, "params", "--json")
    tree = json.loads(out)
    assert tree["scan.geometry.energy"]["default"] == 6.2 and tree["scan.geometry.energy"]["lowlim"] == 0.0
    code, _, err = run_cli(capsys, "params", "scan.xx")
    assert code == 2 and "no parameter 'scan.xx'; did you mean 'scan.xy'" in err


def test_dry_run_prints_tree_and_positions(capsys):
    code, out, _ = run_cli(capsys, "run", str(EXAMPLES / "patterns.toml"), "--dry-run")
    assert code == 0
    assert "scans.grid.xy.raster.nx = 4" in out and "# scans.grid: 12 positions" in out
    code, out, _ = run_cli(capsys, "run", str(EXAMPLES / "patterns.toml"), "--dry-run", "--json",
                           "-p", "scans.grid.xy.raster.nx=2")
    report = json.loads(out)
    assert len(report["positions"]["grid"]) == 6 and report["params"]["run"] == "patterns"


@pytest.mark.parametrize("args, message", [
    (["-p", "scans.grid.xy.raster.nx=-1"], "scans.grid.xy.raster.nx = -1: expected int (>= 0)"),
    (["-p", "scans.grid.xy.rastr.nx=1"], "did you mean 'raster'"),
    (["-p", "oops"], "expected dotted.path=value"),
])
def test_validation_errors_exit_2_with_one_message(capsys, args, message):
    code, out, err = run_cli(capsys, "run", str(EXAMPLES / "patterns.toml"), "--dry-run", *args)
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and out == ""


def test_missing_file_exits_2(capsys, tmp_path):
    code, _, err = run_cli(capsys, "run", str(tmp_path / "missing.toml"))
    assert code == 2 and "missing.toml" in err


def test_usage_error_from_argparse_exits_2():
    result = subprocess.run([sys.executable, "-m", "difframe.cli", "list-plugins", "--kind", "nonsense"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_verbosity_flags_map_onto_verbose_level(capsys):
    code, out, _ = run_cli(capsys, "run", str(EXAMPLES / "patterns.toml"), "--dry-run", "-vv")
    assert code == 0 and "verbose_level = 3" in out
    code, out, _ = run_cli(capsys, "run", str(EXAMPLES / "patterns.toml"), "--dry-run", "-q")
    assert "verbose_level = 0" in out


def test_engine_option_replaces_the_files_engines_in_order(capsys, tmp_path):
    params = tmp_path / "two.toml"
    params.write_text('[engine.common]\nnumiter = 12\n[engines.first]\nname = "ML"\nnumiter = 3\n'
                      '[scans.s.xy]\ntype = "raster"\n')
    code, out, err = run_cli(capsys, "run", str(params), "--dry-run", "--json", "--engine", "DM", "--engine", "ML")
    assert code == 0, err
    engines = json.loads(out)["params"]["engines"]
    assert [e["name"] for e in engines.values()] == ["DM", "ML"]
    assert all(e["numiter"] == 12 for e in engines.values())  # engine.common still applies
    code, _, err = run_cli(capsys, "run", str(params), "--dry-run", "--engine", "XX")
    assert code == 2 and "engines.engine_00.name = 'XX'" in err


def test_dry_run_opens_every_input_file_and_names_a_missing_or_broken_one(capsys, tmp_path, real_data):
    cxi = real_data / "PETRAIII_P25_Near_Field_Ptycho.cxi"
    node = "scans.p25.data.recipe.cxi.cxifile"
    base = ["run", str(EXAMPLES / "p25.toml"), "--dry-run"]
    code, out, err = run_cli(capsys, *base, "-p", f"{node}={str(cxi)!r}")
    assert code == 0 and f"{node}: {cxi}" in out.splitlines()
    truncated = tmp_path / "cut.cxi"
    with open(cxi, "rb") as f:
        truncated.write_bytes(f.read(4096))  # the superblock survives, the rest is gone
    for bad, why in ((tmp_path / "gone.cxi", "no such file"), (truncated, r"a broken HDF5 file \(.*truncated"),
                     (tmp_path, "cannot be read")):
        code, out, err = run_cli(capsys, *base, "-p", f"{node}={str(bad)!r}")
        assert code == 1 and out == "" and len(err.strip().splitlines()) == 1, err
        assert re.match(rf"difframe run: error: {re.escape(node)} = '{re.escape(str(bad))}': {why}", err), err
    # a run (not dry) says the same, and nothing else, before it starts anything
    home = tmp_path / "home"
    code, out, err = run_cli(capsys, "run", str(EXAMPLES / "p25.toml"), "-p", f"{node}={str(tmp_path / 'gone.cxi')!r}",
                             "-p", f"io.paths.home={str(home)!r}")
    assert (code, out) == (1, "") and err.strip().splitlines() == [
        f"difframe run: error: {node} = '{tmp_path / 'gone.cxi'}': no such file"]
    assert not home.exists()
    # a model started from a reconstruction: its .ptyr is an input too
    code, out, err = run_cli(capsys, "run", str(EXAMPLES / "patterns.toml"), "--dry-run",
                             "-p", 'scans.grid.illumination.model="recon"',
                             "-p", f"scans.grid.illumination.recon.rfile={str(tmp_path / 'none*.ptyr')!r}")
    assert code == 1 and "scans.grid.illumination.recon.rfile" in err and "none*.ptyr': no such file" in err


def test_a_missing_parameter_file_is_the_same_mistake_for_run_and_tds(capsys, tmp_path):
    for command, name in (("run", "missing.toml"), ("tds", "missing.par")):
        code, out, err = run_cli(capsys, command, str(tmp_path / name))
        assert (code, out) == (2, ""), err
        assert err.strip() == f"difframe {command}: error: parameter file {str(tmp_path / name)!r} does not exist"
    code, _, err = run_cli(capsys, "tds", str(tmp_path))
    assert code == 2 and "is not a file" in err
