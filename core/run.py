"""``difframe.Run``: one run of difframe, the object facility software embeds.

    from difframe import Run
    results = Run({"scans": {"moon": {...}}, "engines": {"e1": {"name": "DM"}}}).run()

A run owns its plugin manager (made fresh unless one is passed), validates the
parameters at construction (so a bad tree fails before any work), fires the
lifecycle hooks and hands the work to the ptychography or TDS flow.  It prints
nothing: progress goes through ``logging`` at the level ``verbose_level`` asks.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from difframe import parallel, progress
from difframe.errors import DataError, DifframeError, PluginError, UsageError
from difframe.manager import PluginManager
from difframe.param import Param
from difframe.params import ParamTree, merge_sources

log = logging.getLogger("difframe.run")

_LOG_LEVELS = {0: logging.ERROR, 1: logging.WARNING, 2: logging.INFO, 3: logging.DEBUG}


@dataclass
class ScanContext:
    """What a recipe (and a model plugin) gets besides its scan's parameters."""

    label: str
    positions: np.ndarray | None  # (N, 2) metres (y, x) from the scan pattern, or None
    plugins: PluginManager
    params: Param  # the whole resolved tree
    data_type: str  # 'single' | 'double'
    dry_run: bool
    # the MPI ranks among which the scan's frames are split: a recipe loads only ``ranks.share(N)`` of its N
    # frames (one rank, and all frames, without a launcher)
    ranks: parallel.Ranks = field(default_factory=lambda: parallel.Ranks())


class Run:
    """A validated parameter tree plus the plugins that will execute it.

    ``params`` is a mapping, a parameter file path, or a list of them (later
    ones win); ``overrides`` are more mappings applied last (what ``-p`` gives).
    """

    def __init__(
        self,
        params: Any = None,
        *,
        overrides: Iterable[Mapping] = (),
        plugins: PluginManager | None = None,
        strict_plugins: bool = False,
    ) -> None:
        sources = params if isinstance(params, (list, tuple)) else ([] if params is None else [params])
        self._first_file = next((Path(s) for s in sources if isinstance(s, (str, os.PathLike))), None)
        self.plugins = plugins if plugins is not None else PluginManager(strict=strict_plugins)
        self.tree = ParamTree.build(self.plugins)
        self.params: Param = self.tree.resolve(merge_sources([*sources, *overrides]))
        logging.getLogger("difframe").setLevel(_LOG_LEVELS[self.params.verbose_level])
        #: progress bars and the lines saying what the run does (rank 0 only; silent at verbose_level 0)
        self.progress = progress.configure(self.params.verbose_level, parallel.world().is_root)
        self.stop_requested = False
        self._positions: dict[str, np.ndarray | None] = {}
        self._needs: dict[str, dict] = {}

    # -- what hooks and flows use -------------------------------------------------

    @property
    def hook(self):
        """pluggy's hook relay: ``run.hook.difframe_iteration_finished(...)``."""
        return self.plugins.hook

    @property
    def run_name(self) -> str:
        """``run`` if given, else the first parameter file's stem, else "difframe"."""
        if self.params.run:
            return str(self.params.run)
        return self._first_file.stem if self._first_file is not None else "difframe"

    @property
    def home(self) -> Path:
        """``io.paths.home``: relative output paths are taken from here."""
        return Path(self.params.io.paths.home)

    def request_stop(self) -> None:
        """Ask the running engine to stop after its current block of iterations."""
        log.info("stop requested")
        self.stop_requested = True

    def scan_positions(self, label: str) -> np.ndarray | None:
        """(N, 2) positions in metres (y, x) from the scan's pattern, or None.

        ``scan.xy.type = None`` means the positions come with the data.  A pattern
        plugin receives its own subtree ``scan.xy.<name>``; a pattern that declares
        no parameters (``custom``) receives the whole ``scan.xy`` subtree.
        """
        if label not in self._positions:
            self._positions[label] = self._generate_positions(label)
        return self._positions[label]

    def _generate_positions(self, label: str) -> np.ndarray | None:
        xy = self.params.scans[label].xy
        if xy.type is None:
            return None
        name = self.plugins.resolve("scan_pattern", xy.type)
        spec = self.plugins.get("scan_pattern", name)
        where = f"scans.{label}.xy"
        try:
            positions = spec.generate(xy[name] if name in xy else xy)
        except (UsageError, DataError):
            raise
        except Exception as exc:
            raise DataError(f"{where}: scan pattern {name!r} failed: {type(exc).__name__}: {exc}") from exc
        positions = np.asarray(positions, dtype=np.float64)
        if positions.ndim != 2 or positions.shape[1] != 2:
            raise DataError(f"{where}: scan pattern {name!r} gave positions of shape {positions.shape}, expected (N, 2)")
        if not np.all(np.isfinite(positions)):
            raise DataError(f"{where}: scan pattern {name!r} gave non-finite positions")
        if len(positions) == 0:
            raise UsageError(f"{where}: scan pattern {name!r} gave no positions; check {where}.{name}.*")
        log.info("scan %s: %d positions from pattern %s", label, len(positions), name)
        return positions

    def model_needs(self, label: str) -> dict:
        """What the plugins' engines need in scan ``label``'s model beyond its parameters (the
        ``difframe_model_needs`` hook's answers merged, asked once per scan): ``num_object_modes`` (int) and
        ``engine_terms`` ({key: .ptyr path}); {} when nobody asks.  The parameters are not changed."""
        if label not in self._needs:
            asked_by: dict = {}  # "num_object_modes" or "engine_terms.<key>" -> (plugin, value)
            for impl in self.plugins.hook.difframe_model_needs.get_hookimpls():
                answer = impl.function(**{k: v for k, v in (("run", self), ("scan", label)) if k in impl.argnames})
                for what, wanted in _checked_needs(answer, impl.plugin_name, label):
                    plugin, first = asked_by.setdefault(what, (impl.plugin_name, wanted))
                    if first != wanted:
                        raise PluginError(f"scan {label!r}: plugins {plugin!r} and {impl.plugin_name!r} need "
                                          f"different {what} in the model ({first!r} and {wanted!r})")
            needs: dict = {}
            for what, (plugin, wanted) in asked_by.items():
                log.info("scan %s: the model is built with %s = %s (asked by %s)", label, what, wanted, plugin)
                if what.startswith("engine_terms."):
                    needs.setdefault("engine_terms", {})[what.partition(".")[2]] = wanted
                else:
                    needs[what] = wanted
            self._needs[label] = needs
        return self._needs[label]

    def scan_context(self, label: str, ranks: parallel.Ranks | None = None) -> ScanContext:
        return ScanContext(
            label=label,
            positions=self.scan_positions(label),
            plugins=self.plugins,
            params=self.params,
            data_type=self.params.data_type,
            dry_run=bool(self.params.dry_run),
            ranks=ranks or parallel.Ranks(),
        )

    # -- running ----------------------------------------------------------------

    def dry_run(self) -> dict:
        """Everything a dry run reports: the resolved tree, each scan's positions and the input files,
        each opened without loading it (DataError naming a missing or broken one)."""
        from difframe.inputs import check_inputs

        return {
            "params": self.params,
            "positions": {label: self.scan_positions(label) for label in self.params.scans},
            "inputs": check_inputs(self),
        }

    def run(self) -> dict:
        """Execute the run; returns output name -> path (or the dry-run report)."""
        self.hook.difframe_run_started(run=self)
        start = time.perf_counter()
        try:
            with self.progress.session():
                results = self._run()
        except BaseException as exc:
            self.hook.difframe_run_failed(run=self, error=exc)
            failed = isinstance(exc, (Exception, KeyboardInterrupt))  # not SystemExit
            if failed and parallel.stranded(exc) and not parallel.ended_above():  # other ranks would wait for this one
                text = _describe(exc)
                parallel.end_job(exc, lambda who: log.error("%s: %s; ending every rank", who, text,
                                                            exc_info=log.isEnabledFor(logging.DEBUG)))
            raise
        if not self.params.dry_run:
            written = [str(v) for v in results.values() if isinstance(v, (str, os.PathLike))
                       and os.path.exists(v)]
            self.progress.say("run %s done in %.1f s%s", self.run_name, time.perf_counter() - start,
                              "; wrote " + ", ".join(written) if written else "")
        self.hook.difframe_run_finished(run=self, results=results)
        return results

    def _run(self) -> dict:
        if self.params.dry_run:
            return self.dry_run()
        if self.params.get("tds") is not None:
            from difframe.tds.workflow import run_tds

            return run_tds(self)
        if self.params.scans:
            from difframe.ptycho.workflow import run_ptycho

            return run_ptycho(self)
        raise UsageError("nothing to run: give at least one scans.<label> (ptychography) or a tds subtree")


