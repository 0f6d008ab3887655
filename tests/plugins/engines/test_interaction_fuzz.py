"""The interaction server against hostile and greedy clients (issue 10).

Each probe of the issue has a test: malformed frame sequences (a DEALER without
the empty delimiter), random bytes on the port, JSON nested 30 000 deep, ``get``
with a list or dict id, ``set`` with huge, infinite, NaN, out-of-limit or
wrongly typed values, and a client that polls every 0.1 s.  Then hypothesis
fuzzes frames and JSON requests.  Every test checks that the serving loop
survives, keeps answering, and writes no traceback.

Timing is never asserted directly: starvation is measured as blocks of
simulated work done while a client talks, and as the server's own account of
the time it spent serving.
"""

import json
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import difframe
from difframe import Run
from difframe.manager import PluginManager
from difframe.ptycho import interaction as ia
from difframe.ptycho.ptyr import read_ptyr
from difframe.ptycho.workflow import build_run_model, prepare_scans
from difframe.types import RecipeSpec

from ptycho_truth import true_probe

HOST = "127.0.0.2"
WAIT = 30.0


class TruthRecipe:
    def __init__(self, prep):
        self.prep = prep

    @difframe.hookimpl
    def difframe_recipes(self):
        yield RecipeSpec(name="truth", summary="simulated scan of the tests", prepare=lambda p, ctx: self.prep)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def make_run(home, simulated, engines):
    prep, probe, truth = simulated
    guess = np.abs(true_probe(truth.psize))
    guess *= np.sqrt(prep.data.sum(axis=(1, 2)).mean() / (guess**2).sum())
    params = {
        "run": "t",
        "io": {"paths": {"home": str(home)}, "autosave": {"active": False}},
        "plotclient": {"dump": False},
        "scans": {"a": {"data": {"source": "truth"}, "illumination": {"model": guess}}},
        "engines": engines,
        "interaction": {"primary_port": free_port()},
    }
    return Run(params, plugins=PluginManager(plugins=[TruthRecipe(prep)]))


class Served:
    """A server over a built model, polled by a thread between blocks of simulated work (``work`` seconds)."""

    def __init__(self, run, model, work=0.005):
        self.run, self.work = run, work
        self.server = ia.InteractionServer(run, model, {"iter_info": []}).start()
        self.address = self.server.address
        self.blocks, self.failure, self._done = 0, None, threading.Event()
        self.poll_seconds, self.served = [], []
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self):
        try:
            while not self._done.is_set():
                time.sleep(self.work)  # a block of iterations
                self.blocks += 1
                start = time.perf_counter()
                self.served.append(self.server.poll())
                self.poll_seconds.append(time.perf_counter() - start)
        except BaseException as err:  # what would end the reconstruction
            self.failure = err

    def alive(self) -> bool:
        return self.failure is None and self._thread.is_alive()

    def close(self):
        self._done.set()
        self._thread.join(WAIT)
        self.server.close()


@pytest.fixture(scope="module")
def built(tmp_path_factory, simulated):
    run = make_run(tmp_path_factory.mktemp("fuzz"), simulated, {"e1": {"name": "DM", "numiter": 5},
                                                               "e2": {"name": "ML", "numiter": 5}})
    return run, build_run_model(run, prepare_scans(run))


@pytest.fixture(scope="module")
def served(built):
    s = Served(*built)
    yield s
    s.close()


def request(address, frames, timeout=5.0):
    """Raw frames through a bare REQ socket; the reply header, or None when none came in time."""
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


def ask(address, message: dict):
    return request(address, [json.dumps(message).encode()])


def assert_healthy(s: Served, caplog=None):
    """The loop lives, answers a plain status, and nothing logged carries a traceback or a second line."""
    assert s.alive(), f"the serving loop ended: {s.failure!r}"
    reply = ask(s.address, {"request": "status"})
    assert reply is not None and reply["ok"], reply
    assert s.alive(), f"the serving loop ended: {s.failure!r}"
    if caplog is not None:
        for record in caplog.records:
            assert record.exc_info is None and "\n" not in record.getMessage(), record.getMessage()[:200]
            assert record.levelno <= logging.WARNING


def dealer(address):
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    sock.connect(address)
    return context, sock


# -- frames --------------------------------------------------------------------------------------

