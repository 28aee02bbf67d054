"""A reverse proxy on 127.0.0.1 that passes requests to one function, except during
a burst of 503s, for the soak. A function's own 503s come only from storage
failures; this makes them on demand without touching the function."""

from __future__ import annotations

import contextlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length"}


class ChaosProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.burst_until = 0.0
        self.answered_503 = 0
        self.forwarded = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.1,), daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    def burst(self, seconds: float) -> None:
        """Answer every request with 503 for the next `seconds`."""
        with self._lock:
            self.burst_until = time.monotonic() + seconds

    def start(self) -> ChaosProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self
        local = threading.local()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def handle(self) -> None:
                # The trigger killed mid-request leaves a broken pipe; it posts
                # the chunk again when it starts.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    super().handle()

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy._lock:
                    in_burst = time.monotonic() < proxy.burst_until
                    if in_burst:
                        proxy.answered_503 += 1
                if in_burst:
                    self._answer(503, {"Retry-After": "1"}, b'{"error": "burst"}')
                    return

                session = getattr(local, "session", None) or requests.Session()
                local.session = session
                try:
                    answer = session.post(
                        proxy.upstream + self.path,
                        data=body,
                        headers={"Content-Type": self.headers["Content-Type"] or ""},
                        timeout=120,
                    )
                except requests.RequestException:
                    self._answer(502, {}, b'{"error": "the function is down"}')
                    return
                with proxy._lock:
                    proxy.forwarded += 1
                headers = {
                    k: v
                    for k, v in answer.headers.items()
                    if k.lower() not in HOP_HEADERS
                }
                self._answer(answer.status_code, headers, answer.content)

            def _answer(
                self, status: int, headers: dict[str, str], body: bytes
            ) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler
