"""``difframe tds``: tds2el's command line (also installed as ``tds2el``)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HELP = "TDS elastic constants as tds2el ran them: harvest, fit, structure, simulate"
DESCRIPTION = """\
Run a tds2el input file: harvest the frames around the Bragg spots (unless
load_from_file is given), print the elastic-tensor structure and stop when CGUESS
is missing, fit the elastic constants, interpolate the spots (visSim).  The files
are read by a whitelisting interpreter, never executed.  Relative file names in
input.par and conf_file are relative to the folder of input.par.

examples:
  difframe tds input.par                         exactly as `tds2el input.par`
  difframe tds input.par --dry-run               check input.par and open every frame and file, run nothing
  mpiexec -n 4 difframe tds input.par            harvest split over 4 MPI ranks
  difframe tds structure "1~,3(z),2(x)"          the elastic-tensor table (A11 | A12 ...)
  difframe tds structure "1~,3(z),2(x)" --json   {"free": [...], "relations": {...}}
  difframe tds simulate examples/tds/mgo.toml -o mgo-run   synthetic frames with known constants

exit status: 0 done, 2 bad input file or parameters (CGUESS missing included), 1 failure while running."""


def add_arguments(parser) -> None:
    parser.add_argument("target", metavar="INPUT.par | structure | simulate", help="tds2el input file or an action")
    parser.add_argument("argument", nargs="?", help="generators for `structure`, the spec file for `simulate`")
    parser.add_argument("--json", action="store_true", help="structure: print JSON")
    parser.add_argument("-o", "--output", help="simulate: output folder")
    parser.add_argument("--dry-run", action="store_true",
                        help="read and check input.par, open (not load) every input file, run nothing")


def main(args) -> int:
    from difframe.errors import UsageError

    if args.target == "structure":
        return _structure(args)
    if args.target == "simulate":
        return _simulate(args)
    if args.argument is not None:
        raise UsageError(f"unexpected argument {args.argument!r} after the input file")
    return _run(args)


def _structure(args) -> int:
    from difframe.crystal.symmetry import elastic_structure
    from difframe.errors import UsageError

    if not args.argument:
        raise UsageError('give the generators: difframe tds structure "1~,3(z),2(x)"')
    structure = elastic_structure(args.argument)
    if args.json:
        print(json.dumps(structure.to_json()))
    else:
        print(structure.table())
    return 0


def _simulate(args) -> int:
    from difframe.errors import UsageError
    from difframe.tds import simulate

    if not args.argument or not args.output:
        raise UsageError("usage: difframe tds simulate SPEC.toml -o DIR")
    written = simulate.simulate_from_file(args.argument, args.output)
    print(f"simulated frames and input files written to {written}")
    return 0


def _run(args) -> int:
    from difframe.cli import verbosity
    from difframe.errors import UsageError
    from difframe.run import Run
    from difframe.tds.config import read_tds_config

    target = Path(args.target)
    if not target.is_file():  # the same mistake and exit status as `difframe run` with a missing file
        raise UsageError(f"parameter file {args.target!r} " + ("is not a file" if target.exists() else
                                                              "does not exist"))
    tds = read_tds_config(args.target)
    params = {"tds": tds, "run": target.stem, "dry_run": bool(args.dry_run)}
    level = verbosity(args)
    if level is not None:
        params["verbose_level"] = level
    results = Run(params, strict_plugins=args.strict_plugins).run()
    if args.dry_run:
        print(f"# {args.target}: input files, each opened (not loaded): {len(results['inputs'])}")
        for where, path in results["inputs"]:
            print(f"{where}: {_shown(path)}")
        return 0
    for key in ("hkls", "report"):
        if results.get(key):
            print(results.pop(key))
    results.pop("structure", None)  # printed by the dry run only
    for name, value in results.items():
        print(f"{name}: {_shown(value)}")
    return 0


def _shown(value):
    """A written file's path relative to the working directory when it lies below it (paths are resolved)."""
    if isinstance(value, str) and os.path.isabs(value):
        relative = os.path.relpath(value)
        if not relative.startswith(".."):
            return relative
    return value


def console() -> int:
    """The ``tds2el`` console script: ``tds2el input.par`` = ``difframe tds input.par``."""
    from difframe.cli import main as cli_main

    return cli_main(["tds", *sys.argv[1:]])
