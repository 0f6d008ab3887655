"""The ZeroMQ interaction server: a client steering a real reconstruction, protocol abuse, ports.

Loopback only; every receive has a timeout, and every client runs in a worker
whose result is awaited with a timeout, so a broken server fails, never hangs.
"""

import json
import logging
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import zmq

import difframe
from difframe import Run
from difframe.errors import ParameterError, UsageError
from difframe.manager import PluginManager
from difframe.ptycho import interaction as ia
from difframe.ptycho.ptyr import read_ptyr
from difframe.ptycho.workflow import build_run_model, prepare_scans
from difframe.types import RecipeSpec

from ptycho_truth import true_probe

HOST = "127.0.0.2"
WAIT = 60.0  # seconds a test waits for a client at most


class TruthRecipe:
    """Serves the simulated scan of the engine tests as recipe "truth"."""

    def __init__(self, prep):
        self.prep = prep

    @difframe.hookimpl
    def difframe_recipes(self):
        yield RecipeSpec(name="truth", summary="simulated scan of the tests", prepare=lambda p, ctx: self.prep)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def make_run(tmp_path, simulated, engines, **interaction):
    prep, probe, truth = simulated
    guess = np.abs(true_probe(truth.psize))
    guess *= np.sqrt(prep.data.sum(axis=(1, 2)).mean() / (guess**2).sum())
    params = {
        "run": "t",
        "io": {"paths": {"home": str(tmp_path)}, "autosave": {"active": False}},
        "plotclient": {"dump": False},
        "scans": {"a": {"data": {"source": "truth"}, "illumination": {"model": guess}}},
        "engines": engines,
        "interaction": interaction,
    }
    return Run(params, plugins=PluginManager(plugins=[TruthRecipe(prep)]))


def run_with_client(run, conversation):
    """Run ``run`` while ``conversation(client)`` talks to it from a worker thread; (results, its answer)."""
    address = f"tcp://{HOST}:{run.params.interaction.primary_port}"

    def talk():
        with ia.InteractionClient(address, timeout=WAIT) as client:
            return conversation(client)

    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(talk)
        results = run.run()
        return results, answer.result(timeout=WAIT)


def test_client_fetches_the_final_probe_and_stops_the_run(tmp_path, simulated):
    run = make_run(tmp_path, simulated, {"e1": {"name": "DM", "numiter": 3000, "numiter_contiguous": 2}},
                   primary_port=free_port())

    def conversation(client):  # served in one pause of the run: a consistent state
        first = client.status()
        got = {"probe": client.get("probe"), "object": client.get("object", "a"),
               "positions": client.get("positions"), "error": client.get("error")}
        stopped = client.stop()
        return first, got, stopped, client.status()

    results, (first, got, stopped, last) = run_with_client(run, conversation)
    i = first["iteration"]
    assert first["run"] == "t" and first["engine"] == "DM" and 2 <= i < 3000 and i % 2 == 0
    assert set(first["metrics"]) >= {"fourier_error"} and first["engines"]["e1"]["numiter"] == 3000
    assert first["arrays"]["probe"] == ["a"] and not first["stop_requested"]
    assert stopped["stop_requested"] and last["stop_requested"] and last["iteration"] == i
    r = read_ptyr(results["reconstruction"])
    assert len(r.iter_info) == i  # stopped after the block during which the client spoke
    np.testing.assert_array_equal(got["probe"], r.probes["a"]["data"])
    np.testing.assert_array_equal(got["object"], r.objects["a"]["data"])
    np.testing.assert_array_equal(got["positions"], simulated[0].positions)
    np.testing.assert_array_equal(got["error"], np.array([e["error"] for e in r.iter_info]))
    assert got["probe"].dtype == np.complex64 and got["error"].shape == (i, 3)


def test_client_sets_numiter_of_running_and_later_engines_and_bad_values_are_refused(tmp_path, simulated):
    run = make_run(tmp_path, simulated, {"e1": {"name": "DM", "numiter": 3000, "numiter_contiguous": 2},
                                         "e2": {"name": "ML", "numiter": 50, "numiter_contiguous": 1}},
                   primary_port=free_port())

    def conversation(client):
        i = client.status()["iteration"]
        refused = []
        for path, value in [("engines.e1.numiter", -1), ("engines.e1.numiter", True), ("engines.e1.numiter", "5"),
                            ("engines.e1.fourier_relax_factor", 0.1), ("engines.e2.alpha", 2),
                            ("engines.e9.numiter", 5), ("io.paths.home", "/"), ("engines.e1", 5)]:
            with pytest.raises(ia.RequestRefused) as err:
                client.set(path, value)
            refused.append(str(err.value))
        applied = client.set("engines.e1.numiter", i)  # DM ends after this block
        client.set("engines.e2.numiter", 3)
        client.set("engines.e1.alpha", 1)
        return i, refused, client.status(), applied

    results, (i, refused, status, applied) = run_with_client(run, conversation)
    assert applied == {"ok": True, "path": "engines.e1.numiter", "value": i, "state": "applied"}  # one process
    assert status["engines"]["e1"]["numiter"] == i and status["engines"]["e2"] == {
        "name": "ML", "numiter": 3, "numiter_contiguous": 1, "probe_update_start": 0}
    assert "engines.e1.numiter = -1" in refused[0] and "engines.e1.numiter = True" in refused[1]
    assert "engines.e1.numiter = '5'" in refused[2]
    assert "cannot be changed" in refused[3] and "not a parameter of engine 'ML'" in refused[4]
    assert "no engine labelled 'e9'" in refused[5]
    assert "engines.<label>.<key>" in refused[6] and "engines.<label>.<key>" in refused[7]
    engines = [e["engine"] for e in read_ptyr(results["reconstruction"]).iter_info]
    assert engines == ["DM"] * i + ["ML"] * 3


