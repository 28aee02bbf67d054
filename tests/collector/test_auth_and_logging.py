"""Identity tokens per function URL, cached until shortly before expiry; and no
secret ever reaches a log line."""

from __future__ import annotations

import base64
import io
import json
import logging

import requests

from collector.auth import FunctionAuth, IdTokenCache, audience_of, token_expiry
from collector.config import LoggingSettings
from collector.logsetup import configure_logging, redact
from tests.stub_server import Received, Reply, StubServer


def jwt(expiry: float, subject: str = "trigger") -> str:
    def part(document: dict) -> str:
        return (
            base64.urlsafe_b64encode(json.dumps(document).encode()).decode().rstrip("=")
        )

    return f"{part({'alg': 'RS256'})}.{part({'exp': expiry, 'sub': subject})}.c2ln"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_token_is_cached_per_audience_until_shortly_before_it_expires() -> None:
    clock = Clock()
    fetched: list[str] = []

    def fetch(audience: str) -> str:
        fetched.append(audience)
        return jwt(clock.now + 3600, subject=str(len(fetched)))

    cache = IdTokenCache(refresh_before=300, fetch=fetch, clock=clock)

    first = cache.token("https://f-1")
    clock.now += 3299
    assert cache.token("https://f-1") == first
    cache.token("https://f-2")
    clock.now += 1
    assert cache.token("https://f-1") != first
    assert fetched == ["https://f-1", "https://f-2", "https://f-1"]


def test_a_token_without_a_readable_expiry_is_fetched_again_soon() -> None:
    clock = Clock()
    cache = IdTokenCache(
        refresh_before=300, fetch=lambda audience: "opaque", clock=clock
    )

    cache.token("a")
    clock.now += 299
    cache.token("a")
    clock.now += 2

    cache.token("a")
    assert cache.fetches == 2
    assert token_expiry("opaque") is None
    assert token_expiry(jwt(123.0)) == 123.0


def test_requests_carry_the_token_of_their_function_url() -> None:
    cache = IdTokenCache(fetch=lambda audience: jwt(4e9, subject=audience))
    auth = FunctionAuth("google_id_token", cache)

    with StubServer(lambda request: Reply(200, {})) as server:
        url = server.url + "/save_stream_data"
        requests.post(url, params={"label": "rsvps"}, auth=auth.for_url(url), timeout=5)
        received: Received = server.received[0]

    token = received.headers["Authorization"].removeprefix("Bearer ")
    assert token_expiry(token) == 4e9
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["sub"] == url  # the audience: the URL without its query
    assert audience_of(url + "?label=x#y") == url
    assert FunctionAuth("none").for_url(url) is None
    assert "eyJ" not in repr(auth.for_url(url))


def test_secrets_are_masked_in_log_lines() -> None:
    token = jwt(4e9)

    assert token not in redact(f"Authorization: Bearer {token}")
    assert "abc123" not in redact("GET /2/members?member_id=1&key=abc123&sign=true")
    assert "sign=true" in redact("GET /2/members?member_id=1&key=abc123&sign=true")
    assert token not in redact(f"token was {token}")


def test_structured_log_lines_are_json_and_never_carry_a_token(monkeypatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stdout", stream)
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging(LoggingSettings(destination="stdout", level="INFO"))
        logging.getLogger("collector.test").warning(
            "calling %s with Bearer %s",
            "https://f",
            jwt(4e9),
            extra={"json_fields": {"n": 1}},
        )
        logging.getLogger("collector.test").debug("not at INFO")
    finally:
        root.handlers[:], root.level = saved

    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    (entry,) = [entry for entry in entries if "message" in entry]
    assert entry["severity"] == "WARNING"
    assert entry["message"] == "calling https://f with Bearer <redacted>"
    assert entry["n"] == 1
