"""``difframe params``: the documented parameter tree."""

from __future__ import annotations

import json
import sys
import textwrap

HELP = "document the parameter tree (or one subtree)"
DESCRIPTION = """\
Print the parameter tree with each node's type, default, limits, choices,
help and doc, including the parameters contributed by installed plugins.

examples:
  difframe params scan.xy                 the scan-pattern parameters
  difframe params engine.DM               the difference-map engine's parameters
  difframe params DM                      the same: a path's last parts, in any case, or a
                                          labelled copy (engines.dm, scans.a.xy) find their node
  difframe params --json                  the whole tree as one JSON object (dotted path -> node)"""


def add_arguments(parser) -> None:
    parser.add_argument("path", nargs="?", default="", metavar="PATH", help="dotted path of a subtree (default: all)")
    parser.add_argument("--json", action="store_true", help="print JSON: path -> {type, default, lowlim, uplim, "
                        "choices, help, doc}")


def main(args) -> int:
    from difframe.manager import PluginManager
    from difframe.params import ParamTree

    tree = ParamTree.build(PluginManager(strict=args.strict_plugins))
    if args.json:
        json.dump(tree.to_json(tree.find(args.path)), sys.stdout, indent=1)
        print()
        return 0
    path = tree.find(args.path)
    if path != args.path:
        print(f"({args.path!r} is documented as {path!r})", file=sys.stderr)
    for node in tree.subtree(path).values():
        print(format_node(node))
    return 0


def format_node(node) -> str:
    """A node in the reference's style: path(types), help, doc, default with limits, how to write None."""
    from difframe.params import NONE_TEXT, check_value

    limits = []
    if node.lowlim is not None:
        limits.append(f">={node.lowlim}")
    if node.uplim is not None:
        limits.append(f"<={node.uplim}")
    default = "None" if node.default is None else repr(node.default)
    lines = [f".{node.path} ({', '.join(node.types)})", f"    {node.help}" if node.help else None]
    if node.doc:
        lines += [textwrap.indent(node.doc, "    "), ""]
    lines.append(f"    default = {default}" + (f"  ({', '.join(limits)})" if limits else ""))
    if node.choices:
        lines.append(f"    choices = {', '.join(map(repr, node.choices))}")
    if node.allows_none and not node.is_container:
        lines.append("    None allowed: null (JSON, YAML), None (-p)" +
                     (', "None" (TOML)' if check_value(node, NONE_TEXT, node.path) is None else '; "None" is text here'))
    if node.owner != "core":
        lines.append(f"    from plugin {node.owner}")
    lines.append("")
    return "\n".join(line for line in lines if line is not None)