def _checked_needs(answer: Any, plugin: str, label: str) -> list[tuple[str, Any]]:
    """One plugin's ``difframe_model_needs`` answer as (what, value) pairs, ``engine_terms`` flattened to
    ``engine_terms.<key>``; PluginError naming the plugin when it is not what the hook asks for."""
    if answer is None:
        return []
    bad = None
    if not isinstance(answer, Mapping):
        bad = f"a {type(answer).__name__}, expected None or a dict"
    elif set(answer) - {"num_object_modes", "engine_terms"}:
        bad = f"unknown keys {sorted(set(answer) - {'num_object_modes', 'engine_terms'})}"
    elif "num_object_modes" in answer and not (isinstance(answer["num_object_modes"], (int, np.integer))
                                               and answer["num_object_modes"] >= 1):
        bad = f"num_object_modes = {answer['num_object_modes']!r}, expected an int >= 1"
    elif "engine_terms" in answer and not (isinstance(answer["engine_terms"], Mapping) and all(
            isinstance(k, str) and isinstance(v, (str, os.PathLike)) for k, v in answer["engine_terms"].items())):
        bad = f"engine_terms = {answer['engine_terms']!r}, expected {{key: .ptyr path}}"
    if bad:
        raise PluginError(f"plugin {plugin!r}: difframe_model_needs for scan {label!r} gave {bad}")
    pairs = [("num_object_modes", int(answer["num_object_modes"]))] if "num_object_modes" in answer else []
    return pairs + [(f"engine_terms.{key}", str(path)) for key, path in (answer.get("engine_terms") or {}).items()]


def _describe(exc: BaseException) -> str:
    """A failure as the CLI words it: the message, preceded by the type when it is not a difframe error."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return str(exc) if isinstance(exc, DifframeError) else f"{type(exc).__name__}: {exc}"
