"""The plugin manager: entry points in, a registry of named specs out.

One manager is made per run (or per CLI command); nothing is global, so two runs
embedded in one process may see different plugins.  Loading is tolerant: a
plugin that fails to import, whose hook raises, or that registers a name
already taken is recorded as ``failed`` with its error and the rest go on;
``strict=True`` (``--strict-plugins``) turns any such failure into an error.

Environment:

``DIFFRAME_DISABLE_PLUGIN_AUTOLOAD``
    set to anything but ``""``/``0``: load only difframe's own entry points.
``DIFFRAME_DISABLED_PLUGINS=a,b``
    entry-point names (or distribution names) to block; listed as ``blocked``.
``DIFFRAME_TRACE_PLUGINS``
    log every entry point loaded and every hook call (logger ``difframe.plugins``).
"""

from __future__ import annotations

import difflib
import logging
import os
import time
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Iterable

import pluggy

from difframe import hookspecs
from difframe.errors import PluginError, UsageError
from difframe.types import SPEC_KINDS

ENTRY_POINT_GROUP = "difframe.plugins"
OWN_DISTRIBUTION = "difframe"

log = logging.getLogger("difframe.plugins")


@dataclass
class PluginRecord:
    """What the manager knows of one plugin (one entry point or one object)."""

    plugin: str
    distribution: str
    version: str
    source: str
    status: str = "active"  # active | failed | blocked
    error: str = ""
    load_time_s: float = 0.0
    specs: list = field(default_factory=list)  # (kind, spec) pairs


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _as_iterable(result: Any) -> Iterable:
    if result is None:
        return ()
    if isinstance(result, (list, tuple)):
        return result
    if hasattr(result, "__iter__") and not hasattr(result, "name"):
        return result
    return (result,)


