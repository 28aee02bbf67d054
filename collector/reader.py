"""Stream readers: one chunked HTTP connection per stream label, kept alive.

Each reader reads lines, appends every item to the outbox before anything else,
and hands the member and group ids to the profile scheduler. When the
connection ends, stalls or fails it reconnects with backoff and resumes with
since_mtime = the largest mtime seen less a safety margin, keeping every other
query parameter of the configured URL exactly as written (open_venues' bare
"trickle" flag included).

Quiet or dead? Meetup sends no heartbeat, and photos or open_venues can be
silent for minutes. TCP keepalive probes find a dead peer while the stream is
quiet; the socket read timeout and the watchdog (no complete item for
idle_timeout_seconds, which also catches a trickle of bytes that never makes a
line) end a connection that says nothing, and the reader reconnects at once:
if the new connection is accepted the stream was only quiet (INFO, no backoff),
if not the connection was dead (WARNING, network backoff).

Backoff, as tweepy's stream does it: separate schedules for network errors,
HTTP errors and 420/429, all reset once an item arrives.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests
import urllib3

from collector import contract
from collector.backoff import ReconnectSchedule, parse_retry_after
from collector.config import ReaderSettings
from collector.items import LineSplitter, MalformedItem, StreamItem, parse_item
from collector.outbox import LabelOutbox, OutboxRecord
from collector.setaside import MalformedLines
from collector.stats import Counters

logger = logging.getLogger(__name__)

READER_COUNTERS = (
    "items",
    "malformed",
    "connects",
    "reconnects",
    "quiet_reconnects",
    "network_errors",
    "http_errors",
    "connected",
)
KEEPALIVE_IDLE_SECONDS = 30
KEEPALIVE_INTERVAL_SECONDS = 10
KEEPALIVE_PROBES = 3


def resume_url(url: str, since_mtime: int | None) -> str:
    """url with since_mtime set (and since_count dropped, as the two do not
    combine); every other query parameter is kept byte for byte, blank or not."""
    if since_mtime is None:
        return url

    parts = urllib.parse.urlsplit(url)
    kept = [
        parameter
        for parameter in parts.query.split("&")
        if parameter
        and parameter.partition("=")[0]
        not in (contract.SINCE_MTIME_PARAM, contract.SINCE_COUNT_PARAM)
    ]
    kept.append(f"{contract.SINCE_MTIME_PARAM}={since_mtime}")
    return urllib.parse.urlunsplit(parts._replace(query="&".join(kept)))


class _KeepAliveAdapter(requests.adapters.HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        options = list(urllib3.connection.HTTPConnection.default_socket_options)
        options.append((socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1))
        for name, value in (
            ("TCP_KEEPIDLE", KEEPALIVE_IDLE_SECONDS),
            ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_SECONDS),
            ("TCP_KEEPCNT", KEEPALIVE_PROBES),
        ):
            if hasattr(socket, name):
                options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
        kwargs["socket_options"] = options
        super().init_poolmanager(*args, **kwargs)


def stream_session(tcp_keepalive: bool) -> requests.Session:
    """A session for one stream: one connection, TCP keepalive on."""
    session = requests.Session()
    adapter_class = (
        _KeepAliveAdapter if tcp_keepalive else requests.adapters.HTTPAdapter
    )
    adapter = adapter_class(pool_connections=1, pool_maxsize=1, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


@dataclass(frozen=True)
class Disconnect:
    """Why a connection ended: "eof", "timeout", "idle", "stop", "network" or
    "http" (with the status and the server's Retry-After)."""

    kind: str
    detail: str = ""
    status: int | None = None
    retry_after: float | None = None


class StreamReader:
    """Reads one stream into its outbox until stopped."""

    def __init__(
        self,
        label: str,
        url: str,
        settings: ReaderSettings,
        outbox: LabelOutbox,
        malformed: MalformedLines,
        on_items: Callable[[list[StreamItem]], None] | None = None,
        start_mtime: int | None = None,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        session_factory: Callable[[], requests.Session] | None = None,
    ) -> None:
        self.label = label
        self.url = url
        self._settings = settings
        self._outbox = outbox
        self._malformed = malformed
        self._on_items = on_items
        self._clock = clock
        self._stopping = threading.Event()
        self._sleep = sleep if sleep is not None else self._stopping.wait
        self._session_factory = session_factory or (
            lambda: stream_session(settings.tcp_keepalive)
        )
        self.counters = Counters(READER_COUNTERS)
        self.largest_mtime = start_mtime
        self._schedules = {
            "network": ReconnectSchedule(
                settings.network_backoff.initial_seconds,
                settings.network_backoff.maximum_seconds,
            ),
            "http": ReconnectSchedule(
                settings.http_backoff.initial_seconds,
                settings.http_backoff.maximum_seconds,
            ),
            "rate_limited": ReconnectSchedule(
                settings.rate_limited_backoff.initial_seconds,
                settings.rate_limited_backoff.maximum_seconds,
            ),
        }
        self._splitter = LineSplitter(settings.max_line_bytes, self._on_oversized)
        self._lock = threading.Lock()
        self._response: requests.Response | None = None
        self._abort_reason: str | None = None
        self._connected_at: float | None = None
        self._data_since_connect = False
        self._progress_since_connect = False
        self.margin_ms = settings.resume_margin_ms
        self._checking_quiet = False
        self.last_item_at = clock()
        self._thread: threading.Thread | None = None

    # Lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.run, name=f"reader-{self.label}", daemon=True
        )
        self._thread.start()

    def request_stop(self) -> None:
        """Stop reading: end the connection; the read loop ends soon after."""
        self._stopping.set()
        self.abort("stop")

    def stop(self, timeout: float | None = None) -> None:
        """request_stop(), then wait up to timeout seconds for the thread."""
        self.request_stop()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def abort(self, reason: str) -> None:
        """End the current connection from another thread (watchdog, stop)."""
        with self._lock:
            response = self._response
            if response is None or self._abort_reason is not None:
                return
            self._abort_reason = reason
        _shut_down(response)

    def idle_seconds(self, now: float) -> float | None:
        """Seconds without a complete item on a live connection, else None."""
        with self._lock:
            if self._response is None or self._abort_reason is not None:
                return None
            return now - self.last_item_at

    # The read loop -----------------------------------------------------------

    def run(self) -> None:
        session = self._session_factory()
        try:
            while not self._stopping.is_set():
                disconnect = self._read_connection(session)
                if self._stopping.is_set():
                    break
                wait = self._on_disconnect(disconnect)
                if wait > 0:
                    self._sleep(wait)
        except _OutboxClosed:
            pass
        except Exception:
            logger.critical(
                "stream reader %s stopped by an unexpected error",
                self.label,
                exc_info=True,
            )
            raise
        finally:
            session.close()
            self.counters.set("connected", 0)

    def _read_connection(self, session: requests.Session) -> Disconnect:
        url = resume_url(self.url, self._resume_mtime())
        self.counters.add("connects")
        try:
            response = session.get(
                url,
                stream=True,
                timeout=(
                    self._settings.connect_timeout_seconds,
                    self._settings.read_timeout_seconds,
                ),
                headers={"Accept": "application/json"},
            )
        except requests.RequestException as error:
            return Disconnect("network", _describe(error))

        with response:
            if response.status_code != 200:
                return Disconnect(
                    "http",
                    f"HTTP {response.status_code}",
                    status=response.status_code,
                    retry_after=parse_retry_after(response.headers.get("Retry-After")),
                )
            return self._read_response(response, url)

    def _read_response(self, response: requests.Response, url: str) -> Disconnect:
        self._on_connect(response, url)
        try:
            for data in _network_chunks(response):
                lines = self._splitter.feed(data)
                if lines:
                    self._take_lines(lines)
                if self._abort_reason is not None:
                    break  # in case the socket could not be shut down
            disconnect = Disconnect("eof", "the server ended the stream")
        except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as e:
            if _is_timeout(e):
                disconnect = Disconnect(
                    "timeout",
                    f"no data for {self._settings.read_timeout_seconds:g} s",
                )
            else:
                disconnect = Disconnect("network", _describe(e))
        finally:
            with self._lock:
                self._response = None
                reason, self._abort_reason = self._abort_reason, None
            self.counters.set("connected", 0)
            self._splitter.reset()

        if reason == "stop":
            return Disconnect("stop")
        if reason == "idle":
            return Disconnect(
                "idle",
                f"no complete item for {self._settings.idle_timeout_seconds:g} s",
            )
        return disconnect

    def _on_connect(self, response: requests.Response, url: str) -> None:
        with self._lock:
            self._response = response
            self._abort_reason = None
            self._connected_at = self._clock()
            self.last_item_at = self._connected_at
        self._data_since_connect = False
        self._progress_since_connect = False
        self.counters.set("connected", 1)

        if self._checking_quiet:
            self._checking_quiet = False
            self.counters.add("quiet_reconnects")
            logger.info(
                "stream %s was quiet, not dead: reconnected at once (%s)",
                self.label,
                url,
            )
        else:
            logger.info("stream %s connected: %s", self.label, url)

        if self._stopping.is_set():
            # stop() may have run between the request and this point.
            _shut_down(response)

    def _on_disconnect(self, disconnect: Disconnect) -> float:
        """Log the disconnect and return the wait before reconnecting."""
        self.counters.add("reconnects")
        self._adapt_margin()

        if disconnect.kind in ("timeout", "idle"):
            self._checking_quiet = True
            logger.info(
                "stream %s: %s; reconnecting at once to tell quiet from dead",
                self.label,
                disconnect.detail,
            )
            return 0.0

        was_checking_quiet, self._checking_quiet = self._checking_quiet, False
        if disconnect.kind == "http":
            self.counters.add("http_errors")
            rate_limited = disconnect.status in (420, 429)
            schedule = self._schedules["rate_limited" if rate_limited else "http"]
            wait = schedule.next_wait()
            if disconnect.retry_after is not None:
                wait = max(wait, disconnect.retry_after)
        else:
            self.counters.add("network_errors")
            wait = self._schedules["network"].next_wait()

        logger.warning(
            "stream %s %s: %s; reconnecting in %.2f s (since_mtime=%s)",
            self.label,
            "is dead" if was_checking_quiet else "disconnected",
            disconnect.detail,
            wait,
            self._resume_mtime(),
            extra={
                "json_fields": {
                    "label": self.label,
                    "disconnect": disconnect.kind,
                    "status": disconnect.status,
                }
            },
        )
        return wait

    def _take_lines(self, lines: list[bytes]) -> None:
        items: list[StreamItem] = []
        for line in lines:
            try:
                items.append(parse_item(self.label, line))
            except MalformedItem as error:
                self.counters.add("malformed")
                self._malformed.add(self.label, line, str(error))
        if not items:
            return

        try:
            self._outbox.append(OutboxRecord(item.mtime, item.raw) for item in items)
        except RuntimeError as error:
            raise _OutboxClosed() from error

        mtimes = [item.mtime for item in items if item.mtime is not None]
        with self._lock:
            if mtimes:
                largest = max(mtimes)
                if self.largest_mtime is None or largest > self.largest_mtime:
                    self.largest_mtime = largest
                    self._progress_since_connect = True
            self.last_item_at = self._clock()
        self.counters.add("items", len(items))

        if not self._data_since_connect:
            self._data_since_connect = True
            for schedule in self._schedules.values():
                schedule.reset()
        if self._on_items is not None:
            self._on_items(items)

    def _resume_mtime(self) -> int | None:
        if self.largest_mtime is None:
            return None
        return max(self.largest_mtime - self.margin_ms, 0)

    def _adapt_margin(self) -> None:
        """Halve the resume margin after a connection that only replayed items
        (it ended before passing the largest mtime), so that a stream that keeps
        ending sooner than its margin takes to replay still moves on; back to
        the configured margin as soon as a connection brings something new."""
        configured = self._settings.resume_margin_ms
        if self._progress_since_connect:
            self.margin_ms = configured
        elif self._data_since_connect and self.margin_ms > 0:
            self.margin_ms //= 2
            logger.info(
                "stream %s ended before passing its resume point: resume margin "
                "now %d ms (configured %d ms)",
                self.label,
                self.margin_ms,
                configured,
            )
        self._data_since_connect = False
        self._progress_since_connect = False

    def _on_oversized(self, prefix: bytes, size: int) -> None:
        self.counters.add("malformed")
        self._malformed.add(
            self.label,
            prefix,
            f"line over {self._settings.max_line_bytes} bytes",
            size=size,
        )


