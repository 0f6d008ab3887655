"""``difframe watch``: the live view of a running reconstruction, through its interaction server."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

HELP = "show a running reconstruction live: object, probe modes, error curves"
DESCRIPTION = """\
Connect to the interaction server of a running ptychography run (the run must
have an `interaction` section; it logs the address it listens on) and show the
object amplitude and phase, the probe modes and the error curves as the run
goes: in a matplotlib window, or, with --png DIR, as one PNG per picture
(headless).  A request for the run's whole state always waits at its server,
so each pause between blocks of engine.numiter_contiguous iterations can
answer it; a picture is drawn from a state served in one pause only, when
--every more iterations were done, and for the run's last state.  The
watch ends when the run has finished, or has not answered for --timeout
seconds (a window stays open until it is closed).  Watching takes at most the
server's serving share (5 %) of the run's time; a watcher slower than a fast
run draws the newest whole state it got.

examples:
  difframe watch                                   the default address tcp://127.0.0.2:5570
  difframe watch tcp://127.0.0.2:5571 --png live   one picture per new state into live/
  difframe watch --png live --every 20 --count 5   every 20 iterations, 5 pictures, then stop"""

DEFAULT_ADDRESS = "tcp://127.0.0.2:5570"
#: seconds between a reply and the next request: a server that has answered waits up to its conversation time
#: (200 ms) for a client's next request, and one sent then would only fetch the same state again
RESEND_S = 0.25
#: matplotlib backends that draw no window
_HEADLESS_BACKENDS = ("agg", "cairo", "pdf", "pgf", "ps", "svg", "template")

log = logging.getLogger("difframe.watch")


def add_arguments(parser) -> None:
    parser.add_argument("address", nargs="?", default=DEFAULT_ADDRESS, metavar="ADDRESS",
                        help=f"the run's interaction server, tcp://HOST:PORT (default {DEFAULT_ADDRESS})")
    parser.add_argument("--png", metavar="DIR", help="write PNGs into DIR instead of opening a window")
    parser.add_argument("--every", type=int, default=1, metavar="N",
                        help="draw when the run has done at least N iterations since the last picture (default 1)")
    parser.add_argument("--count", type=int, metavar="K", help="stop after K pictures (default: until the run ends)")
    parser.add_argument("--poll", type=float, default=0.5, metavar="S",
                        help="seconds between looks at the newest state (default 0.5)")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="S",
                        help="seconds the run may leave a request unanswered before the watch ends (default 30)")


def main(args) -> int:
    from difframe.errors import DifframeError, UsageError
    from difframe.ptycho.interaction import InteractionClient

    for name in ("every", "count", "poll", "timeout"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise UsageError(f"--{name} {value}: must be positive")
    view = PngView(Path(args.png)) if args.png else WindowView()
    with InteractionClient(args.address, timeout=args.timeout) as client:
        try:
            status = client.status(view.idle)
        except TimeoutError:
            raise DifframeError(f"no run answers at {args.address} within {args.timeout} s: is it running with "
                                f"an interaction section? It logs the address it listens on") from None
    fetcher = Fetcher(args.address, args.timeout, status)
    fetcher.start()
    drawn = None  # iteration of the last picture
    try:
        while view.open and (args.count is None or view.pictures < args.count):
            status, whole, failure = fetcher.latest()
            if whole is not None:
                shown, snap = whole  # a state served in one pause, with its own status
                last = finished(shown) or failure is not None
                if shown["iteration"] != drawn and (drawn is None or shown["iteration"] >= drawn + args.every
                                                     or last):
                    view.show(shown, snap)
                    drawn = shown["iteration"]
                if finished(shown):
                    print(f"{shown['run']}: finished at iteration {drawn}")
                    view.finish(f"{shown['run']}: finished at iteration {drawn}")
                    break
            if failure is not None:
                print(f"{status['run']}: no answer for {args.timeout} s after iteration {status['iteration']}; "
                      f"the run has ended (or is busy longer than --timeout)")
                view.finish(f"{status['run']}: ended after iteration {status['iteration']}")
                break
            view.idle(args.poll)
    finally:
        fetcher.stop()
    print(f"{view.pictures} picture(s)" + (f" in {args.png}" if args.png else ""))
    return 0


class Fetcher(threading.Thread):
    """Asks the run's server for its whole state again ``RESEND_S`` after each answer, so that a request waits
    at the run's pauses (its last included) however long drawing takes; :meth:`latest` is the newest state."""

    def __init__(self, address: str, timeout: float, status: dict):
        super().__init__(name="difframe-watch-fetcher", daemon=True)
        self.address, self.timeout = address, timeout
        self._lock, self._stopped = threading.Lock(), threading.Event()
        self._status, self._whole, self._failure = status, None, None

    def latest(self) -> tuple[dict, tuple[dict, dict] | None, Exception | None]:
        """(newest status, (status, state) of the newest state served in one pause or None, the failure that
        ended fetching or None)."""
        with self._lock:
            return self._status, self._whole, self._failure

    def stop(self) -> None:
        self._stopped.set()
        self.join(self.timeout + 1)

    def _check_stop(self) -> None:
        if self._stopped.is_set():
            raise _Stopped

    def run(self) -> None:
        from difframe.ptycho.interaction import InteractionClient, parse_snapshot, snapshot_requests

        status = self._status
        with InteractionClient(self.address, timeout=self.timeout) as client:
            while True:
                try:
                    pending = client.send(snapshot_requests(status))
                    status, snap = parse_snapshot(status, pending.collect(self._check_stop))
                except _Stopped:
                    return
                except Exception as err:  # a timeout, a refusal: the watch ends with the newest state it has
                    with self._lock:
                        self._failure = err
                    return
                whole = snap["iteration"] == status["iteration"]  # else the run moved on while serving it
                with self._lock:
                    self._status = status
                    if whole:
                        self._whole = (status, snap)
                if whole and finished(status) or self._stopped.wait(RESEND_S):
                    return


