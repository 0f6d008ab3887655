"""``difframe watch`` against a real running reconstruction, headless; ``plotclient.active``'s spawn decision.

The run goes in a thread with its interaction server on loopback; the watcher is
the real command in its own process.  Every wait has a timeout.  Each PNG the
watcher writes must be, pixel for pixel, the picture of the object, probe and
errors the run held at the iteration the PNG names (and not at a later one).
"""

import logging
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from difframe import Run
from difframe.commands import watch
from difframe.ptycho import interaction

HOST = "127.0.0.2"
WAIT = 120.0  # seconds any step of a test waits at most


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def sim_params(home, port, **plotclient):
    """A small simulated far-field scan, DM for long enough to be watched."""
    return {
        "run": "w",
        "io": {"paths": {"home": str(home)}, "autosave": {"active": False}},
        "plotclient": {"dump": False, **plotclient},
        "interaction": {"primary_address": f"tcp://{HOST}", "primary_port": port},
        "scans": {"s": {
            "data": {"source": "sim", "shape": 32, "simulation": {
                "sample": {"model": "image", "process": {"ref_index": "0.5+0.1j"}}}},
            "geometry": {"energy": 6.2, "distance": 7.19, "psize": 172e-6 * 2},
            "xy": {"type": "spiral", "spiral": {"dr": 0.9e-6, "r_out": 3e-6}},
            "illumination": {"photons": 10**7, "aperture": {"form": "circ", "size": 3e-6}},
        }},
        "engines": {"dm": {"name": "DM", "numiter": 10**6, "numiter_contiguous": 2}},
    }


def record_served_states(monkeypatch) -> dict:
    """iteration -> copy of what the run held when its server was polled (a server answers only in polls).

    Every poll first waits (up to WAIT) until a client's request is queued, so that the watcher, however
    slowly this machine runs it, sees the run from its first state to its last, and the server may spend all
    the time it waits serving (a real run does neither: a watcher that falls behind a fast run, or whose
    requests exceed the server's 5 % share, draws the newest whole state it got).
    """
    monkeypatch.setattr(interaction, "SERVE_SHARE", 1.0)
    states = {}
    poll = interaction.InteractionServer.poll

    def recording_poll(self):
        self._socket.poll(int(WAIT * 1000))
        model, info = self.model, self.runtime["iter_info"]
        (oid, st), = model.objects.items()
        states[len(info)] = {
            "objects": {oid: {"data": st.data.copy(), "psize": st.psize.copy()}},  # psize: the scale bars
            "probes": {k: {"data": p.data.copy(), "psize": p.psize.copy()} for k, p in model.probes.items()},
            "iter_info": [{"iteration": e["iteration"], "iterations": e["iterations"], "engine": e["engine"],
                           "error": e["error"].copy()} for e in info],
            "scanned": {oid: np.concatenate([(s.positions - st.origin) / st.psize for s in model.scans])}}
        return poll(self)

    monkeypatch.setattr(interaction.InteractionServer, "poll", recording_poll)
    return states


def picture_of(state, iteration, folder):
    """The watcher's PNG of a recorded state, drawn the same way (``watch.PngView``)."""
    status = {"run": "w", "engine": "DM", "iteration": iteration}
    watch.PngView(folder).show(status, state)
    return np.asarray(Image.open(folder / f"w_{iteration:04d}.png"))