class _OutboxClosed(Exception):
    """The outbox was closed under a reader that was still running."""


def _network_chunks(response: requests.Response):
    """The body as it arrives: one piece per HTTP chunk of a chunked stream,
    whatever is available otherwise."""
    raw = response.raw
    if raw.chunked:
        yield from raw.read_chunked(decode_content=True)
        return

    while True:
        data = raw.read1(65536)
        if not data:
            return
        yield data


def _is_timeout(error: BaseException) -> bool:
    """Whether error (or what it wraps) is a socket read timeout."""
    seen = 0
    current: BaseException | None = error
    while current is not None and seen < 10:
        if isinstance(
            current,
            socket.timeout
            | urllib3.exceptions.TimeoutError
            | requests.exceptions.Timeout,
        ):
            return True
        wrapped = current.args[0] if current.args else None
        current = (
            current.__cause__
            or current.__context__
            or (wrapped if isinstance(wrapped, BaseException) else None)
        )
        seen += 1
    return False


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:300]


def _shut_down(response: requests.Response) -> None:
    """Shut the socket under response down, waking a read blocked on it."""
    sock = _socket_of(response)
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _socket_of(response: requests.Response) -> socket.socket | None:
    # When the server answers "Connection: close", as a stream does, http.client
    # lets go of the connection's socket and only the response's file object
    # (a buffered reader over socket.SocketIO) still holds it.
    connection = getattr(response.raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is None:
        reader = getattr(getattr(response.raw, "_fp", None), "fp", None)
        sock = getattr(getattr(reader, "raw", None), "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


class Watchdog:
    """Ends connections that delivered no complete item for too long."""

    def __init__(self, readers: list[StreamReader], idle_timeout: float) -> None:
        self._readers = readers
        self._idle_timeout = idle_timeout

    def check(self, now: float) -> None:
        for reader in self._readers:
            idle = reader.idle_seconds(now)
            if idle is not None and idle >= self._idle_timeout:
                logger.info(
                    "watchdog: stream %s gave no complete item for %.0f s; "
                    "ending the connection",
                    reader.label,
                    idle,
                )
                reader.abort("idle")
