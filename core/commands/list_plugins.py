"""``difframe list-plugins``: what is installed, of which kind, from where, and whether it works."""

from __future__ import annotations

import json
import sys

HELP = "show installed plugins, their kinds and status"
DESCRIPTION = """\
List the plugins difframe found through the `difframe.plugins` entry points,
one line per registered name: its kind, the entry point that provides it, the
distribution and version, and its status (active, failed, blocked).

A plugin that failed to import, or registered a name already taken, is listed
as failed with its error (use --strict-plugins to make that fatal). Plugins
named in DIFFRAME_DISABLED_PLUGINS are listed as blocked.

examples:
  difframe list-plugins
  difframe list-plugins --kind engine
  difframe list-plugins --json | python -m json.tool"""


def add_arguments(parser) -> None:
    from difframe.types import SPEC_KINDS  # light: dataclasses only

    parser.add_argument("--kind", choices=sorted(SPEC_KINDS), help="only this kind of plugin")
    parser.add_argument("--json", action="store_true", help="print a JSON list of objects")
    parser.add_argument("--all", action="store_true", help="also show the source, load time and aliases")


def rows(manager, kind: str | None = None) -> list[dict]:
    """One row per registered name, plus one per failed or blocked plugin."""
    out = []
    for record in manager.records:
        base = {"plugin": record.plugin, "distribution": record.distribution, "version": record.version,
                "status": record.status, "source": record.source, "load_time_ms": round(1e3 * record.load_time_s, 2)}
        if record.status != "active" or not record.specs:
            if kind is None:
                out.append({"name": None, "kind": None, "summary": record.error, "aliases": [], **base})
            continue
        for spec_kind, spec in record.specs:
            if kind is None or spec_kind == kind:
                out.append({"name": spec.name, "kind": spec_kind, "summary": spec.summary,
                            "aliases": list(spec.aliases), **base})
    return out


def main(args) -> int:
    from difframe.manager import PluginManager

    manager = PluginManager(strict=args.strict_plugins)
    table = rows(manager, args.kind)
    if args.json:
        json.dump(table, sys.stdout, indent=2)
        print()
        return 0
    columns = ["name", "kind", "plugin", "distribution", "version", "status", "summary"]
    if args.all:
        columns += ["aliases", "source", "load_time_ms"]
    cells = [[_cell(row[c]) for c in columns] for row in table]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    widths[-1] = min(widths[-1], 60) if not args.all else widths[-1]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip())
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    failed = sum(1 for rec in manager.records if rec.status == "failed")
    if failed:
        print(f"\n{failed} plugin(s) failed to load; the summary column says why.", file=sys.stderr)
    return 0


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(value) or "-"
    return str(value)
