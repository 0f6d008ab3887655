"""The ``difframe`` command line: a thin layer over the library.

Sub-commands live in :mod:`difframe.commands` and are imported only when
chosen, so ``difframe --help`` starts without numpy or any plugin.  Each
sub-command module defines ``HELP`` (one line), ``DESCRIPTION`` (what
``difframe CMD --help`` teaches), ``add_arguments(parser)`` and
``main(args) -> int``.

Exit status: 0 success, 2 usage or validation error, 1 runtime failure.  Errors
print one message on stderr, without a traceback (``-vv`` shows it).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from difframe import __version__
from difframe.errors import DifframeError, UsageError

#: sub-command -> (module, one-line help); the order is the order of --help
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": ("difframe.commands.run", "run a reconstruction or fit from parameter files"),
    "list-plugins": ("difframe.commands.list_plugins", "show installed plugins, their kinds and status"),
    "params": ("difframe.commands.params", "document the parameter tree (or one subtree)"),
    "watch": ("difframe.commands.watch", "show a running reconstruction live: object, probe modes, error curves"),
    "plot": ("difframe.commands.plot", "draw a .ptyr reconstruction: object, probe modes, error curves"),
    "inspect": ("difframe.commands.inspect", "show a detector frame's shape, dtype and header metadata"),
    "tds": ("difframe.commands.tds", "TDS elastic constants as tds2el ran them: harvest, fit, structure, simulate"),
}

EPILOG = """\
examples:
  difframe run examples/ptycho_sim.toml            simulate a scan, reconstruct with DM then ML
  difframe run scan.toml -p engines.e1.numiter=300 override a parameter (value is a TOML literal)
  difframe run examples/patterns.toml --dry-run    validate, print the resolved tree and positions
  difframe list-plugins --kind engine --json       machine-readable plugin table
  difframe params scan.xy                          document the scan-pattern parameters

Each sub-command has its own --help."""


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="difframe",
        description="Inverse problems on X-ray detector data: ptychography and elastic constants "
        "from thermal diffuse scattering, built from plugins.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"difframe {__version__}")
    _add_common(parser)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        if only is not None and name == only:
            module = importlib.import_module(module_name)
            sub = subparsers.add_parser(
                name,
                help=help_text,
                description=getattr(module, "DESCRIPTION", help_text),
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
            _add_common(sub, suppress=True)
            module.add_arguments(sub)
            sub.set_defaults(_module=module)
        else:
            subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


def _add_common(parser: argparse.ArgumentParser, suppress: bool = False) -> None:
    default = argparse.SUPPRESS if suppress else 0
    parser.add_argument("-v", "--verbose", action="count", default=default, help="more log output (repeatable)")
    parser.add_argument("-q", "--quiet", action="count", default=default, help="less log output (repeatable)")
    parser.add_argument(
        "--strict-plugins",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="fail when any plugin fails to load, instead of listing it as failed",
    )


def verbosity(args: argparse.Namespace) -> int | None:
    """``verbose_level`` asked for with -v/-q (1 + v - q), or None when neither was given."""
    if not args.verbose and not args.quiet:
        return None
    return max(0, min(3, 1 + args.verbose - args.quiet))


def configure_logging(level: int) -> None:
    """Map ``verbose_level`` (0 errors .. 3 debug) onto the ``difframe`` logger."""
    levels = {0: logging.ERROR, 1: logging.WARNING, 2: logging.INFO, 3: logging.DEBUG}
    logger = logging.getLogger("difframe")
    logger.setLevel(levels[max(0, min(3, level))])
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


class _Formatter(logging.Formatter):
    """Progress lines (``difframe.progress`` at INFO) read as plain sentences; other records say who logs."""

    def format(self, record: logging.LogRecord) -> str:
        if record.name == "difframe.progress" and record.levelno == logging.INFO:
            return record.getMessage()
        return super().format(record)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=chosen if chosen in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    level = verbosity(args)
    configure_logging(1 if level is None else level)
    from difframe import parallel

    try:
        with parallel.ending_jobs_here():  # a failure other MPI ranks would wait on is worded and ended in _fail
            return int(args._module.main(args) or 0)
    except UsageError as exc:
        return _fail(exc, args, 2)
    except DifframeError as exc:
        return _fail(exc, args, 1)
    except KeyboardInterrupt as exc:  # under MPI a rank interrupted outside a collective would strand the others
        if parallel.stranded(exc):
            parallel.end_job(exc, lambda who: print(f"difframe: interrupted ({who})", file=sys.stderr))
        print("difframe: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head`: not an error of ours
        sys.stderr.close()
        return 0
    except Exception as exc:  # an unexpected failure is still one message, not a traceback
        return _fail(exc, args, 1, unexpected=True)


def _fail(exc: BaseException, args: argparse.Namespace, status: int, unexpected: bool = False) -> int:
    """Report once per job; under MPI, a failure other ranks may be waiting on ends every rank (MPI_Abort)."""
    from difframe import parallel

    if parallel.stranded(exc):
        parallel.end_job(exc, lambda who: _report(exc, args, unexpected, who))
    if parallel.reports(exc):
        _report(exc, args, unexpected)
    return status


def _report(exc: BaseException, args: argparse.Namespace, unexpected: bool = False, who: str = "") -> None:
    prefix = f"difframe {args.command}: "
    message = f"{type(exc).__name__}: {exc}" if unexpected else str(exc)
    print(prefix + (f"error ({who}): " if who else "error: ") + message, file=sys.stderr)
    if args.verbose >= 2:
        import traceback

        traceback.print_exception(exc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
