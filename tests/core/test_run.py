"""Embedding: difframe.Run with lifecycle hooks, logging, and no printing."""

import logging

import pytest

import difframe
from difframe import hookimpl
from difframe.errors import UsageError
from difframe.manager import PluginManager


class Watcher:
    """Facility software watching a run through the lifecycle hooks."""

    def __init__(self):
        self.events = []

    @hookimpl
    def difframe_run_started(self, run):
        self.events.append(("started", run.run_name))

    @hookimpl
    def difframe_run_finished(self, run, results):
        self.events.append(("finished", sorted(results)))

    @hookimpl
    def difframe_run_failed(self, run, error):
        self.events.append(("failed", type(error).__name__))


def test_dry_run_fires_started_and_finished_and_prints_nothing(capsys):
    watcher = Watcher()
    plugins = PluginManager(plugins=[watcher])
    run = difframe.Run({"run": "embedded", "dry_run": True, "scans": {"a": {"xy": {"type": "round"}}}},
                       plugins=plugins)
    report = run.run()
    assert watcher.events == [("started", "embedded"), ("finished", ["inputs", "params", "positions"])]
    assert report["positions"]["a"].shape == (276, 2) and report["inputs"] == []  # no data file given
    assert capsys.readouterr() == ("", "")


def test_failure_fires_run_failed():
    watcher = Watcher()
    run = difframe.Run({}, plugins=PluginManager(plugins=[watcher]))
    with pytest.raises(UsageError, match="nothing to run"):
        run.run()
    assert watcher.events == [("started", "difframe"), ("failed", "UsageError")]


def test_validation_happens_at_construction():
    with pytest.raises(UsageError, match="scan.xy.type"):
        difframe.Run({"scan": {"xy": {"type": "nope"}}})


def test_verbose_level_sets_the_library_log_level():
    difframe.Run({"verbose_level": 3})
    assert logging.getLogger("difframe").level == logging.DEBUG
    difframe.Run({"verbose_level": 0})
    assert logging.getLogger("difframe").level == logging.ERROR


def test_run_name_from_first_file(tmp_path):
    path = tmp_path / "moonflower.toml"
    path.write_text("[scans.a.xy]\ntype = 'raster'\n")
    run = difframe.Run([path, {"dry_run": True}])
    assert run.run_name == "moonflower" and run.scan_context("a").positions.shape == (100, 2)


def test_request_stop():
    run = difframe.Run({})
    assert not run.stop_requested
    run.request_stop()
    assert run.stop_requested


def test_a_folder_where_no_lock_can_be_written_is_warned_about_not_refused(tmp_path, caplog):
    from difframe.runlock import holding

    blocker = tmp_path / "file"
    blocker.write_text("a file where the output folder should be")
    ran = []
    with holding(blocker / "out", "r"):
        ran.append(True)
    assert ran and any("cannot write the run lock" in r.getMessage() and "file/out" in r.getMessage()
                       for r in caplog.records)


# -- runs that would write the same files (templates without %(run)s) ---------------------------------------------