class _Stopped(Exception):
    """The watch no longer needs the fetcher."""


def planned(status: dict) -> int:
    """Iterations the run's engines will do in all (as the run was told when ``status`` was taken)."""
    return sum(int(e.get("numiter", 0)) for e in status["engines"].values())


def finished(status: dict) -> bool:
    """The state of ``status`` is the run's last: a stop was asked for, or every engine has done its work."""
    return bool(status["stop_requested"]) or status["iteration"] >= planned(status)


def figure(status: dict, snap: dict):
    """The picture of ``difframe plot`` for one state of a run (a matplotlib Figure)."""
    from difframe.ptycho.plotting import draw

    engine = status.get("engine") or "starting"
    return draw(snap["objects"], snap["probes"], snap["iter_info"],
                f"{status['run']}: {engine}, iteration {status['iteration']} (live)", snap["scanned"])


class PngView:
    """One PNG per picture, ``DIR/<run>_<iteration>.png`` (written atomically)."""

    def __init__(self, folder: Path):
        self.folder, self.pictures, self.open = folder, 0, True
        folder.mkdir(parents=True, exist_ok=True)

    def show(self, status: dict, snap: dict) -> None:
        from difframe.fileio import atomic_path

        fig = figure(status, snap)
        path = self.folder / f"{status['run']}_{status['iteration']:04d}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=80)
        self.pictures += 1
        log.info("wrote %s", path)

    def idle(self, seconds: float = 0.0) -> None:
        time.sleep(seconds)

    def finish(self, title: str) -> None:
        pass


class WindowView:
    """A matplotlib window showing the latest picture; closing it ends the watch."""

    def __init__(self):
        from difframe.errors import UsageError

        import matplotlib.pyplot as plt

        backend = plt.get_backend().lower()
        if backend in _HEADLESS_BACKENDS:
            raise UsageError(f"no window can be opened (matplotlib backend {backend!r}, no display?): "
                             f"use --png DIR to write pictures instead")
        self.plt, self.pictures, self.image, self._pixels = plt, 0, None, None
        self.figure = plt.figure("difframe watch")
        self.axes = self.figure.add_axes((0, 0, 1, 1))
        self.axes.set_axis_off()
        self.axes.set_title("waiting for the run", y=0.5)
        plt.show(block=False)

    @property
    def open(self) -> bool:
        return self.plt.fignum_exists(self.figure.number)

    def show(self, status: dict, snap: dict) -> None:
        import numpy as np
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        canvas = FigureCanvasAgg(figure(status, snap))  # drawn off screen, shown as one image: the window
        canvas.draw()                                    # shows what --png would write
        rgba = np.asarray(canvas.buffer_rgba()).copy()
        if self.image is None or self.image.get_array().shape != rgba.shape:
            self.axes.clear()
            self.axes.set_axis_off()
            self.image = self.axes.imshow(rgba)
            # the picture's own size, shrunk (aspect kept) to 90 % of the screen: larger, the window's right and
            # bottom would lie off screen (seen on a 1400 x 1000 virtual screen)
            scale = min([1.0, *(0.9 * s / n for s, n in zip(self._screen(), rgba.shape[1::-1]))])
            self._pixels = (round(scale * rgba.shape[1]), round(scale * rgba.shape[0]))
            self._fit()
        else:
            self.image.set_data(rgba)
        self.pictures += 1

    def _fit(self) -> None:
        """Size the window's picture to ``_pixels`` screen pixels; the toolkit may change the figure's dpi once
        the window is on screen (Tk: to the screen's pixels per inch), so :meth:`idle` checks it again."""
        if self._pixels is None:
            return
        dpi = self.figure.dpi
        now = self.figure.get_size_inches() * dpi
        if abs(now[0] - self._pixels[0]) > 1 or abs(now[1] - self._pixels[1]) > 1:
            self.figure.set_size_inches(self._pixels[0] / dpi, self._pixels[1] / dpi, forward=True)

    def _screen(self) -> tuple[int, ...]:
        """(width, height) of the screen in pixels where the window's toolkit says (Tk, Qt), else ()."""
        window = getattr(self.figure.canvas.manager, "window", None)
        try:
            if hasattr(window, "winfo_screenwidth"):  # Tk
                return window.winfo_screenwidth(), window.winfo_screenheight()
            size = window.screen().availableSize()  # Qt
            return size.width(), size.height()
        except Exception:  # another toolkit, or none: the picture's own size
            return ()

    def idle(self, seconds: float = 0.0) -> None:
        """Let the window answer its user for ``seconds``."""
        if self.open:
            self._fit()
            self.plt.pause(max(seconds, 0.01))
            self._fit()  # shown at the next pause
        else:
            time.sleep(seconds)

    def finish(self, title: str) -> None:
        """Keep the last picture on screen until the window is closed."""
        if self.open:
            self.figure.canvas.manager.set_window_title(title)
        while self.open:
            self.idle(0.2)
