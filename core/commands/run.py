"""``difframe run``: execute parameter files."""

from __future__ import annotations

import json
import sys

HELP = "run a reconstruction or fit from parameter files"
DESCRIPTION = """\
Run difframe on one or more parameter files (TOML, JSON or YAML). Later files
and -p overrides win over earlier ones. Paths follow the parameter reference
(`difframe params`): scans.<label>.*, engines.<label>.* and the rest.

examples:
  difframe run examples/ptycho_sim.toml
  difframe run scan.toml -p engines.e1.numiter=300 -p 'scans.moon.data.dfile="moon.ptyd"'
  difframe run scan.toml --engine DM --engine ML     # replace the engines by these, in order
  difframe run examples/patterns.toml --dry-run      # validate, print tree and positions, open every
                                                     # input file (not loaded), write nothing

exit status: 0 done, 2 bad usage or parameters, 1 failure while running."""


def add_arguments(parser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="parameter files (.toml, .json, .yaml)")
    parser.add_argument("-p", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                        help="set one parameter; VALUE is a TOML literal (repeatable)")
    parser.add_argument("--engine", dest="engines", action="append", default=[], metavar="NAME",
                        help="run these engines in order instead of the file's engines (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="validate, print the resolved tree and positions, open (not load) "
                        "every input file; run and write nothing")
    parser.add_argument("--json", action="store_true", help="print the dry-run report or the results as JSON")


def main(args) -> int:
    from difframe.cli import verbosity
    from pathlib import Path

    from difframe.params import merge_sources, parse_override
    from difframe.run import Run

    overrides = [parse_override(text) for text in args.overrides]
    level = verbosity(args)
    if level is not None:
        overrides.append({"verbose_level": level})
    if args.dry_run:
        overrides.append({"dry_run": True})
    merged = merge_sources([*args.files, *overrides])
    merged.setdefault("run", Path(args.files[0]).stem)
    if args.engines:  # replace the files' engines, in the order given
        merged["engines"] = {f"engine_{i:02d}": {"name": name} for i, name in enumerate(args.engines)}
    run = Run(merged, strict_plugins=args.strict_plugins)
    results = run.run()
    if run.params.dry_run:
        _print_dry_run(results, as_json=args.json)
    elif args.json:
        json.dump({k: str(v) for k, v in results.items()}, sys.stdout, indent=2)
        print()
    else:
        for name, value in results.items():
            print(f"{name}: {value}")
    return 0


def _print_dry_run(report, as_json: bool) -> None:
    import numpy as np

    params = report["params"].to_dict()
    positions = {label: None if pos is None else np.asarray(pos).tolist() for label, pos in report["positions"].items()}
    inputs = [{"parameter": where, "file": path} for where, path in report["inputs"]]
    if as_json:
        json.dump({"params": params, "positions": positions, "inputs": inputs}, sys.stdout, indent=1,
                  default=_json_default)
        print()
        return
    print("# resolved parameter tree")
    for path, value in _flatten(params):
        print(f"{path} = {_show(value)}")
    print()
    print(f"# input files, each opened (not loaded): {len(inputs)}")
    for item in inputs:
        print(f"{item['parameter']}: {item['file']}")
    for label, pos in report["positions"].items():
        print()
        if pos is None:
            print(f"# scans.{label}: positions come with the data (scan.xy.type = None)")
            continue
        print(f"# scans.{label}: {len(pos)} positions [m]  (y, x)")
        for i, (y, x) in enumerate(pos):
            print(f"{i:6d}  {y: .6e}  {x: .6e}")


def _flatten(tree, prefix=""):
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from _flatten(value, path + ".")
        else:
            yield path, value


def _show(value) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if value is None:
        return "None"
    return repr(value)


def _json_default(value):
    if isinstance(value, complex):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