def _pattern_matches(pattern: str, path: str) -> bool:
    """A glob matched the slow way: '*' any run of characters but '/', '?' one such character."""
    import re

    return re.fullmatch("".join("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in pattern),
                        path) is not None


def test_globs_overlap_against_enumeration():
    """globs_overlap says whether some path matches both globs: checked against every string over {a, b, /} up to
    the combined length, for random pairs of small globs."""
    import itertools
    import random

    from difframe.runlock import globs_overlap

    rng = random.Random(3)
    strings = ["".join(t) for n in range(7) for t in itertools.product("ab/", repeat=n)]
    for _ in range(300):
        a, b = ("".join(rng.choice("ab/*?") for _ in range(rng.randint(0, 4))) for _ in range(2))
        witness = any(_pattern_matches(a, s) and _pattern_matches(b, s) for s in strings if len(s) <= len(a) + len(b))
        assert globs_overlap(a, b) == globs_overlap(b, a) == witness, (a, b)
    assert globs_overlap("/h/out/x[*].ptyr", "/h/out/x*.ptyr")
    assert not globs_overlap("/h/out/x[*].ptyr", "/h/out/xy.ptyr")


def test_two_runs_writing_the_same_files_refuse_naming_both(tmp_path):
    """Differently named runs (two name locks) whose globs can name the same file: the second refuses naming
    the first, its pid and both globs; runs writing elsewhere, or the first once it ended, go ahead."""
    import os

    from difframe.runlock import holding

    shared = [tmp_path / "recons" / "*_DM_*.ptyr"]
    with holding(tmp_path, "first", shared):
        with pytest.raises(UsageError) as err:
            with holding(tmp_path, "second", [tmp_path / "recons" / "out_DM_0010.ptyr"]):
                pytest.fail("the second run started")
        text = str(err.value)
        assert "run 'second' would write the same files as run 'first'" in text and f"pid {os.getpid()}" in text
        assert "*_DM_*.ptyr" in text and "out_DM_0010.ptyr" in text
        assert not (tmp_path / ".difframe-second.lock").exists()  # the refused run left no lock behind
        with holding(tmp_path, "third", [tmp_path / "recons" / "third" / "third_*.ptyr",
                                         tmp_path / "recons" / "*_ML_*.png"]):
            pass
    with holding(tmp_path, "second", [tmp_path / "recons" / "out_DM_0010.ptyr"]):
        pass
    assert not list(tmp_path.rglob(".difframe-writes-*.lock"))  # every registration withdrawn


def test_a_placeholder_in_a_folder_is_found_from_either_side(tmp_path):
    """A glob with a wildcard folder ('out/*/f.ptyr') registers in its fixed folder 'out'; a run writing
    'out/a/f.ptyr' finds it there (an ancestor), and finds the other way round the record in 'out/a'."""
    from difframe.runlock import holding

    wide, narrow = tmp_path / "out" / "*" / "f.ptyr", tmp_path / "out" / "a" / "f.ptyr"
    for first, second in ((wide, narrow), (narrow, wide)):
        with holding(tmp_path, "one", [first]):
            with pytest.raises(UsageError, match="would write the same files as run 'one'"):
                with holding(tmp_path, "two", [second]):
                    pass


def test_a_dead_runs_registration_is_removed(tmp_path):
    """A registration whose process is gone (same host) does not block, and is removed."""
    import json
    import socket
    import subprocess
    import sys

    from difframe.runlock import holding

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    (tmp_path / "out").mkdir()
    stale = tmp_path / "out" / f".difframe-writes-{socket.gethostname()}-{child.pid}-1.lock"
    stale.write_text(json.dumps({"pid": child.pid, "host": socket.gethostname(), "run": "dead",
                                 "writes": [str(tmp_path / "out" / "*.ptyr")]}))
    with holding(tmp_path, "alive", [tmp_path / "out" / "result.ptyr"]):
        assert not stale.exists()


def test_a_run_refuses_before_it_reads_anything_when_a_live_run_writes_its_files(tmp_path):
    """difframe.Run with io.paths.recons without %(run)s, while a live process (this test's parent) has registered
    that folder's .ptyr files under another run name: UsageError naming that run and its command."""
    import json
    import os
    import socket

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / f".difframe-writes-{socket.gethostname()}-{os.getppid()}-1.lock").write_text(json.dumps(
        {"pid": os.getppid(), "host": socket.gethostname(), "run": "night_scan", "started": "2026-01-01T00:00:00",
         "command": "difframe run night.toml", "writes": [str(tmp_path / "out" / "*.ptyr")]}))
    run = difframe.Run({"run": "day_scan", "io": {"paths": {"home": str(tmp_path), "recons": "out/%(engine)s.ptyr"}},
                        "scans": {"a": {"data": {"source": "sim"}}}, "engines": {"e1": {"name": "DM", "numiter": 1}}})
    with pytest.raises(UsageError, match=r"run 'day_scan' would write the same files as run 'night_scan' "
                                         r"\(pid \d+ .*night\.toml.*out/\*\.ptyr"):
        run.run()
