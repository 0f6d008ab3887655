"""Packaging: every package listed, a real wheel that works, a third-party plugin installed for real."""

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGE_DIRS = {"difframe": ROOT / "core", "difframe.plugins": ROOT / "plugins"}


def package_name(folder: Path) -> str:
    for name, base in sorted(PACKAGE_DIRS.items(), key=lambda kv: -len(str(kv[1]))):
        if folder == base or base in folder.parents:
            rel = folder.relative_to(base).parts
            return ".".join((name, *rel))
    raise AssertionError(folder)


def source_folders():
    for base in PACKAGE_DIRS.values():
        for path in [base, *base.rglob("*")]:
            if path.is_dir() and "__pycache__" not in path.parts and any(path.glob("*.py")):
                yield path


def test_every_folder_with_python_is_a_listed_package():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    for folder in source_folders():
        assert (folder / "__init__.py").is_file(), f"{folder} has modules but no __init__.py"
        assert package_name(folder) in listed, f"{package_name(folder)} ({folder}) is not in [tool.setuptools] packages"


def test_entry_points_name_modules_that_exist():
    eps = PYPROJECT["project"]["entry-points"]["difframe.plugins"]
    for name, target in eps.items():
        kind_folder, _, impl = name.partition(".")
        module = target.split(":")[0]
        assert module.startswith("difframe.plugins."), name
        rel = module.removeprefix("difframe.plugins.").split(".")
        path = ROOT / "plugins" / Path(*rel)
        assert path.with_suffix(".py").is_file() or (path / "__init__.py").is_file(), f"{name} -> {module}"
        assert rel[0] == kind_folder, f"entry point {name} should be named after its folder {rel[0]}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(out), str(ROOT)], check=True, capture_output=True)
    (path,) = out.glob("difframe-*.whl")
    return path


def test_wheel_contains_every_package_and_entry_point(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for folder in source_folders():
        init = package_name(folder).replace(".", "/") + "/__init__.py"
        assert init in names, f"{init} missing from the wheel"
    eps = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(eps).decode()
    for name in PYPROJECT["project"]["entry-points"]["difframe.plugins"]:
        assert name in text


def test_installed_wheel_gives_the_same_plugins(wheel, tmp_path):
    """Import difframe from the unpacked wheel only (no editable finder) and list its plugins."""
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    site_packages = sysconfig.get_paths()["purelib"]
    code = (
        "import sys, json; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
        "import difframe; from difframe.manager import PluginManager\n"
        "m = PluginManager(); print(json.dumps([difframe.__file__, "
        "[(r.plugin, r.status, r.error) for r in m.records if r.distribution == 'difframe']]))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-S", "-c", code, str(target), site_packages], capture_output=True,
                         text=True, env=env, check=True).stdout
    origin, records = json.loads(out)
    assert origin.startswith(str(target))
    expected = set(PYPROJECT["project"]["entry-points"]["difframe.plugins"])
    assert {name for name, _, _ in records} == expected
    assert all(status == "active" for _, status, _ in records), records


CLI_CALLS = """
import contextlib, io, json, sys
from difframe.cli import main
replies = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(argv)
        except SystemExit as exc:
            status = exc.code
    replies.append([status, out.getvalue(), err.getvalue()])
print(json.dumps(replies))
"""


def test_third_party_plugin_installed_for_real(tmp_path):
    """The plugin-author guide's example package: pip-installed, listed, documented, used."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(ROOT / "examples" / "plugin-template")],
                   check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(target)}
    commands = [["list-plugins", "--json"], ["params", "scan.xy.line"],
                ["run", str(ROOT / "examples" / "patterns.toml"), "--dry-run", "--json",
                 "-p", 'scans.grid.xy.type="line"', "-p", "scans.grid.xy.line.n=7"],
                ["run", str(ROOT / "examples" / "patterns.toml"), "--dry-run", "-p", "scans.grid.xy.line.n=2.5"]]
    # the four commands in one fresh process (difframe.cli.main each, its output and exit status captured)
    done = subprocess.run([sys.executable, "-c", CLI_CALLS, json.dumps(commands)], capture_output=True, text=True,
                          env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    replies = {tuple(argv): reply for argv, reply in zip(commands, json.loads(done.stdout))}

    def cli(*args):
        return subprocess.CompletedProcess(list(args), *replies[args])

    listed = json.loads(cli("list-plugins", "--json").stdout)
    line = next(r for r in listed if r["name"] == "line")
    assert line["kind"] == "scan_pattern" and line["plugin"] == "difframe_line_pattern.line"
    assert line["distribution"] == "difframe-line-pattern" and line["version"] == "1.2.0"
    assert line["status"] == "active"
    doc = cli("params", "scan.xy.line").stdout
    assert ".scan.xy.line.n (int)" in doc and "number of points" in doc
    result = cli("run", str(ROOT / "examples" / "patterns.toml"), "--dry-run", "--json",
                 "-p", 'scans.grid.xy.type="line"', "-p", "scans.grid.xy.line.n=7")
    assert result.returncode == 0, result.stderr
    positions = json.loads(result.stdout)["positions"]["grid"]
    assert len(positions) == 7
    assert [p[1] for p in positions] == pytest.approx([i * 1e-6 for i in range(7)])
    bad = cli("run", str(ROOT / "examples" / "patterns.toml"), "--dry-run", "-p", "scans.grid.xy.line.n=2.5")
    assert bad.returncode == 2 and "scans.grid.xy.line.n = 2.5: expected int" in bad.stderr