def test_dealer_frames_without_the_empty_delimiter_do_not_end_the_run(served, caplog):
    context, sock = dealer(served.address)
    try:
        for frames in ([b"x"], [b'{"request": "status"}'], [b"a", b"b", b"c"], [b"x", b""]):
            sock.send_multipart(frames)
            time.sleep(0.05)  # several polls
            assert served.alive(), f"{frames}: the serving loop ended: {served.failure!r}"
        # [b"x", b""] reads as a routing envelope with no request: that one is answered (through the envelope)
        hop, empty, header = sock.recv_multipart()
        assert (hop, empty) == (b"x", b"") and "got 0 frames" in json.loads(header)["error"]
        sock.send_multipart([b"", b'{"request": "status"}'])  # a DEALER that follows the envelope is answered
        empty, header = sock.recv_multipart()
        assert empty == b"" and json.loads(header)["ok"]
    finally:
        sock.close(linger=0)
        context.term()
    assert_healthy(served, caplog)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_mebibyte_of_random_bytes_on_the_port_does_not_end_the_run(served, caplog, seed):
    host, port = served.address[len("tcp://"):].rsplit(":", 1)
    junk = np.random.default_rng(seed).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
    if seed == 2:  # no ZMTP 3 signature: read as ZMTP 1.0, where random bytes make frames
        junk = b"\x01\x00" + junk
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        try:
            raw.sendall(junk)
        except OSError:
            pass  # the server may close the connection: that is allowed
        time.sleep(0.2)
    assert_healthy(served, caplog)


def test_bad_messages_are_logged_one_line_each_and_rate_limited(built, caplog):
    s = Served(*built)  # a fresh server: its own warning budget
    try:
        with caplog.at_level(logging.INFO, logger="difframe.interaction"):
            for k in range(40):
                request(s.address, [b"{bad json\n" + str(k).encode()])
        assert_healthy(s, caplog)
    finally:
        s.close()  # logs how many warnings it held back
    lines = [r.getMessage() for r in caplog.records if r.name == "difframe.interaction"
             and r.levelno == logging.WARNING and r.getMessage().startswith("interaction: ")]
    assert len(lines) == ia.WARNINGS_PER_WINDOW + 1, lines
    assert "not JSON" in lines[0] and "35 more refused or malformed messages were not logged" in lines[-1]


def test_several_frames_and_oversize_frames_are_refused_with_a_reason(served, caplog):
    reply = request(served.address, [b'{"request": "status"}', b"more"])
    assert reply["ok"] is False and "one frame" in reply["error"]
    reply = request(served.address, [b" " * (ia.MAX_REQUEST_BYTES + 1)])
    assert reply["ok"] is False and "over the limit" in reply["error"]
    assert request(served.address, [b"x" * (2 * ia.MAX_MESSAGE_BYTES)], timeout=0.5) is None  # dropped by ZeroMQ
    assert_healthy(served, caplog)


# -- JSON ----------------------------------------------------------------------------------------

def test_deeply_nested_json_is_refused_before_parsing(served, caplog):
    deep = 30_000
    for frame in (b"[" * deep + b"]" * deep,
                  b'{"request": "get", "array": "probe", "id": ' + b"[" * deep + b"]" * deep + b"}",
                  b'{"a": ' * 8_000 + b"1" + b"}" * 8_000):
        reply = request(served.address, [frame])
        assert reply["ok"] is False and "nested" in reply["error"], reply
    shallow = {"request": "status", "x": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}  # brackets in a string
    assert ask(served.address, shallow)["ok"]
    assert_healthy(served, caplog)


@pytest.mark.parametrize("ident", [["a"], {"a": 1}, 5, 1.5, True, "b" * 5000])
def test_get_with_an_id_that_is_not_a_label_is_refused(served, caplog, ident):
    for array in ("object", "probe", "positions"):
        reply = ask(served.address, {"request": "get", "array": array, "id": ident})
        assert reply["ok"] is False and "id" in reply["error"], reply
        assert len(reply["error"]) < 500  # what the client sent is not echoed in full
    reply = ask(served.address, {"request": "get", "array": ["probe"]})
    assert reply["ok"] is False and "array" in reply["error"]
    assert_healthy(served, caplog)


# -- set -----------------------------------------------------------------------------------------

