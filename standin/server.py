"""The stand-in for stream.meetup.com, api.meetup.com and a Slack webhook.

One threaded HTTP server on one port serves:

- GET /2/<label>: a stream (rsvps, open_events, event_comments, photos,
  open_venues), with since_mtime, since_count, event_id and, on open_venues,
  trickle; at most `max_connections_per_client` open per client address, the
  next one refused with 429 and a JSON reason;
- GET /2/members?member_id=ID&key=KEY and GET /2/groups?group_id=A,B&key=KEY;
- POST /slack/webhook (also /services/...), recorded as JSON lines;
- GET /_standin/stats, GET /_standin/served/<label> (NDJSON of the distinct
  {"id", "mtime"} versions written to any client), GET and POST
  /_standin/faults (change faults at run time).

In-process use, as tests and benchmarks do:

    config = StandInConfig(seed=1, streams={"rsvps": StreamConfig(rate=None)})
    with StandIn(config) as standin:
        standin.url, standin.stats(), standin.served("rsvps")
        standin.set_faults("rsvps", drop_after=50)
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import random
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from standin.api import ProfileApi
from standin.config import (
    API_FAULTS,
    LABELS,
    STREAM_FAULTS,
    ApiConfig,
    Quirks,
    SlackConfig,
    StandInConfig,
    StreamConfig,
    check_fault,
)
from standin.items import GENERATED_SOURCES, ReplaySource, VenueTableSource
from standin.slack import SlackWebhook
from standin.streams import (
    ConnectionCap,
    StreamCounters,
    StreamRequest,
    StreamSession,
)
from standin.timeline import TableTimeline, Timeline
from standin.world import World

__all__ = [
    "ApiConfig",
    "Quirks",
    "SlackConfig",
    "StandIn",
    "StandInConfig",
    "StreamConfig",
    "LABELS",
]

logger = logging.getLogger(__name__)

STOP_TIMEOUT_S = 5.0
MAX_BODY_BYTES = 10 * 1024 * 1024
IDLE_CONNECTION_TIMEOUT_S = 60.0
EVENT_STREAMS = ("rsvps", "event_comments", "photos")


class StandIn:
    """The three stand-ins on one port; start() and stop(), or use `with`."""

    def __init__(self, config: StandInConfig | None = None) -> None:
        config = config or StandInConfig()
        self.config = config
        self.epoch_ms = (
            config.epoch_ms if config.epoch_ms is not None else int(time.time() * 1000)
        )
        self.world = World(config.seed, self.epoch_ms)
        self._timelines: dict[str, Timeline] = {}
        self._counters: dict[str, StreamCounters] = {}
        for label in LABELS:
            # A copy, so that set_faults never changes the caller's object.
            stream = dataclasses.replace(config.streams.get(label) or StreamConfig())
            self._timelines[label] = Timeline(
                label, self._source(label, stream), stream
            )
            self._counters[label] = StreamCounters()
        venues = self._timelines["open_venues"].config
        self._venue_table = TableTimeline(VenueTableSource(self.world, _quirks(venues)))
        self._cap = ConnectionCap(config.max_connections_per_client)
        self.api = ProfileApi(
            self.world, config.api_key, dataclasses.replace(config.api)
        )
        self.slack = SlackWebhook(config.slack)
        self._faults_lock = threading.Lock()
        self._connection_numbers = itertools.count()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def _source(self, label: str, stream: StreamConfig) -> Any:
        quirks = _quirks(stream)
        if stream.replay_file is not None:
            return ReplaySource(label, stream.replay_file, quirks)
        return GENERATED_SOURCES[label](
            label, self.world, quirks, self.epoch_ms, stream.rate, stream.backlog
        )

    # lifecycle

    def start(self) -> StandIn:
        """Bind the port and serve in daemon threads; returns self."""
        if self._server is not None or self._stopping.is_set():
            raise RuntimeError("a StandIn starts once")

        self._server = _Server((self.config.host, self.config.port), self)
        for timeline in self._timelines.values():
            timeline.restart_clock()
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="standin-server",
            daemon=True,
        )
        self._thread.start()
        logger.info("stand-in serving on %s (seed %d)", self.url, self.config.seed)
        return self

    def stop(self) -> None:
        """Stop serving and close every open connection, streams included."""
        server = self._server
        if server is None or self._stopping.is_set():
            return

        self._stopping.set()
        server.shutdown()
        server.close_connections(STOP_TIMEOUT_S)
        server.server_close()
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_S)
        logger.info("stand-in on %s stopped", self.url)

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the stand-in is not started")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    def urls(self) -> dict[str, str]:
        """Every URL served, by name (open_venues with its trickle flag)."""
        urls = {label: f"{self.url}/2/{label}" for label in LABELS}
        urls["open_venues"] += "?trickle"
        urls.update(
            members=f"{self.url}/2/members",
            groups=f"{self.url}/2/groups",
            slack=f"{self.url}/slack/webhook",
            stats=f"{self.url}/_standin/stats",
            faults=f"{self.url}/_standin/faults",
        )
        return urls

    # what tests look at

    def stats(self) -> dict[str, Any]:
        """What has been served; the same as GET /_standin/stats."""
        streams = {}
        for label, timeline in self._timelines.items():
            config = timeline.config
            streams[label] = {
                **self._counters[label].snapshot(),
                "generated": timeline.generated,
                "head": timeline.head(),
                "silences": timeline.silences,
                "rate": config.rate,
                "max_items": config.max_items,
                "replay_file": (
                    str(config.replay_file) if config.replay_file is not None else None
                ),
            }
        return {
            "seed": self.config.seed,
            "epoch_ms": self.epoch_ms,
            "streams": streams,
            "connections": {
                "open": self._cap.open_connections(),
                "refused_over_cap": self._cap.refused,
                "limit_per_client": self._cap.limit,
            },
            "api": self.api.stats(),
            "slack": self.slack.stats(),
        }

    def served(self, label: str) -> set[tuple[Any, int | None]]:
        """The distinct (item_id, mtime) versions written to any client."""
        if label not in self._timelines:
            raise ValueError(f"unknown stream {label!r}")
        versions = self._timelines[label].served_versions()
        if label == "open_venues":
            versions |= self._venue_table.served_versions()
        return versions

    def slack_messages(self) -> list[dict[str, Any]]:
        """The Slack messages accepted so far, oldest first."""
        return [record["message"] for record in self.slack.recorded()]

    # faults

    def faults(self) -> dict[str, dict[str, Any]]:
        current = {label: t.config.faults() for label, t in self._timelines.items()}
        current["api"] = {knob: getattr(self.api.config, knob) for knob in API_FAULTS}
        return current

    def set_faults(self, label: str, **knobs: Any) -> dict[str, dict[str, Any]]:
        """Change faults of a stream (or of "api") now; returns all faults.

        Stream knobs: see config.STREAM_FAULTS; "api" knobs: error_rate,
        latency_ms. Setting silent_seconds on a stream without silent_every
        makes it go silent once, now, for that long.
        """
        allowed = API_FAULTS if label == "api" else STREAM_FAULTS
        if label != "api" and label not in self._timelines:
            raise ValueError(f"unknown stream {label!r}")
        for knob, value in knobs.items():
            if knob not in allowed:
                raise ValueError(f"{label} has no fault {knob!r}; known: {allowed}")
            check_fault(knob, value)

        with self._faults_lock:
            if label == "api":
                target: Any = self.api.config
            else:
                target = self._timelines[label].config
            for knob, value in knobs.items():
                setattr(target, knob, value)
            if (
                label != "api"
                and knobs.get("silent_seconds")
                and target.silent_every is None
            ):
                self._timelines[label].silence_for(knobs["silent_seconds"])
        logger.info("faults of %s set: %s", label, knobs)
        return self.faults()

    def _take_connect_503(self, label: str) -> bool:
        with self._faults_lock:
            config = self._timelines[label].config
            if config.connect_503 > 0:
                config.connect_503 -= 1
                return True
            return False

    # serving a stream (called from the handler's thread)

    def _serve_stream(
        self, handler: _Handler, label: str, request: StreamRequest
    ) -> None:
        counters = self._counters[label]
        address = handler.client_address[0]
        if not self._cap.acquire(address):
            counters.add("refused_over_cap")
            logger.info(
                "%s: refused a connection from %s: %d open already",
                label,
                address,
                self._cap.limit,
            )
            handler.send_json(
                429,
                {
                    "problem": "Too many connections",
                    "code": "connection_limit",
                    "details": (
                        f"at most {self._cap.limit} open stream connections per "
                        "client address"
                    ),
                },
                close=True,
            )
            return

        try:
            if self._take_connect_503(label):
                counters.add("refused_503")
                logger.info("%s: answered a connect with 503 (fault)", label)
                handler.send_json(
                    503,
                    {
                        "problem": "Service Unavailable",
                        "code": "unavailable",
                        "details": "an injected fault of the stand-in",
                    },
                    close=True,
                )
                return

            self._stream_to(handler, label, request, counters)
        finally:
            self._cap.release(address)

    def _stream_to(
        self,
        handler: _Handler,
        label: str,
        request: StreamRequest,
        counters: StreamCounters,
    ) -> None:
        handler.close_connection = True
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json; charset=utf-8")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.send_header("Connection", "close")
        handler.end_headers()

        sock = handler.connection
        sock.settimeout(None)
        number = next(self._connection_numbers)
        session = StreamSession(
            sock,
            self._timelines[label],
            self._venue_table if label == "open_venues" else None,
            request,
            counters,
            self._stopping,
            random.Random(f"{self.config.seed}/{label}/connection/{number}"),
        )
        counters.add("connections_total")
        counters.add("connections_open")
        logger.info(
            "%s: connection %d from %s opened (%s)",
            label,
            number,
            handler.client_address[0],
            _describe(request),
        )
        try:
            ending = session.run()
        finally:
            counters.add("connections_open", -1)
        logger.info(
            "%s: connection %d ended (%s) after %d items",
            label,
            number,
            ending,
            session.sent,
        )


def _quirks(stream: StreamConfig) -> Quirks:
    quirks = stream.quirks
    assert isinstance(quirks, Quirks)
    return quirks


def _describe(request: StreamRequest) -> str:
    parts = [
        f"{name}={value}"
        for name, value in dataclasses.asdict(request).items()
        if value not in (None, False)
    ]
    return ", ".join(parts) or "live"


def _stream_request(label: str, params: dict[str, list[str]]) -> StreamRequest:
    # TODO: callback=NAME (Meetup's JSONP long-poll) and the WebSocket variant of
    # rsvps, photos and comments are not served: no part of the project reads
    # them. A callback is ignored and the stream is served as usual.
    def integer(name: str) -> int | None:
        values = params.get(name)
        if not values:
            return None
        try:
            return int(values[0])
        except ValueError:
            raise ValueError(f"{name} must be an integer") from None

    since_mtime = integer("since_mtime")
    since_count = integer("since_count")
    if since_mtime is not None and since_count is not None:
        raise ValueError("since_mtime and since_count cannot be combined")
    if since_count is not None and since_count < 0:
        raise ValueError("since_count must be >= 0")
    event_ids = params.get("event_id")
    return StreamRequest(
        since_mtime=since_mtime,
        since_count=since_count,
        trickle=label == "open_venues" and "trickle" in params,
        event_id=event_ids[0] if event_ids and label in EVENT_STREAMS else None,
    )


class _Server(ThreadingHTTPServer):
    """A thread per connection; remembers open connections so stop() can end them."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], standin: StandIn) -> None:
        self.standin = standin
        self._open: dict[socket.socket, threading.Thread] = {}
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name=f"standin-{client_address[0]}:{client_address[1]}",
            daemon=True,
        )
        with self._open_lock:
            self._open[request] = thread
        thread.start()

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.pop(request, None)
        super().shutdown_request(request)

    def close_connections(self, timeout: float) -> None:
        """Shut every open connection down and wait (up to timeout) for its thread."""
        with self._open_lock:
            connections = list(self._open.items())
        for sock, _thread in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for _sock, thread in connections:
            thread.join(max(0.0, deadline - time.monotonic()))

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Called from socketserver's own except clause.
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | TimeoutError):
            logger.debug("%s went away: %s", client_address[0], error)
            return
        logger.warning(
            "error while serving %s: %s", client_address[0], error, exc_info=error
        )


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "standin"
    timeout = IDLE_CONNECTION_TIMEOUT_S
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Answers go out as headers then body: without this, Nagle's algorithm
        # and the client's delayed ACK hold every answer back for 40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        path = url.path
        standin = self.server.standin

        if path.startswith("/2/") and path[3:] in LABELS:
            label = path[3:]
            params = parse_qs(url.query, keep_blank_values=True)
            try:
                request = _stream_request(label, params)
            except ValueError as error:
                self.send_json(400, {"problem": "Bad request", "details": str(error)})
                return
            standin._serve_stream(self, label, request)
        elif path.startswith("/2/"):
            answer = standin.api.handle(
                path, url.query, self.headers.get("Authorization"), self._base_url()
            )
            self.send_body(answer.status, answer.body, answer.headers)
        elif path == "/_standin/stats":
            self.send_json(200, standin.stats())
        elif path == "/_standin/faults":
            self.send_json(200, standin.faults())
        elif path.startswith("/_standin/served/"):
            self._send_served(path.removeprefix("/_standin/served/"))
        else:
            self.send_json(404, {"problem": "Not found", "details": path})

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        body = self._read_body()
        if body is None:
            return

        standin = self.server.standin
        if path == "/slack/webhook" or path.startswith("/services/"):
            status, headers, answer = standin.slack.handle(body)
            self.send_body(status, answer, headers)
        elif path == "/_standin/faults":
            self._set_faults(body)
        else:
            self.send_json(404, {"problem": "Not found", "details": path})

    def _set_faults(self, body: bytes) -> None:
        """{"label": L, knob: value, ...} or {L: {knob: value}, ...}."""
        standin = self.server.standin
        try:
            request = json.loads(body)
            if not isinstance(request, dict):
                raise ValueError("expected a JSON object")
            if "label" in request:
                label = request.pop("label")
                changes = {label: request}
            else:
                changes = request
            for label, knobs in changes.items():
                if not isinstance(knobs, dict):
                    raise ValueError(f"faults of {label} must be an object")
                standin.set_faults(label, **knobs)
        except ValueError as error:
            self.send_json(400, {"problem": "Bad request", "details": str(error)})
            return
        self.send_json(200, standin.faults())

    def _send_served(self, label: str) -> None:
        standin = self.server.standin
        if label not in LABELS:
            self.send_json(404, {"problem": "Not found", "details": label})
            return

        versions = sorted(standin.served(label), key=lambda v: (str(v[0]), v[1] or 0))
        lines = [
            json.dumps({"id": item_id, "mtime": mtime}) + "\n"
            for item_id, mtime in versions
        ]
        self.send_body(
            200, "".join(lines).encode(), {"Content-Type": "application/x-ndjson"}
        )

    def _read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.send_json(411, {"problem": "Length required"}, close=True)
            return None
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self.send_json(400, {"problem": "Bad Content-Length"}, close=True)
            return None
        return self.rfile.read(length)

    def _base_url(self) -> str:
        host = self.headers.get("Host") or "{}:{}".format(*self.server.server_address)
        return f"http://{host}"

    def send_json(self, status: int, body: Any, close: bool = False) -> None:
        self.send_body(
            status,
            json.dumps(body).encode(),
            {"Content-Type": "application/json; charset=utf-8"},
            close=close,
        )

    def send_body(
        self, status: int, body: bytes, headers: dict[str, str], close: bool = False
    ) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        # The default writes the request line, query string (and API key) included,
        # to stderr; keep only the path, and only at DEBUG.
        logger.debug("%s %s", self.client_address[0], self._logged_path())

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        logger.debug("%s %s %s", self.command, self._logged_path(), code)

    def _logged_path(self) -> str:
        return urlsplit(getattr(self, "path", "")).path
