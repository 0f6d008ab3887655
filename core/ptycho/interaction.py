"""The ZeroMQ interaction server of a ptychography run, and a client for scripts and tests.

A facility script watches or steers a running reconstruction through a fixed
set of requests; nothing a client sends is ever evaluated.  The server lives in
the reconstruction's own thread: the flow polls it between blocks of
``numiter_contiguous`` iterations, so every reply shows one consistent state.

Protocol (REQ/REP).  A request is ONE frame of JSON, an object with
``"request"`` naming one of:

* ``status`` -> run name, engine, iteration, last metrics, the engines'
  settable parameters, the arrays that can be fetched, each storage's pixel
  size and origin [m] (``geometry``) and where each engine began
  (``engine_runs``: [name, first iteration over the run]);
* ``get`` with ``"array"`` (``object``, ``probe``, ``positions``, ``error``) and
  ``"id"`` (storage ID or scan label; optional when there is only one) ->
  the array;
* ``stop`` -> the run stops after the current block (``run.request_stop()``);
* ``set`` with ``"path"`` (``engines.<label>.<key>``, key in :data:`SETTABLE`)
  and ``"value"`` -> validated by the parameter tree, then used from the next
  block.  The reply's ``"state"`` says ``"applied"`` (one process: the change
  is in place) or ``"queued"`` (under mpiexec: the server runs on rank 0 only,
  and the flow hands the change to every rank, rank 0 included, before the
  next block: :func:`share_changes`).

A reply is a JSON header (``"ok": true`` or ``"ok": false`` with ``"error"``)
followed, for ``get``, by one raw frame of array bytes whose dtype and shape the
header gives (``"array": {"dtype", "shape"}``).

Hostile or greedy clients (see docs/ptycho-engines.md, "What a client cannot
do").  The socket is a ROUTER, so no message can put it in a state where it
refuses to serve: a message without the REQ envelope (a DEALER that left out
the empty delimiter, random bytes read as frames) is dropped with a warning.
Requests over :data:`MAX_REQUEST_BYTES`, JSON nested deeper than
:data:`MAX_JSON_DEPTH` (measured before parsing), numbers that are not finite,
``get`` arguments that are not labels and ``set`` values outside the
parameter's type and limits or :data:`RUNTIME_LIMITS` get an error reply
saying why; frames over :data:`MAX_MESSAGE_BYTES` are dropped by ZeroMQ, which
closes the sender's connection.  Each poll serves at most
:data:`MAX_REQUESTS_PER_POLL` messages, and waits for a conversation's next
request only while it has serving time in hand: :data:`SERVE_SHARE` of the
time the run computed, saved up to :data:`CONVERSATION_MS`.  Nothing a client
sends reaches the log as more than one warning line, at most
:data:`WARNINGS_PER_WINDOW` of them every :data:`WARNING_WINDOW_S` seconds.

Address rule: the default ``tcp://127.0.0.2`` is loopback.  difframe never
listens beyond loopback on its own; a non-loopback address (``tcp://*``, a
host name, a network interface) is used only because the user wrote it into
``interaction.primary_address``, and the server logs a warning naming it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import math
import os
import subprocess
import sys
import time

import numpy as np

from difframe.errors import ParameterError, UsageError
from difframe.params import check_value
from difframe.ptycho.ptyr import ERROR_KEYS

log = logging.getLogger("difframe.interaction")

#: engine parameters a client may change: the flow and the engines read them at every block
SETTABLE = ("numiter", "numiter_contiguous", "alpha", "probe_inertia", "object_inertia", "probe_update_start")
#: bounds a ``set`` value must also keep, beyond its parameter's own: they keep the engines' arithmetic finite and
#: the run's records of a size the files hold, and the server reachable (a block is numiter_contiguous iterations)
RUNTIME_LIMITS = {"numiter": (0, 10**7), "numiter_contiguous": (0, 10**4), "probe_update_start": (-10**7, 10**7),
                  "alpha": (0, 100), "probe_inertia": (0.0, 1e6), "object_inertia": (0.0, 1e6)}
MAX_REQUEST_BYTES = 64 * 1024
#: ZeroMQ's limit on one frame (MAXMSGSIZE): a peer that sends a larger one is disconnected
MAX_MESSAGE_BYTES = 2 * MAX_REQUEST_BYTES
#: deepest nesting of arrays and objects a request may have; measured on the bytes, before parsing
MAX_JSON_DEPTH = 16
#: the most serving time a poll may have in hand (ms): the wait for a conversation's next request draws on it
CONVERSATION_MS = 200
#: share of the run's computing time that earns serving time
SERVE_SHARE = 0.05
#: messages handled per poll at most; the rest wait for the next poll
MAX_REQUESTS_PER_POLL = 32
#: frames of routing envelope a message may carry before its empty delimiter
MAX_ENVELOPE_FRAMES = 8
#: queued messages per client, in and out (ZeroMQ's high-water marks): a client that does not read its replies
#: loses them, one that floods waits
QUEUE_MESSAGES = 32
WARNINGS_PER_WINDOW, WARNING_WINDOW_S = 5, 10.0
ARRAYS = ("object", "probe", "positions", "error")
#: seconds the spawned live view waits for a reply: a first block on real data may take minutes
LIVE_VIEW_TIMEOUT = 600
_SHOWN_CHARS = 400  # an error message is cut to this many characters (its head and its tail)


class RequestRefused(UsageError):
    """The server answered a request with an error."""


class _Dropped(Exception):
    """A message that cannot be answered (no envelope to reply through)."""


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows (numbers must be finite)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{_short(text)} is not a finite number")
    return value


def _finite(value):
    """JSON-safe float: None where not finite."""
    return float(value) if math.isfinite(value) else None


def _short(value, chars: int = 60) -> str:
    """``repr(value)`` cut to ``chars`` characters: what a client sent is never echoed in full."""
    text = repr(value)
    return text if len(text) <= chars else text[:chars - 5] + " ...]"


def _clean(text: str, chars: int = _SHOWN_CHARS) -> str:
    """One printable line of at most ``chars`` characters, keeping head and tail (where the reason is)."""
    if len(text) > 4 * chars:
        text = text[:2 * chars] + text[-2 * chars:]
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if len(text) > chars:
        half = (chars - 5) // 2
        text = text[:half] + " ... " + text[-half:]
    return text


def json_depth(raw: bytes) -> int:
    """The deepest nesting of ``[`` and ``{`` in JSON text, outside strings, without parsing it.

    Exact for every valid prefix, and a parser stops at the first error, so a
    parser never nests deeper than this.  Linear in the length (numpy).
    """
    b = np.frombuffer(raw, np.uint8)
    if b.size == 0:
        return 0
    index = np.arange(b.size)
    backslash = b == 0x5C
    last_other = np.maximum.accumulate(np.where(backslash, -1, index))  # last byte that is not a backslash
    run = np.zeros(b.size, np.int64)  # backslashes just before each byte
    run[1:] = index[:-1] - last_other[:-1]
    quote = (b == 0x22) & (run % 2 == 0)  # a quote that opens or closes a string
    outside = np.cumsum(quote) % 2 == 0
    step = (((b == 0x5B) | (b == 0x7B)).astype(np.int64) - ((b == 0x5D) | (b == 0x7D))) * outside
    return int(max(np.cumsum(step).max(), 0))


class _RateLimitedWarnings:
    """At most ``per_window`` warnings every ``window`` seconds; the rest are counted and the count logged."""

    def __init__(self, per_window: int = WARNINGS_PER_WINDOW, window: float = WARNING_WINDOW_S):
        self.per_window, self.window = per_window, window
        self._start, self._count, self.suppressed = -math.inf, 0, 0

    def __call__(self, text: str) -> None:
        now = time.monotonic()
        if now - self._start >= self.window:
            self.flush()
            self._start, self._count = now, 0
        if self._count < self.per_window:
            self._count += 1
            log.warning("interaction: %s", _clean(text))
        else:
            self.suppressed += 1

    def flush(self) -> None:
        if self.suppressed:
            log.warning("interaction: %d more refused or malformed messages were not logged", self.suppressed)
            self.suppressed = 0


def listen_host(address: str) -> str:
    """The host part of ``interaction.primary_address`` (``tcp://HOST``); ParameterError otherwise."""
    if not isinstance(address, str) or not address.startswith("tcp://"):
        raise ParameterError(f"interaction.primary_address = {address!r}: expected tcp://HOST, e.g. tcp://127.0.0.2")
    host = address[len("tcp://"):]
    if not host or "/" in host or (host.count(":") == 1):
        raise ParameterError(f"interaction.primary_address = {address!r}: expected tcp://HOST without a port "
                             f"(the port is interaction.primary_port)")
    return host


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # '*', an interface or a host name


def port_candidates(primary: int, port_range: str) -> list[int]:
    """The primary port, then the ports of ``first:last`` in order."""
    ports = [primary]
    try:
        first, last = (int(v) for v in str(port_range).split(":"))
    except ValueError:
        raise ParameterError(f"interaction.port_range = {port_range!r}: expected \"first:last\", e.g. \"5571:5671\"")
    for name, port in (("primary_port", primary), ("port_range", first), ("port_range", last)):
        if not 1 <= port <= 65535:
            raise ParameterError(f"interaction.{name}: port {port} is not in 1..65535")
    if first > last:
        raise ParameterError(f"interaction.port_range = {port_range!r}: first port is after the last")
    return ports + [p for p in range(first, last + 1) if p != primary]


class InteractionServer:
    """Answers clients' requests about ``run`` and its ``model`` whenever :meth:`poll` is called.

    :meth:`poll` never raises for anything a client sends, and returns within
    its serving budget (see the module's doc).  ``serve_seconds`` and
    ``work_seconds`` account for the time spent in polls and between them.
    """

    def __init__(self, run, model, runtime: dict):
        self.run, self.model, self.runtime = run, model, runtime
        self.address: str | None = None
        self._context = self._socket = None
        self.pending: list[tuple[str, object]] = []  # validated (path, value) awaiting share_changes (MPI)
        self.serve_seconds = self.work_seconds = 0.0
        self._credit = CONVERSATION_MS / 1000  # seconds of serving in hand; a first conversation is served whole
        self._last_poll_end: float | None = None
        self._warn = _RateLimitedWarnings()
        self._engine_runs: list[list] = []  # [name, first iteration], extended as iter_info grows
        self._runs_seen = 0

    def start(self) -> "InteractionServer":
        """Bind to primary_address:primary_port, or the first free port of port_range."""
        import zmq

        p = self.run.params.interaction
        host = listen_host(p.primary_address)
        ports = port_candidates(int(p.primary_port), p.port_range)
        if not is_loopback(host):
            log.warning("interaction server listens on %s, beyond loopback: anyone who reaches it can read the "
                        "reconstruction and stop the run", p.primary_address)
        self._context = zmq.Context()
        sock = self._context.socket(zmq.ROUTER)  # REQ clients; no message can leave it unable to serve
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        sock.setsockopt(zmq.RCVHWM, QUEUE_MESSAGES)
        sock.setsockopt(zmq.SNDHWM, QUEUE_MESSAGES)
        sock.ipv6 = ":" in host
        self._socket = sock
        for port in ports:
            endpoint = f"{p.primary_address}:{port}"
            try:
                sock.bind(endpoint)
            except zmq.ZMQError as err:
                if err.errno == zmq.EADDRINUSE:
                    continue
                self.close()
                raise UsageError(f"interaction.primary_address: cannot listen on {endpoint}: {err}") from None
            self.address = endpoint
            break
        else:
            self.close()
            raise UsageError(f"interaction: port {ports[0]} and interaction.port_range {p.port_range} on "
                             f"{p.primary_address} are all taken; choose other ports")
        if port != ports[0]:
            log.warning("interaction port %d is taken; listening on %s instead", ports[0], self.address)
        else:
            log.info("interaction server listening on %s", self.address)
        return self

    def close(self) -> None:
        if self._socket is not None:
            self._warn.flush()
            self._socket.close(linger=0)
            self._context.term()
            self._socket = self._context = None

    def poll(self) -> int:
        """Serve waiting requests, and a conversation's next ones, within the budget; returns messages handled.

        The first waiting message is always handled.  Further ones are while
        the poll has serving time in hand (``SERVE_SHARE`` of the time since
        the last poll, saved up to ``CONVERSATION_MS``) and fewer than
        ``MAX_REQUESTS_PER_POLL`` were; a conversation's next request is waited
        for only that long.
        """
        import zmq

        start = time.perf_counter()
        if self._last_poll_end is not None:
            worked = start - self._last_poll_end
            self.work_seconds += worked
            self._credit = min(self._credit + SERVE_SHARE * worked, CONVERSATION_MS / 1000)
        deadline, handled = start + self._credit, 0
        try:
            while handled < MAX_REQUESTS_PER_POLL:
                wait = 0 if handled == 0 else deadline - time.perf_counter()
                if wait < 0 or not self._socket.poll(int(wait * 1000)):
                    break
                self._serve_one()
                handled += 1
        except zmq.ZMQError as err:  # the socket itself failed: the run goes on without this poll
            self._warn(f"serving stopped for this pause: {err}")
        end = time.perf_counter()
        self.serve_seconds += end - start
        self._credit -= end - start
        self._last_poll_end = end
        return handled

    # -- one request ----------------------------------------------------------------------------

    def _serve_one(self) -> None:
        """Take one message and answer it if it can be answered."""
        import zmq

        try:
            frames = self._socket.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:  # ZeroMQ dropped what poll() saw
            return
        try:
            envelope, body = self._split(frames)
        except _Dropped as why:
            self._warn(f"dropped a message: {why}")
            return
        try:
            header, arrays = self._answer(body)
            reply = [json.dumps(header, allow_nan=False).encode()]
            reply += [np.ascontiguousarray(a).reshape(-1).view(np.uint8) for a in arrays]
        except UsageError as err:
            reply = [self._error(str(err))]
        except Exception as err:  # a bug in a handler must not end the reconstruction
            reply = [self._error(f"internal error: {type(err).__name__}: {err}")]
        try:
            self._socket.send_multipart(envelope + reply, flags=zmq.NOBLOCK)
        except zmq.ZMQError as err:  # the client left or does not read its replies: the reply is dropped
            self._warn(f"reply not sent: {err}")

    @staticmethod
    def _split(frames: list) -> tuple[list, list]:
        """(routing envelope up to and with the empty delimiter, request frames) of a ROUTER message."""
        for k, frame in enumerate(frames[1:MAX_ENVELOPE_FRAMES + 1], start=1):
            if not frame:
                return frames[:k + 1], frames[k + 1:]
        raise _Dropped(f"{len(frames) - 1} frames without the empty delimiter that REQ sockets send "
                       f"(a request is one frame of JSON, sent from a REQ socket or after an empty frame)")

    def _error(self, message: str) -> bytes:
        message = _clean(message)
        self._warn(f"request refused: {message}")
        return json.dumps({"ok": False, "error": message}).encode()

    def _answer(self, frames: list) -> tuple[dict, list]:
        if len(frames) != 1:
            raise RequestRefused(f"a request is one frame of JSON, got {len(frames)} frames")
        if len(frames[0]) > MAX_REQUEST_BYTES:
            raise RequestRefused(f"request of {len(frames[0])} bytes is over the limit of {MAX_REQUEST_BYTES}")
        depth = json_depth(frames[0])
        if depth > MAX_JSON_DEPTH:
            raise RequestRefused(f"request is nested {depth} deep, over the limit of {MAX_JSON_DEPTH}")
        try:
            message = json.loads(frames[0].decode("utf-8"), parse_constant=_reject_constant,
                                 parse_float=_finite_float)
        except (UnicodeDecodeError, ValueError, RecursionError) as err:
            raise RequestRefused(f"request is not JSON the server accepts: {err}") from None
        if not isinstance(message, dict) or not isinstance(message.get("request"), str):
            raise RequestRefused('request must be a JSON object with "request": "status" | "get" | "stop" | "set"')
        handler = {"status": self._status, "get": self._get, "stop": self._stop, "set": self._set}.get(
            message["request"])
        if handler is None:
            raise RequestRefused(f"unknown request {_short(message['request'])}: expected status, get, stop or set")
        return handler(message)

    def _status(self, message) -> tuple[dict, list]:
        last = self.runtime["iter_info"][-1] if self.runtime["iter_info"] else None
        model = self.model
        return {
            "ok": True,
            "run": self.run.run_name,
            "engine": last["engine"] if last else None,
            "iteration": last["iterations"] if last else 0,  # over the whole run
            "metrics": {k: _finite(v) for k, v in last["metrics"].items()} if last else {},
            "stop_requested": bool(self.run.stop_requested),
            "engines": {label: {"name": ep.name, **{k: ep[k] for k in SETTABLE if k in ep}}
                        for label, ep in self.run.params.engines.items()},
            "arrays": {"object": list(model.objects), "probe": list(model.probes),
                       "positions": [s.label for s in model.scans], "error": list(ERROR_KEYS)},
            "geometry": {kind: {k: {"psize": [float(v) for v in st.psize], "origin": [float(v) for v in st.origin]}
                                for k, st in storages.items()}
                         for kind, storages in (("object", model.objects), ("probe", model.probes))},
            "engine_runs": self._engine_starts(),
        }, []

    def _engine_starts(self) -> list[list]:
        """[engine name, first iteration] of each engine's stretch of iter_info; only new records are read,
        so a status costs the same late in a long run."""
        info = self.runtime["iter_info"]
        for entry in info[self._runs_seen:]:
            if not self._engine_runs or entry["iteration"] == 1 or entry["engine"] != self._engine_runs[-1][0]:
                self._engine_runs.append([entry["engine"], entry["iterations"]])
        self._runs_seen = len(info)
        return self._engine_runs

    def _get(self, message) -> tuple[dict, list]:
        which, ident = message.get("array"), message.get("id")
        if not isinstance(which, str) or which not in ARRAYS:
            raise RequestRefused(f"get: array {_short(which)} is not one of {', '.join(ARRAYS)}")
        if which == "error":
            info = self.runtime["iter_info"]
            array = np.array([entry["error"] for entry in info], dtype=np.float64).reshape(len(info), len(ERROR_KEYS))
        else:
            available = {"object": {k: s.data for k, s in self.model.objects.items()},
                         "probe": {k: s.data for k, s in self.model.probes.items()},
                         "positions": {s.label: s.positions for s in self.model.scans}}[which]
            if ident is not None and not isinstance(ident, str):
                raise RequestRefused(f"get {which}: id must be a string (a storage ID or scan label), "
                                     f"got {type(ident).__name__}")
            if ident is None and len(available) == 1:
                ident = next(iter(available))
            if ident not in available:
                raise RequestRefused(f"get {which}: id {_short(ident)} is not one of "
                                     f"{', '.join(map(repr, available))}")
            array = np.asarray(available[ident])
        return {"ok": True, "array": {"name": which, "id": ident, "dtype": array.dtype.str,
                                      "shape": list(array.shape)}}, [array]

    def _stop(self, message) -> tuple[dict, list]:
        self.run.request_stop()
        return {"ok": True, "stop_requested": True}, []

    def _set(self, message) -> tuple[dict, list]:
        path, value = message.get("path"), message.get("value")
        parts = path.split(".") if isinstance(path, str) else []
        if len(parts) != 3 or parts[0] != "engines":
            raise RequestRefused(f"set: path {_short(path)} must be engines.<label>.<key>")
        _, label, key = parts
        engines = self.run.params.engines
        if label not in engines:
            raise RequestRefused(f"set {path}: no engine labelled {label!r} (engines: {', '.join(engines)})")
        if key not in SETTABLE:
            raise RequestRefused(f"set {path}: {key!r} cannot be changed during a run (settable: {', '.join(SETTABLE)})")
        name = engines[label].name
        nodes = self.run.tree.nodes
        node = nodes.get(f"engine.{name}.{key}") or nodes.get(f"engine.common.{key}")
        if node is None:
            raise RequestRefused(f"set {path}: {key!r} is not a parameter of engine {name!r}")
        value = self._checked(node, key, value, path)
        if self.model.ranks.size > 1:
            self.pending.append((path, value))
            log.info("interaction: %s = %r queued for all %d ranks", path, value, self.model.ranks.size)
            return {"ok": True, "path": path, "value": value, "state": "queued"}, []
        engines[label][key] = value
        log.info("interaction: %s = %r", path, value)
        return {"ok": True, "path": path, "value": value, "state": "applied"}, []

    @staticmethod
    def _checked(node, key: str, value, path: str):
        """``value`` validated by the parameter's own type and limits, then as a finite number within
        :data:`RUNTIME_LIMITS`; RequestRefused says which rule it broke."""
        low, high = RUNTIME_LIMITS[key]
        beyond = f"beyond the runtime limits {low} .. {high} of a set request"
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**53:
            raise RequestRefused(f"{path} = {_short(value)}: {beyond}")  # before a float() that may overflow
        try:
            value = check_value(node, value, path)
        except ParameterError as err:
            raise RequestRefused(str(err)) from None
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise RequestRefused(f"{path} = {_short(value)}: expected a number")
        if not math.isfinite(value):
            raise RequestRefused(f"{path} = {value!r}: not a finite number")
        if not low <= value <= high:
            raise RequestRefused(f"{path} = {_short(value)}: {beyond}")
        return value


def share_changes(run, ranks, server: InteractionServer | None) -> None:
    """Apply on every rank the ``set`` changes rank 0's ``server`` queued (a collective under mpiexec).

    The values were validated on rank 0; they travel as JSON text, and only
    into ``engines.<label>.<key>`` paths the server accepted.
    """
    if ranks.size == 1 or run.params.get("interaction") is None:
        return
    queued = None
    if server is not None:
        queued, server.pending = json.dumps(server.pending, allow_nan=False), []
    for path, value in json.loads(ranks.broadcast_text(queued) or "[]"):
        _, label, key = path.split(".")
        run.params.engines[label][key] = value
        log.info("interaction: %s = %r (rank %d)", path, value, ranks.rank)


@contextlib.contextmanager
def serving(run, model, runtime: dict):
    """The started server when ``interaction`` is set (on rank 0 only), else None; closed on the way out."""
    if run.params.get("interaction") is None or not model.ranks.is_root:
        yield None
        return
    server = InteractionServer(run, model, runtime).start()
    try:
        yield server
    finally:
        server.close()


class Pending:
    """Replies on their way to :meth:`InteractionClient.send`'s requests; the socket closes once collected."""

    def __init__(self, client: "InteractionClient", sock, messages: list[dict], deadline: float):
        self.client, self.sock, self.messages, self.deadline = client, sock, messages, deadline

    def collect(self, idle=None) -> list[tuple[dict, list[np.ndarray]]]:
        """The replies in order, waiting until the client's timeout after sending (``idle()`` about every 0.1 s);
        TimeoutError, or RequestRefused for an error reply."""
        replies = []
        try:
            while len(replies) < len(self.messages):
                if not self.sock.poll(100):
                    if time.monotonic() >= self.deadline:
                        raise TimeoutError(f"no reply from {self.client.address} within {self.client.timeout} s")
                    if idle is not None:
                        idle()
                    continue
                frames = self.sock.recv_multipart()[1:]  # after the empty delimiter
                replies.append(self.client._reply(frames, self.messages[len(replies)]))
            return replies
        finally:
            self.close()

    def close(self) -> None:
        """Drop the replies still on their way (a client's context ends only once its sockets are closed)."""
        self.sock.close(linger=0)


def snapshot_requests(status: dict) -> list[dict]:
    """The requests of a snapshot: a fresh status first, every object, probe and scan's positions that
    ``status["arrays"]`` names, the error history last (so its length tells whether one pause served all)."""
    arrays = status["arrays"]
    return ([{"request": "status"}] + [{"request": "get", "array": kind, "id": ident}
                                       for kind in ("object", "probe", "positions") for ident in arrays[kind]]
            + [{"request": "get", "array": "error"}])


def parse_snapshot(status: dict, replies: list) -> tuple[dict, dict]:
    """(fresh status, state) from the replies to :func:`snapshot_requests` of ``status``.

    The state is what :mod:`difframe.ptycho.plotting` draws: ``{"objects", "probes"}`` (``{"data", "psize"}``
    each), ``iter_info`` (one record per iteration: ``iteration`` within the engine, ``iterations`` over the
    run, ``engine``, ``error``), ``scanned`` (scan positions in object pixels) and ``iteration``, the error
    history's length, which equals the fresh status's iteration exactly when one pause of the run served all.
    """
    arrays, geometry = status["arrays"], status.get("geometry", {})
    wanted = [(kind, ident) for kind in ("object", "probe", "positions") for ident in arrays[kind]]
    fresh, got = replies[0][0], {key: reply[1][0] for key, reply in zip(wanted, replies[1:-1])}
    errors = replies[-1][1][0]

    def storage(kind, ident):  # with its pixel size, so that pictures get scale bars
        return {"data": got[kind, ident], "psize": geometry.get(kind, {}).get(ident, {}).get("psize")}

    objects = {k: storage("object", k) for k in arrays["object"]}
    scanned = {}
    if len(objects) == 1 and "object" in geometry:  # positions are per scan; one object frame holds them all
        (oid, g), = geometry["object"].items()
        pos = np.concatenate([got["positions", label] for label in arrays["positions"]])
        scanned[oid] = (pos - np.asarray(g["origin"])) / np.asarray(g["psize"])
    return fresh, {"objects": objects, "probes": {k: storage("probe", k) for k in arrays["probe"]},
                   "scanned": scanned, "iteration": len(errors),
                   "iter_info": error_history(errors, fresh.get("engine_runs", []), fresh.get("engine"))}


def error_history(errors: np.ndarray, engine_runs: list, engine: str | None) -> list[dict]:
    """``iter_info``-like records (``iteration`` within the engine, ``iterations`` over the run, ``engine``,
    ``error``) from a ``get error`` array and a status's ``engine_runs``; rows before any recorded start
    belong to ``engine``."""
    starts = [(int(first), name) for name, first in engine_runs]
    records = []
    for i, row in enumerate(errors, start=1):
        first, name = next(((f, n) for f, n in reversed(starts) if f <= i), (1, engine))
        records.append({"iteration": i - first + 1, "iterations": i, "engine": name, "error": row})
    return records


def display_available() -> bool:
    """Whether a window can be shown: always on macOS and Windows, with X11 or Wayland elsewhere."""
    if os.environ.get("MPLBACKEND", "").lower() in ("agg", "cairo", "pdf", "pgf", "ps", "svg", "template"):
        return False
    return sys.platform in ("darwin", "win32") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def start_live_view(run, server: InteractionServer | None, ranks) -> subprocess.Popen | None:
    """``plotclient.active``: ``difframe watch`` on ``server`` as its own process (rank 0), when there is a
    server to watch and a display; otherwise one log line saying why not.  A slow client cannot slow the run
    (the server's serving budget), and the window outlives the run until it is closed."""
    if not run.params.plotclient.active or not ranks.is_root:
        return None
    if server is None:
        log.info("plotclient.active: no live view, the run has no interaction server (give an interaction "
                 "section, e.g. [interaction] in TOML, to watch it)")
        return None
    if not display_available():
        log.info("plotclient.active: no live view, no display; `difframe watch %s --png DIR` draws it headless",
                 server.address)
        return None
    command = [sys.executable, "-m", "difframe.cli", "watch", server.address, "--every",
               str(run.params.plotclient.interval), "--timeout", str(LIVE_VIEW_TIMEOUT)]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)  # errors: stderr
    log.info("plotclient.active: live view started (difframe watch %s, process %d)", server.address, process.pid)
    return process


class InteractionClient:
    """Talks to an :class:`InteractionServer`; every wait is bounded by ``timeout`` seconds."""

    def __init__(self, address: str, timeout: float = 10.0):
        import zmq

        self.address, self.timeout = address, timeout
        self._context = zmq.Context()
        self._socket = None
        self._connect()

    def _connect(self) -> None:
        import zmq

        sock = self._context.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, int(self.timeout * 1000))
        sock.setsockopt(zmq.SNDTIMEO, int(self.timeout * 1000))
        sock.connect(self.address)
        self._socket = sock

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._context.term()
            self._socket = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def request(self, message: dict, idle=None) -> tuple[dict, list[np.ndarray]]:
        """Send one request; returns (header, arrays).  RequestRefused on an error reply.

        ``idle()``, when given, is called about every 0.1 s while the reply is
        awaited (a window keeps answering its user while the run computes).
        """
        import zmq

        deadline = time.monotonic() + self.timeout
        try:
            self._socket.send(json.dumps(message, allow_nan=False).encode())
            while idle is not None and not self._socket.poll(100):
                if time.monotonic() >= deadline:
                    raise zmq.Again()
                idle()
            frames = self._socket.recv_multipart()
        except zmq.Again:
            self._socket.close(linger=0)  # a REQ socket that missed its reply cannot send again
            self._connect()
            raise TimeoutError(f"no reply from {self.address} within {self.timeout} s") from None
        return self._reply(frames, message)

    def _reply(self, frames: list, message: dict) -> tuple[dict, list[np.ndarray]]:
        header = json.loads(frames[0].decode("utf-8"))
        if not header.get("ok"):
            raise RequestRefused(f"{self.address} refused {message.get('request')!r}: {header.get('error')}")
        arrays = []
        if "array" in header:
            dtype = np.dtype(header["array"]["dtype"])
            if dtype.kind not in "biufc" or len(frames) != 2:
                raise RequestRefused(f"{self.address} sent an array of dtype {dtype} in {len(frames) - 1} frames")
            arrays.append(np.frombuffer(frames[1], dtype=dtype).reshape(header["array"]["shape"]))
        return header, arrays

    def send(self, messages: list[dict]) -> "Pending":
        """Send ``messages`` at once (pipelined, from a DEALER socket with the REQ envelope); the replies are
        collected later (:meth:`Pending.collect`).  The requests wait in the server's queue together, so one
        pause of the run answers them all (within its serving budget), however busy this process is meanwhile."""
        import zmq

        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.address)
        for message in messages:
            sock.send_multipart([b"", json.dumps(message, allow_nan=False).encode()])
        return Pending(self, sock, messages, time.monotonic() + self.timeout)

    def status(self, idle=None) -> dict:
        return self.request({"request": "status"}, idle)[0]

    def get(self, array: str, ident: str | None = None) -> np.ndarray:
        message = {"request": "get", "array": array}
        if ident is not None:
            message["id"] = ident
        return self.request(message)[1][0]

    def stop(self) -> dict:
        return self.request({"request": "stop"})[0]

    def set(self, path: str, value) -> dict:
        return self.request({"request": "set", "path": path, "value": value})[0]