SET_REFUSED = [
    ('"engines.e1.alpha"', "1" + "0" * 300, "limit"),  # alpha = 10^300
    ('"engines.e1.alpha"', "-1", ">= 0"),
    ('"engines.e1.alpha"', "1.5", "expected int"),
    ('"engines.e1.probe_inertia"', "1e400", "finite"),  # inf once parsed
    ('"engines.e1.probe_inertia"', "-1e400", "finite"),
    ('"engines.e1.object_inertia"', "NaN", "finite"),
    ('"engines.e1.object_inertia"', "Infinity", "finite"),
    ('"engines.e1.object_inertia"', "1e300", "limit"),
    ('"engines.e1.object_inertia"', '"0.1"', "expected float"),
    ('"engines.e1.numiter"', "1" + "0" * 21, "limit"),  # numiter = 10^21
    ('"engines.e1.numiter"', "10000001", "limit"),
    ('"engines.e1.numiter"', "1" + "0" * 5000, "JSON"),  # past Python's digit limit for int()
    ('"engines.e1.numiter"', "true", "expected int"),
    ('"engines.e1.numiter"', "[5]", "expected int"),
    ('"engines.e1.numiter"', "null", "None"),
    ('"engines.e1.numiter"', '"' + "b" * 5000 + '"', "expected int"),  # the reason survives the cut
    ('"engines.e1.numiter_contiguous"', "1" + "0" * 12, "limit"),
    ('"engines.e2.probe_update_start"', "-" + "9" * 30, "limit"),
    ('"engines.e1.probe_update_start"', "1e3", "expected int"),
    ('["engines", "e1", "numiter"]', "5", "engines.<label>.<key>"),
    ('"engines.e1.numiter.x"', "5", "engines.<label>.<key>"),
]


@pytest.mark.parametrize("path, value, reason", SET_REFUSED)
def test_set_refuses_values_that_would_wreck_the_run_and_says_why(served, built, caplog, path, value, reason):
    run = built[0]
    before = {label: dict(ep) for label, ep in run.params.engines.items()}
    frame = b'{"request": "set", "path": ' + path.encode() + b', "value": ' + value.encode() + b"}"
    reply = request(served.address, [frame])
    assert reply is not None and reply["ok"] is False, reply
    assert reason in reply["error"] and "internal error" not in reply["error"], reply["error"]
    assert len(reply["error"]) < 500
    assert {label: dict(ep) for label, ep in run.params.engines.items()} == before
    assert_healthy(served, caplog)


def test_set_accepts_values_at_the_runtime_limits(served, built, caplog):
    run = built[0]
    e1 = run.params.engines.e1
    try:
        for key, value in (("numiter", ia.RUNTIME_LIMITS["numiter"][1]), ("alpha", 0), ("probe_inertia", 0.5)):
            reply = ask(served.address, {"request": "set", "path": f"engines.e1.{key}", "value": value})
            assert reply == {"ok": True, "path": f"engines.e1.{key}", "value": value, "state": "applied"}
            assert e1[key] == value
    finally:
        e1.numiter, e1.alpha, e1.probe_inertia = 5, 1, 0.001
    assert_healthy(served, caplog)


# -- greedy clients -------------------------------------------------------------------------------

def test_a_client_polling_every_tenth_of_a_second_does_not_starve_the_run(built):
    """Before: follow-ups within 0.2 s of a reply were served in the same pause, so the run never resumed."""
    s = Served(*built, work=0.01)
    try:
        time.sleep(0.3)
        solo_blocks, start = s.blocks, time.perf_counter()
        time.sleep(1.0)
        solo_rate = (s.blocks - solo_blocks) / (time.perf_counter() - start)

        replies = 0
        with ia.InteractionClient(s.address, timeout=WAIT) as client:
            for k in range(18):
                if k == 3:  # the serving time the server starts with is spent: measure from here
                    first_block, start = s.blocks, time.perf_counter()
                client.status()
                replies += 1
                time.sleep(0.1)
        polled_rate = (s.blocks - first_block) / (time.perf_counter() - start)
        polls = len(s.poll_seconds)
    finally:
        s.close()
    assert replies == 18 and s.failure is None
    # the run went on while the client talked (before the fix: one block in 1.5 s)
    assert polled_rate > 0.7 * solo_rate, (polled_rate, solo_rate)
    # and the server's own account: serving took at most a tenth of the time, beyond the credit it starts with
    assert s.server.serve_seconds <= 0.1 * s.server.work_seconds + ia.CONVERSATION_MS / 1000, (
        s.server.serve_seconds, s.server.work_seconds, polls)


