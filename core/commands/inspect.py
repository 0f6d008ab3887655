"""``difframe inspect FILE``: what a detector frame holds, as the readers see it."""

from __future__ import annotations

import json

HELP = "show a detector frame's shape, dtype and header metadata"
DESCRIPTION = """\
Read one detector frame (CBF mini or full, EDF; plain, .gz or .bz2) with the reader
its first bytes call for, and print its shape, data type and typed metadata
(SI units; fields the file does not give are null).

Only regular files are read, no further than their header declares; a frame
over DIFFRAME_MAX_FRAME_BYTES (default 512 MiB decoded) or a CBF failing its
Content-MD5 is an error (DIFFRAME_BAD_CHECKSUM=drop: a warning, pixels -1).
See docs/security.md.

examples:
  difframe inspect frame_0001.cbf.gz
  difframe inspect frame_0001.cbf --json
"""


def add_arguments(parser) -> None:
    parser.add_argument("file", help="detector frame (.cbf, .edf, optionally .gz/.bz2)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def describe(path, plugins=None) -> dict:
    """The ``inspect`` report of one frame as plain data."""
    from difframe.detector import open_frame

    frame = open_frame(path, plugins)
    return {"shape": list(frame.data.shape), "dtype": str(frame.data.dtype), "metadata": dict(frame.metadata)}


def main(args) -> int:
    from difframe.manager import PluginManager

    report = describe(args.file, PluginManager(strict=args.strict_plugins))
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{args.file}: {report['shape'][0]} x {report['shape'][1]} {report['dtype']}")
    for key, value in report["metadata"].items():
        print(f"  {key:20s} {'-' if value is None else value}")
    return 0
