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
