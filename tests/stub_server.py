"""A real HTTP/1.1 server on 127.0.0.1 whose answers a test writes as a function:
plain answers, chunked streams that may stall or break off, dropped connections.
tests/scripted_server.py builds answers from a script on top of it.

It records every request, the client connections it saw and how many requests
were in progress at once, so tests can assert keep-alive and concurrency.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    method: str
    path: str
    raw_query: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    client: tuple[str, int]

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    """status/body/headers; or drop=True to close the connection unanswered; or
    chunks (a chunked body) followed, if hold is given, by a stall until hold is
    set, and ending cleanly unless abrupt_end."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False
    chunks: Iterable[bytes] | None = None
    hold: threading.Event | None = None
    abrupt_end: bool = False


Answerer = Callable[[Received], Reply]


class StubServer:
    def __init__(self, answer: Answerer) -> None:
        self.answer = answer
        self.received: list[Received] = []
        self.clients: set[tuple[str, int]] = set()
        self.in_progress = 0
        self.most_in_progress = 0
        self.lock = threading.Lock()
        self.closing = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def requests_to(self, path: str) -> list[Received]:
        with self.lock:
            return [request for request in self.received if request.path == path]

    def __enter__(self) -> StubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parsed = urllib.parse.urlsplit(self.path)
                received = Received(
                    self.command,
                    parsed.path,
                    parsed.query,
                    urllib.parse.parse_qs(parsed.query, keep_blank_values=True),
                    dict(self.headers.items()),
                    body,
                    self.client_address[:2],
                )
                with stub.lock:
                    stub.received.append(received)
                    stub.clients.add(received.client)
                    stub.in_progress += 1
                    stub.most_in_progress = max(stub.most_in_progress, stub.in_progress)
                try:
                    self._reply(stub.answer(received))
                finally:
                    with stub.lock:
                        stub.in_progress -= 1

            def _reply(self, reply: Reply) -> None:
                if reply.drop:
                    self.close_connection = True
                    self.connection.close()
                    return

                if reply.chunks is not None:
                    self._stream(reply)
                    return

                payload = (
                    reply.body
                    if isinstance(reply.body, bytes)
                    else json.dumps(
                        reply.body if reply.body is not None else {}
                    ).encode()
                )
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def _stream(self, reply: Reply) -> None:
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Transfer-Encoding", "chunked")
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                try:
                    for chunk in reply.chunks:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.flush()
                    if reply.hold is not None:
                        while not reply.hold.wait(0.05):
                            if stub.closing.is_set():
                                break
                    if reply.abrupt_end:
                        self.close_connection = True
                        self.connection.close()
                        return
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except OSError:
                    self.close_connection = True

            do_GET = do_POST = _serve

        return Handler