def test_a_flood_of_requests_is_served_a_budget_at_a_time(built, caplog):
    s = Served(*built, work=0.02)
    context, sock = dealer(s.address)
    try:
        for _ in range(200):
            sock.send_multipart([b"", b'{"request": "status"}'], flags=zmq.NOBLOCK)
        for _ in range(200):  # all answered, a budget per pause
            sock.recv_multipart()
        assert s.served, "no pause ended while the flood was served"
        assert s.alive() and max(s.served) <= ia.MAX_REQUESTS_PER_POLL
        assert max(s.poll_seconds) < ia.CONVERSATION_MS / 1000 + 0.2
    finally:
        sock.close(linger=0)
        context.term()
        s.close()


def test_status_replies_a_tenth_of_a_second_apart_see_a_real_run_advance(tmp_path, simulated, caplog):
    run = make_run(tmp_path, simulated, {"e1": {"name": "DM", "numiter": 100_000, "numiter_contiguous": 1}})
    address = f"tcp://{HOST}:{run.params.interaction.primary_port}"

    def talk():
        with ia.InteractionClient(address, timeout=WAIT) as client:
            seen = []
            for _ in range(8):
                seen.append(client.status()["iteration"])
                time.sleep(0.1)
            client.stop()
            return seen

    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(talk)
        results = run.run()
        seen = answer.result(timeout=WAIT)
    # before the fix every status came in one pause: the same iteration eight times
    assert len(set(seen)) >= 4 and seen == sorted(seen), seen
    assert len(read_ptyr(results["reconstruction"]).iter_info) >= seen[-1]


# -- fuzzing ---------------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(
    max_size=20)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
keys = st.sampled_from(["get", "set"]) | st.sampled_from(["status", "stop_", "exec", ""]) | st.text(max_size=8)
paths = st.sampled_from(["engines.e1.numiter", "engines.e1.alpha", "engines.e1.probe_inertia", "engines.e2.numiter",
                         "engines.e1.numiter_contiguous", "engines.e2.probe_update_start", "engines.e1"]) | json_values
requests = st.fixed_dictionaries({"request": keys}, optional={
    "array": st.sampled_from(list(ia.ARRAYS)) | json_values, "id": st.just("a") | json_values,
    "path": paths, "value": json_values})
frames = st.lists(st.binary(max_size=200) | requests.map(lambda m: json.dumps(m).encode()), min_size=0, max_size=4)

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


def nesting(value) -> int:
    if isinstance(value, list):
        return 1 + max(map(nesting, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(nesting, value.values()), default=0)
    return 0


@settings(max_examples=100, deadline=None)
@given(value=st.recursive(st.none() | st.integers() | st.text(alphabet='[]{}"\\ax', max_size=6),
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                              st.text(alphabet='[]{}"\\b', max_size=4), inner, max_size=3), max_leaves=20))
def test_json_depth_is_the_nesting_the_parser_would_see(value):
    assert ia.json_depth(json.dumps(value).encode()) == nesting(value)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(message=requests)
def test_fuzzed_requests_get_a_reply_and_leave_the_parameters_valid(served, built, message):
    run = built[0]
    before = {label: dict(ep) for label, ep in run.params.engines.items()}
    reply = ask(served.address, message)
    assert reply is not None and isinstance(reply["ok"], bool)
    if not reply["ok"]:
        assert isinstance(reply["error"], str) and "internal error" not in reply["error"], reply
    if message["request"] == "set" and reply["ok"]:
        key = message["path"].rsplit(".", 1)[1]
        low, high = ia.RUNTIME_LIMITS[key]
        assert low <= reply["value"] <= high
    for label, ep in run.params.engines.items():  # restore what a fuzzed set changed
        ep.update(before[label])
    assert served.alive(), served.failure


@FUZZ
@given(frames=frames, envelope=st.sampled_from(["req", "dealer", "dealer-bare"]))
def test_fuzzed_frame_sequences_never_end_the_serving_loop(served, frames, envelope):
    if envelope == "req":
        if frames:
            request(served.address, frames, timeout=2.0)
    else:
        context, sock = dealer(served.address)
        try:
            sock.send_multipart(([b""] if envelope == "dealer" else []) + frames if frames or envelope == "dealer"
                                else [b"x"])
            time.sleep(0.01)
        finally:
            sock.close(linger=0)
            context.term()
    assert served.alive(), served.failure
    reply = ask(served.address, {"request": "status"})
    assert reply is not None and reply["ok"]