def watch_a_run(tmp_path, monkeypatch, numiter, command):
    """Run the simulated scan for ``numiter`` DM iterations in a thread while ``command`` (a watcher, given the
    server's address) runs in its own process, started first: it waits for the server, as a spawned live view
    does, and ends by itself at the run's last state.  Returns (recorded states, watcher's stdout)."""
    port = free_port()
    states = record_served_states(monkeypatch)
    params = sim_params(tmp_path / "home", port, active=False)
    params["engines"]["dm"]["numiter"] = numiter
    run = Run(params)
    failure = []

    def reconstruct():
        try:
            run.run()
        except BaseException as err:  # reported by the main thread
            failure.append(err)

    watcher = subprocess.Popen(command(f"tcp://{HOST}:{port}"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    worker = threading.Thread(target=reconstruct, daemon=True)
    worker.start()
    try:
        out, err = watcher.communicate(timeout=WAIT)
    finally:
        watcher.kill()
        run.request_stop()
        worker.join(WAIT)
    assert not worker.is_alive() and not failure, failure
    assert watcher.returncode == 0, err
    return states, out


def test_watch_png_shows_the_running_reconstruction_through_its_last_state(tmp_path, monkeypatch):
    states, out = watch_a_run(tmp_path, monkeypatch, 30, lambda address: [
        sys.executable, "-m", "difframe.cli", "watch", address, "--png", str(tmp_path / "live"), "--every", "8",
        "--poll", "0.05", "--timeout", "60"])
    assert "w: finished at iteration 30" in out
    pngs = sorted((tmp_path / "live").glob("w_*.png"))
    iterations = [int(p.stem.split("_")[1]) for p in pngs]
    assert len(pngs) >= 2 and iterations[-1] == 30, iterations  # the last state, whatever --every says
    assert all(b >= a + 8 for a, b in zip(iterations[:-2], iterations[1:-1])), iterations
    redrawn = tmp_path / "redrawn"
    for png, it in zip(pngs, iterations):
        assert np.array_equal(np.asarray(Image.open(png)), picture_of(states[it], it, redrawn)), png.name
    first = iterations[0]
    assert not np.array_equal(np.asarray(Image.open(pngs[0])), picture_of(states[30], first, redrawn))


def test_watch_without_a_run_fails_with_one_message():
    watched = subprocess.run([sys.executable, "-m", "difframe.cli", "watch", f"tcp://{HOST}:{free_port()}",
                              "--png", "unused", "--timeout", "0.5"], capture_output=True, text=True, timeout=WAIT)
    assert watched.returncode == 1
    assert watched.stderr.count("\n") == 1 and "no run answers at tcp://127.0.0.2" in watched.stderr


class _Ranks:
    is_root = True


class _Server:
    address = "tcp://127.0.0.2:5999"


@pytest.mark.parametrize("display, server, spawned, says", [
    ({"DISPLAY": ":0"}, _Server(), True, "live view started (difframe watch tcp://127.0.0.2:5999"),
    ({}, _Server(), False, "no live view, no display"),
    ({"DISPLAY": ":0"}, None, False, "no live view, the run has no interaction server"),
])
def test_plotclient_active_spawns_difframe_watch_only_with_a_display_and_a_server(
        monkeypatch, caplog, tmp_path, display, server, spawned, says):
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "MPLBACKEND"):
        monkeypatch.delenv(name, raising=False)
    for name, value in display.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys, "platform", "linux")
    started = []

    class Popen:
        def __init__(self, command, **kw):
            started.append(command)
            self.pid = 4242

    monkeypatch.setattr(subprocess, "Popen", Popen)
    run = Run(sim_params(tmp_path, 5999, interval=3))
    with caplog.at_level(logging.INFO, logger="difframe.interaction"):
        interaction.start_live_view(run, server, _Ranks())
    assert started == ([[sys.executable, "-m", "difframe.cli", "watch", _Server.address, "--every", "3",
                         "--timeout", str(interaction.LIVE_VIEW_TIMEOUT)]] if spawned else [])
    lines = [r.getMessage() for r in caplog.records if r.name == "difframe.interaction"]
    assert len(lines) == 1 and says in lines[0], lines
    monkeypatch.setattr(sys, "platform", "linux")
    run = Run({**sim_params(tmp_path, 5999), "plotclient": {"active": False}})
    caplog.clear()
    assert interaction.start_live_view(run, server, _Ranks()) is None and not caplog.records


