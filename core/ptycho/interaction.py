"""The ZeroMQ interaction server of a ptychography run, and a client for scripts and tests.

A facility script watches or steers a running reconstruction through a fixed
set of requests; nothing a client sends is ever evaluated.  The server lives in
the reconstruction's own thread: the flow polls it between blocks of
``numiter_contiguous`` iterations, so every reply shows one consistent state.

Protocol (REQ/REP).  A request is ONE frame of JSON, an object with
``"request"`` naming one of:

* ``status`` -> run name, engine, iteration, last metrics, the engines'
  settable parameters, the arrays that can be fetched;
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
header gives (``"array": {"dtype", "shape"}``).  Requests over
:data:`MAX_REQUEST_BYTES` get an error reply; messages over 16 times that are
dropped by ZeroMQ itself, which closes the sender's connection.

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

import numpy as np

from difframe.errors import ParameterError, UsageError
from difframe.params import check_value
from difframe.ptycho.ptyr import ERROR_KEYS

log = logging.getLogger("difframe.interaction")

#: engine parameters a client may change: the flow and the engines read them at every block
SETTABLE = ("numiter", "numiter_contiguous", "alpha", "probe_inertia", "object_inertia", "probe_update_start")
MAX_REQUEST_BYTES = 64 * 1024
#: after a reply, further requests arriving within this many milliseconds are served in the same pause
CONVERSATION_MS = 200
ARRAYS = ("object", "probe", "positions", "error")


class RequestRefused(UsageError):
    """The server answered a request with an error."""


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _finite(value):
    """JSON-safe float: None where not finite."""
    return float(value) if math.isfinite(value) else None


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
    """Answers clients' requests about ``run`` and its ``model`` whenever :meth:`poll` is called."""

    def __init__(self, run, model, runtime: dict):
        self.run, self.model, self.runtime = run, model, runtime
        self.address: str | None = None
        self._context = self._socket = None
        self.pending: list[tuple[str, object]] = []  # validated (path, value) awaiting share_changes (MPI)

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
        sock = self._context.socket(zmq.REP)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, 16 * MAX_REQUEST_BYTES)
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
            self._socket.close(linger=0)
            self._context.term()
            self._socket = self._context = None

    def poll(self) -> int:
        """Serve every waiting request (and those of the same conversation); returns how many."""
        served, timeout = 0, 0
        while self._socket.poll(timeout):
            self._serve_one()
            served, timeout = served + 1, CONVERSATION_MS
        return served

    # -- one request ----------------------------------------------------------------------------

    def _serve_one(self) -> None:
        import zmq

        frames = self._socket.recv_multipart(zmq.NOBLOCK)
        try:
            header, arrays = self._answer(frames)
            reply = [json.dumps(header, allow_nan=False).encode()]
            reply += [np.ascontiguousarray(a).reshape(-1).view(np.uint8) for a in arrays]
        except UsageError as err:
            reply = [self._error(str(err))]
        except Exception as err:  # a bug in a handler must not end the reconstruction
            log.exception("interaction request failed")
            reply = [self._error(f"internal error: {type(err).__name__}: {err}")]
        self._socket.send_multipart(reply)

    @staticmethod
    def _error(message: str) -> bytes:
        log.info("interaction request refused: %s", message)
        return json.dumps({"ok": False, "error": message}).encode()

    def _answer(self, frames: list) -> tuple[dict, list]:
        if len(frames) != 1:
            raise RequestRefused(f"a request is one frame of JSON, got {len(frames)} frames")
        if len(frames[0]) > MAX_REQUEST_BYTES:
            raise RequestRefused(f"request of {len(frames[0])} bytes is over the limit of {MAX_REQUEST_BYTES}")
        try:
            message = json.loads(frames[0].decode("utf-8"), parse_constant=_reject_constant)
        except (UnicodeDecodeError, ValueError) as err:
            raise RequestRefused(f"request is not JSON: {err}") from None
        if not isinstance(message, dict) or not isinstance(message.get("request"), str):
            raise RequestRefused('request must be a JSON object with "request": "status" | "get" | "stop" | "set"')
        handler = {"status": self._status, "get": self._get, "stop": self._stop, "set": self._set}.get(
            message["request"])
        if handler is None:
            raise RequestRefused(f"unknown request {message['request']!r}: expected status, get, stop or set")
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
        }, []

    def _get(self, message) -> tuple[dict, list]:
        which, ident = message.get("array"), message.get("id")
        if which not in ARRAYS:
            raise RequestRefused(f"get: array {which!r} is not one of {', '.join(ARRAYS)}")
        if which == "error":
            info = self.runtime["iter_info"]
            array = np.array([entry["error"] for entry in info], dtype=np.float64).reshape(len(info), len(ERROR_KEYS))
        else:
            available = {"object": {k: s.data for k, s in self.model.objects.items()},
                         "probe": {k: s.data for k, s in self.model.probes.items()},
                         "positions": {s.label: s.positions for s in self.model.scans}}[which]
            if ident is None and len(available) == 1:
                ident = next(iter(available))
            if ident not in available:
                raise RequestRefused(f"get {which}: id {ident!r} is not one of {', '.join(map(repr, available))}")
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
            raise RequestRefused(f"set: path {path!r} must be engines.<label>.<key>")
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
        value = check_value(node, value, path)
        if self.model.ranks.size > 1:
            self.pending.append((path, value))
            log.info("interaction: %s = %r queued for all %d ranks", path, value, self.model.ranks.size)
            return {"ok": True, "path": path, "value": value, "state": "queued"}, []
        engines[label][key] = value
        log.info("interaction: %s = %r", path, value)
        return {"ok": True, "path": path, "value": value, "state": "applied"}, []


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

    def request(self, message: dict) -> tuple[dict, list[np.ndarray]]:
        """Send one request; returns (header, arrays).  RequestRefused on an error reply."""
        import zmq

        try:
            self._socket.send(json.dumps(message, allow_nan=False).encode())
            frames = self._socket.recv_multipart()
        except zmq.Again:
            self._socket.close(linger=0)  # a REQ socket that missed its reply cannot send again
            self._connect()
            raise TimeoutError(f"no reply from {self.address} within {self.timeout} s") from None
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

    def status(self) -> dict:
        return self.request({"request": "status"})[0]

    def get(self, array: str, ident: str | None = None) -> np.ndarray:
        message = {"request": "get", "array": array}
        if ident is not None:
            message["id"] = ident
        return self.request(message)[1][0]

    def stop(self) -> dict:
        return self.request({"request": "stop"})[0]

    def set(self, path: str, value) -> dict:
        return self.request({"request": "set", "path": path, "value": value})[0]