@pytest.fixture
def idle_server(tmp_path, simulated):
    """A server over a built (not running) model, polled by a thread as the flow would between blocks."""
    run = make_run(tmp_path, simulated, {"e1": {"name": "DM", "numiter": 5}}, primary_port=free_port())
    model = build_run_model(run, prepare_scans(run))
    done, ready, box = threading.Event(), threading.Event(), {}

    def serve():
        server = ia.InteractionServer(run, model, {"iter_info": []}).start()
        box["address"] = server.address
        ready.set()
        try:
            while not done.wait(0.005):
                server.poll()
        finally:
            server.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(WAIT)
    yield box["address"], run
    done.set()
    thread.join(WAIT)


def raw_request(address, frames, timeout=10.0):
    """Send raw frames with a bare REQ socket; the reply header, or None when no reply came in time."""
    context = zmq.Context()
    sock = context.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
    sock.connect(address)
    try:
        sock.send_multipart(frames)
        return json.loads(sock.recv_multipart()[0])
    except zmq.Again:
        return None
    finally:
        sock.close(linger=0)
        context.term()


def test_malformed_unknown_and_oversize_requests_get_an_error_reply(idle_server):
    address, run = idle_server
    cases = {
        b"{not json": "not JSON",
        b"\xff\xfe": "not JSON",
        b"[1, 2]": "JSON object",
        b'{"request": "exec", "code": "import os"}': "unknown request 'exec'",
        b'{"request": "__class__"}': "unknown request",
        b'{"request": "set", "path": "engines.e1.alpha", "value": NaN}': "not a number JSON allows",
        b'{"request": "get", "array": "params"}': "is not one of object, probe",
        b'{"request": "get", "array": "probe", "id": "zz"}': "id 'zz' is not one of 'a'",
        b'{"request": "status", "pad": "' + b"x" * 100_000 + b'"}': "over the limit",
    }
    for frame, expected in cases.items():
        reply = raw_request(address, [frame])
        assert reply["ok"] is False and expected in reply["error"], (frame[:40], reply)
    reply = raw_request(address, [b'{"request": "status"}', b"extra"])
    assert reply["ok"] is False and "one frame" in reply["error"]
    # past ZeroMQ's message limit the connection is dropped: no reply, and the server lives on
    assert raw_request(address, [b"x" * (17 * ia.MAX_REQUEST_BYTES)], timeout=0.5) is None
    with ia.InteractionClient(address, timeout=WAIT) as client:
        status = client.status()
        assert status["iteration"] == 0 and status["engine"] is None
        assert client.get("error").shape == (0, 3)
    assert not run.stop_requested and run.params.engines.e1.alpha == 1


def test_client_times_out_when_nobody_answers():
    with ia.InteractionClient(f"tcp://{HOST}:{free_port()}", timeout=0.2) as client:
        with pytest.raises(TimeoutError, match="no reply"):
            client.status()
        with pytest.raises(TimeoutError):  # the client recovered and can send again
            client.status()


def test_taken_primary_port_moves_to_the_range_and_a_full_range_is_refused(tmp_path, simulated, caplog):
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        port = taken.getsockname()[1]
        run = make_run(tmp_path, simulated, {"e1": {"name": "DM"}}, primary_port=port,
                       port_range=f"{port + 1}:{port + 40}")
        with caplog.at_level(logging.WARNING, logger="difframe.interaction"):
            server = ia.InteractionServer(run, None, {"iter_info": []}).start()
        try:
            chosen = int(server.address.rsplit(":", 1)[1])
            assert server.address.startswith(f"tcp://{HOST}:") and port < chosen <= port + 40
            assert f"port {port} is taken; listening on {server.address}" in caplog.text
        finally:
            server.close()
        full = make_run(tmp_path, simulated, {"e1": {"name": "DM"}}, primary_port=port, port_range=f"{port}:{port}")
        with pytest.raises(UsageError, match="are all taken"):
            ia.InteractionServer(full, None, {"iter_info": []}).start()


def test_addresses_and_port_ranges_are_checked():
    assert ia.is_loopback("127.0.0.2") and ia.is_loopback("localhost") and ia.is_loopback("[::1]")
    assert not ia.is_loopback("*") and not ia.is_loopback("10.1.2.3") and not ia.is_loopback("beamline-pc")
    assert ia.listen_host("tcp://127.0.0.2") == "127.0.0.2"
    for bad in ("127.0.0.2", "ipc:///tmp/x", "tcp://", "tcp://127.0.0.2:5570"):
        with pytest.raises(ParameterError, match="interaction.primary_address"):
            ia.listen_host(bad)
    assert ia.port_candidates(5570, "5571:5573") == [5570, 5571, 5572, 5573]
    assert ia.port_candidates(5571, "5570:5572") == [5571, 5570, 5572]
    for bad in ("5571-5671", "5664:00:00", "5600:5500", "0:10"):
        with pytest.raises(ParameterError, match="interaction.port_range"):
            ia.port_candidates(5570, bad)
