"""Progress of long work: a live bar on a terminal, a plain log line every so often otherwise.

The bars are tqdm's (the progress meter most scientific Python uses: rate,
ETA and terminal handling done right, no dependencies of its own).  Off a
terminal tqdm still does the arithmetic, but writes through the
``difframe.progress`` logger, at most one line every :data:`INTERVAL` seconds
plus the last, so batch logs stay readable.  Only rank 0 of an MPI run reports,
and ``verbose_level = 0`` (``-q``) silences it: a silent :class:`Progress`
hands out bars that do nothing.

``difframe.progress`` logs at INFO even at the default ``verbose_level`` 1,
so a run says at its start what it runs and at its end what it wrote.
"""

from __future__ import annotations

import contextlib
import logging
import sys

log = logging.getLogger("difframe.progress")

#: seconds between the plain progress lines written when the output is not a terminal
INTERVAL = 10.0

_PLAIN_FORMAT = "{desc}: {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
_PLAIN_OPEN = "{desc}: {n_fmt} {unit} [{elapsed}, {rate_fmt}{postfix}]"  # no total known: no ETA


class _LogLines:
    """The file tqdm writes to off a terminal: each refreshed line becomes one log record (repeats dropped)."""

    def __init__(self):
        self._last = None

    def write(self, text: str) -> None:
        text = text.strip("\r\n ")
        if text and text != self._last:
            self._last = text
            log.info("%s", text)

    def flush(self) -> None:
        pass


class _Silent:
    """A bar that shows nothing (quiet runs, other MPI ranks)."""

    def update(self, n: int = 1, **metrics) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Bar(_Silent):
    """One tqdm bar; ``update(n, deviance=...)`` advances it and shows the metrics given."""

    def __init__(self, desc: str, total: int | None, unit: str, terminal: bool):
        from tqdm import tqdm

        options = dict(desc=desc, total=total, unit=unit, dynamic_ncols=True, leave=True)
        self._plain = not terminal
        if terminal:
            self._bar = tqdm(file=sys.stderr, **options)
        else:
            self._bar = tqdm(file=_LogLines(), mininterval=INTERVAL, miniters=1,
                             bar_format=_PLAIN_OPEN if total is None else _PLAIN_FORMAT,
                             delay=1e-9, **options)  # no line before the first step

    def update(self, n: int = 1, **metrics) -> None:
        if metrics:
            self._bar.set_postfix(metrics, refresh=False)
        self._bar.update(n)

    def close(self) -> None:
        if self._plain and self._bar.last_print_n == self._bar.n:
            self._bar.leave = False  # the last line already said it all
        self._bar.close()


class Progress:
    """Where a run reports its progress; ``enabled=False`` makes every bar and message silent."""

    def __init__(self, enabled: bool = True, terminal: bool | None = None):
        self.enabled = enabled
        self.terminal = sys.stderr.isatty() if terminal is None else terminal

    def bar(self, desc: str, total: int | None = None, unit: str = "it") -> _Silent:
        """A bar for ``total`` steps of ``unit`` (use as a context manager, or close it)."""
        return Bar(desc, total, unit, self.terminal) if self.enabled else _Silent()

    @contextlib.contextmanager
    def session(self):
        """While bars are live on the terminal, log records print above them instead of through them."""
        if not (self.enabled and self.terminal):
            yield
            return
        from tqdm.contrib.logging import logging_redirect_tqdm

        with logging_redirect_tqdm(loggers=[logging.getLogger("difframe")]):
            yield

    def say(self, message: str, *args) -> None:
        """One line at the default verbosity: what a run does, where it writes, what it wrote."""
        if self.enabled:
            log.info(message, *args)


def configure(verbose_level: int, is_root: bool = True) -> Progress:
    """The :class:`Progress` of a run at ``verbose_level`` (0 silences) on this MPI rank."""
    enabled = verbose_level >= 1 and is_root
    log.setLevel(logging.INFO if enabled else logging.WARNING)
    return Progress(enabled)


def of_context(context) -> Progress:
    """The :class:`Progress` a recipe reports to: the context's own (``context.progress``), else one made from
    the run's ``verbose_level`` and MPI rank (``context.params``, ``context.ranks``; silent when unknown)."""
    given = getattr(context, "progress", None)
    if isinstance(given, Progress):
        return given
    params = getattr(context, "params", None)
    level = getattr(params, "verbose_level", None) if params is not None else None
    ranks = getattr(context, "ranks", None)
    return Progress(isinstance(level, int) and level >= 1 and (ranks is None or ranks.is_root))