def test_watch_without_png_on_a_headless_machine_says_to_use_png(capsys, monkeypatch):
    from difframe.cli import main

    monkeypatch.setenv("MPLBACKEND", "agg")
    assert main(["watch", f"tcp://{HOST}:{free_port()}", "--timeout", "0.5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no window can be opened (matplotlib backend 'agg'" in err and "--png DIR" in err


def test_the_error_history_a_watcher_rebuilds_is_the_runs_own():
    """engine_runs (status) + the error array (get) give back the run's iter_info: engine, counts, errors."""
    from difframe.ptycho.ptyr import iter_info_entry

    runtime = {"iter_info": []}
    server = interaction.InteractionServer(None, None, runtime)
    chain = [("DM", 3), ("DM", 2), ("ML", 2)]  # two DM engines in a row: a new start, the same name
    for name, numiter in chain:
        for k in range(1, numiter + 1):
            runtime["iter_info"].append(iter_info_entry(k, name, 0.1, {"fourier_error": k * 1.5, "deviance": 2.0},
                                                        iterations=len(runtime["iter_info"]) + 1))
        runs = server._engine_starts()  # asked after every engine: only new records are read
    assert runs == [["DM", 1], ["DM", 4], ["ML", 6]]
    errors = np.array([e["error"] for e in runtime["iter_info"]])
    rebuilt = interaction.error_history(errors, runs, "ML")
    for mine, theirs in zip(rebuilt, runtime["iter_info"], strict=True):
        assert {k: mine[k] for k in ("iteration", "iterations", "engine")} == \
            {k: theirs[k] for k in ("iteration", "iterations", "engine")}
        np.testing.assert_array_equal(mine["error"], theirs["error"])


def test_window_view_updates_one_image_and_ends_when_its_window_is_closed(monkeypatch):
    """The window path under Agg (no display here): each state replaces the image; closing ends the wait."""
    import matplotlib.pyplot as plt

    monkeypatch.setattr(watch, "_HEADLESS_BACKENDS", ())
    view = watch.WindowView()
    rng = np.random.default_rng(0)
    snap = {"objects": {"s": np.exp(1j * rng.random((1, 24, 24)))}, "probes": {"s": rng.random((1, 16, 16)) + 0j},
            "iter_info": [{"iteration": 1, "iterations": 1, "engine": "DM", "error": np.ones(3)}], "scanned": {}}
    view.show({"run": "w", "engine": "DM", "iteration": 1}, snap)
    first = view.image.get_array().copy()
    snap["objects"]["s"] = snap["objects"]["s"] * 0.5
    view.show({"run": "w", "engine": "DM", "iteration": 2}, snap)
    assert view.pictures == 2 and len(view.axes.images) == 1 and not np.array_equal(view.image.get_array(), first)
    plt.close(view.figure)
    view.finish("w: ended")  # returns at once: the window is closed
    assert not view.open


#: run under xvfb-run: the real `difframe watch` in a window (TkAgg on the virtual screen); at the run's last state
#: it grabs the screen instead of waiting for the window to be closed, and says how large the window's picture is
WINDOW_HELPER = """
import os, sys
import matplotlib
matplotlib.use("TkAgg")
from PIL import ImageGrab
from difframe import cli
from difframe.commands import watch

def finish(self, title):
    self.idle(1.0)  # let the window draw its last picture (and take its size once the screen's dpi is known)
    self.idle(0.3)
    ImageGrab.grab(xdisplay=os.environ["DISPLAY"]).save(sys.argv[2])
    width, height = self.figure.get_size_inches() * self.figure.dpi
    print("window picture", round(width), round(height), flush=True)

watch.WindowView.finish = finish
sys.exit(cli.main(["watch", sys.argv[1], "--poll", "0.05", "--timeout", "60"]))
"""


def _window_mode_available() -> bool:
    import importlib.util
    import shutil

    return bool(shutil.which("xvfb-run")) and importlib.util.find_spec("tkinter") is not None


@pytest.mark.skipif(not _window_mode_available(), reason="needs xvfb-run (Debian: apt-get install xvfb) and tkinter")
def test_watch_window_on_a_virtual_screen_shows_the_running_reconstruction(tmp_path, monkeypatch):
    """The window mode for real (TkAgg on an Xvfb screen of 1000 x 700, smaller than the picture): at the run's
    last state the screen shows, from its top-left corner, the picture of the state the run held then, shrunk
    to fit (aspect kept).  CI machines without xvfb skip this; tests above cover the window's logic under Agg."""
    (tmp_path / "helper.py").write_text(WINDOW_HELPER)
    shot = tmp_path / "screen.png"
    states, out = watch_a_run(tmp_path, monkeypatch, 10, lambda address: [
        "xvfb-run", "-a", "-s", "-screen 0 1000x700x24", sys.executable, str(tmp_path / "helper.py"), address,
        str(shot)])
    assert "w: finished at iteration 10" in out
    width, height = (int(v) for v in out.split("window picture")[1].split()[:2])
    picture = Image.fromarray(picture_of(states[10], 10, tmp_path / "drawn")).convert("RGB")
    assert width <= 0.9 * 1000 + 1 and height <= 0.9 * 700 + 1  # shrunk to the screen
    assert abs(width / height - picture.width / picture.height) < 0.02  # aspect kept
    screen = np.asarray(Image.open(shot).convert("L"), float)[:height, :width]
    want = np.asarray(picture.resize((width, height), Image.Resampling.BILINEAR).convert("L"), float)
    assert screen.std() > 10  # a picture, not an empty screen
    assert np.corrcoef(screen.ravel(), want.ravel())[0, 1] > 0.9
