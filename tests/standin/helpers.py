"""A raw HTTP/1.1 client for the stand-in's streams, and small waiting helpers.

RawStream reads the chunked response byte by byte as it is framed on the wire,
so tests see exactly what a client would: the status line, the headers, then
each chunk's size line, payload and CRLF.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any

EPOCH_MS = 1_600_000_000_000
WAIT_S = 5.0


class EndOfStream(Exception):
    """The server sent the last (zero-size) chunk."""


class RawStream:
    def __init__(self, port: int, path: str, timeout: float = WAIT_S) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
        )
        self.buffer = bytearray()
        head = self.read_until(b"\r\n\r\n")[:-4].decode("latin-1")
        status_line, *header_lines = head.split("\r\n")
        self.status_line = status_line
        self.status = int(status_line.split()[1])
        self.headers = {}
        for line in header_lines:
            name, _, value = line.partition(": ")
            self.headers[name.lower()] = value
        self.body = b""
        if "content-length" in self.headers:
            self.body = self.read_exact(int(self.headers["content-length"]))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def json(self) -> Any:
        return json.loads(self.body)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("the server closed the connection")
        self.buffer += data

    def read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            self._fill()
        end = self.buffer.index(marker) + len(marker)
        data = bytes(self.buffer[:end])
        del self.buffer[:end]
        return data

    def read_exact(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def next_chunk(self) -> bytes:
        """One chunk's payload; checks the framing around it."""
        size_line = self.read_until(b"\r\n")
        size = int(size_line[:-2], 16)
        assert size_line == b"%x\r\n" % size, size_line
        if size == 0:
            assert self.read_exact(2) == b"\r\n"
            raise EndOfStream
        payload = self.read_exact(size)
        assert self.read_exact(2) == b"\r\n", "a chunk must end in CRLF"
        return payload

    def next_item(self) -> dict[str, Any]:
        payload = self.next_chunk()
        assert payload.endswith(b"\n") and payload.count(b"\n") == 1, payload
        item = json.loads(payload)
        assert isinstance(item, dict)
        return item

    def items(self, count: int) -> list[dict[str, Any]]:
        return [self.next_item() for _ in range(count)]

    def payloads(self, count: int) -> list[bytes]:
        return [self.next_chunk() for _ in range(count)]

    def is_quiet(self, seconds: float = 0.3) -> bool:
        """True if nothing arrives for `seconds` and the connection stays open."""
        if self.buffer:
            return False
        self.sock.settimeout(seconds)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return True
        finally:
            self.sock.settimeout(WAIT_S)
        if not data:
            raise EOFError("the server closed the connection")
        self.buffer += data
        return False

    def at_eof(self) -> bool:
        """True if the server closed the connection (within WAIT_S)."""
        try:
            while True:
                self._fill()
        except EOFError:
            return True
        except TimeoutError:
            return False


def wait_for(condition: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    """Poll condition until it is true (its value) or fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.01)


class FakeClock:
    """A monotonic clock that moves only when told."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