class PluginManager:
    """Loads plugins and answers "which engine is called DM?"."""

    def __init__(
        self,
        *,
        autoload: bool | None = None,
        strict: bool = False,
        disabled: Iterable[str] | None = None,
        plugins: Iterable[Any] = (),
        load: bool = True,
    ) -> None:
        self.strict = strict
        self.autoload = not _env_flag("DIFFRAME_DISABLE_PLUGIN_AUTOLOAD") if autoload is None else autoload
        env_disabled = [s.strip() for s in os.environ.get("DIFFRAME_DISABLED_PLUGINS", "").split(",") if s.strip()]
        self.disabled = set(env_disabled) | set(disabled or ())
        self.records: list[PluginRecord] = []
        self._registry: dict[str, dict[str, tuple[Any, PluginRecord]]] = {kind: {} for kind in SPEC_KINDS}
        self._aliases: dict[str, dict[str, str]] = {kind: {} for kind in SPEC_KINDS}
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs.DifframeHookSpecs)
        if _env_flag("DIFFRAME_TRACE_PLUGINS"):
            self.pm.trace.root.setwriter(lambda msg: log.info("trace: %s", msg.rstrip()))
            self.pm.enable_tracing()
        if load:
            self.load_entry_points()
        for obj in plugins:
            self.add_plugin(obj)

    # -- loading -------------------------------------------------------------

    @property
    def hook(self):
        """pluggy's hook relay, for the lifecycle hooks."""
        return self.pm.hook

    def load_entry_points(self) -> None:
        """Register every entry point in ``difframe.plugins`` (built-ins first)."""
        eps = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
        seen: set[tuple[str, str]] = set()

        def order(ep):
            dist = ep.dist.name if ep.dist is not None else ""
            return (dist != OWN_DISTRIBUTION, dist, ep.name)

        for ep in sorted(eps, key=order):
            dist = ep.dist.name if ep.dist is not None else "unknown"
            if (dist, ep.name) in seen:  # the same distribution seen twice on sys.path
                continue
            seen.add((dist, ep.name))
            version = ep.dist.version if ep.dist is not None else ""
            record = PluginRecord(plugin=ep.name, distribution=dist, version=version, source=ep.value)
            self.records.append(record)
            if ep.name in self.disabled or dist in self.disabled:
                record.status = "blocked"
                record.error = "disabled by DIFFRAME_DISABLED_PLUGINS"
                self.pm.set_blocked(ep.name)
                continue
            if not self.autoload and dist != OWN_DISTRIBUTION:
                record.status = "blocked"
                record.error = "autoload disabled by DIFFRAME_DISABLE_PLUGIN_AUTOLOAD"
                continue
            start = time.perf_counter()
            try:
                obj = ep.load()
            except Exception as exc:  # a broken third-party plugin must not stop the others
                self._fail(record, f"import failed: {type(exc).__name__}: {exc}")
                continue
            finally:
                record.load_time_s = time.perf_counter() - start
            log.debug("loaded plugin %s from %s (%.1f ms)", ep.name, dist, 1e3 * record.load_time_s)
            self._register(obj, record)

    def add_plugin(self, obj: Any, name: str | None = None) -> PluginRecord:
        """Register a module or object directly (embedding, tests)."""
        name = name or getattr(obj, "__name__", None) or type(obj).__name__
        record = PluginRecord(plugin=name, distribution="(registered in code)", version="", source=repr(obj))
        self.records.append(record)
        self._register(obj, record)
        return record

    def _fail(self, record: PluginRecord, message: str) -> None:
        record.status = "failed"
        record.error = message
        log.warning("plugin %s (%s) failed: %s", record.plugin, record.distribution, message)
        if self.strict:
            raise PluginError(f"plugin {record.plugin!r} from {record.distribution}: {message}")

    def _register(self, obj: Any, record: PluginRecord) -> None:
        try:
            self.pm.register(obj, name=record.plugin)
        except Exception as exc:
            self._fail(record, f"registration failed: {exc}")
            return
        collected: list[tuple[str, Any]] = []
        for kind, (hook_name, spec_type) in SPEC_KINDS.items():
            impl = getattr(obj, hook_name, None)
            if impl is None:
                continue
            try:
                specs = list(_as_iterable(impl()))
            except Exception as exc:
                self._unregister(record)
                self._fail(record, f"{hook_name}() raised {type(exc).__name__}: {exc}")
                return
            for spec in specs:
                if not isinstance(spec, spec_type):
                    self._unregister(record)
                    self._fail(record, f"{hook_name}() gave {type(spec).__name__}, expected {spec_type.__name__}")
                    return
                collected.append((kind, spec))
        for kind, spec in collected:
            clash = self._clash(kind, spec)
            if clash:
                self._unregister(record)
                self._fail(record, clash)
                return
        for kind, spec in collected:
            self._registry[kind][spec.name] = (spec, record)
            for alias in spec.aliases:
                self._aliases[kind][alias.lower()] = spec.name
        record.specs = collected

    def _unregister(self, record: PluginRecord) -> None:
        plugin = self.pm.get_plugin(record.plugin)
        if plugin is not None:
            self.pm.unregister(plugin)

    def _clash(self, kind: str, spec: Any) -> str:
        for key in (spec.name, *spec.aliases):
            owner = self._registry[kind].get(key) or self._registry[kind].get(self._aliases[kind].get(key.lower(), ""))
            if owner is not None:
                other = owner[1]
                return (
                    f"{kind.replace('_', ' ')} name {key!r} is registered by both {other.plugin!r} "
                    f"({other.distribution} {other.version}) and this plugin; rename one or block one "
                    f"with DIFFRAME_DISABLED_PLUGINS"
                )
        return ""

    # -- queries -------------------------------------------------------------

    def specs(self, kind: str) -> dict[str, Any]:
        """name -> spec for one kind, in registration order."""
        return {name: spec for name, (spec, _) in self._registry[kind].items()}

    def provider(self, kind: str, name: str) -> PluginRecord:
        return self._registry[kind][self.resolve(kind, name)][1]

    def resolve(self, kind: str, name: str) -> str:
        """The registered name for ``name`` (exact, alias or case-insensitive)."""
        registry = self._registry[kind]
        if name in registry:
            return name
        lowered = {key.lower(): key for key in registry}
        if str(name).lower() in lowered:
            return lowered[str(name).lower()]
        if str(name).lower() in self._aliases[kind]:
            return self._aliases[kind][str(name).lower()]
        known = sorted(registry)
        close = difflib.get_close_matches(str(name), known + sorted(self._aliases[kind]), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UsageError(
            f"no {kind.replace('_', ' ')} named {name!r} is registered{hint} "
            f"(known: {', '.join(known) or 'none'}; see `difframe list-plugins --kind {kind}`)"
        )

    def get(self, kind: str, name: str) -> Any:
        """The spec registered under ``name`` (or an alias) for ``kind``."""
        return self._registry[kind][self.resolve(kind, name)][0]
