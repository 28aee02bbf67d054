"""The Slack webhook stand-in: records messages, 429 when posted to too fast."""

from __future__ import annotations

import http.client
import json

import pytest

from standin.server import SlackConfig
from tests.standin.helpers import FakeClock


def _post(standin, body: bytes, path="/slack/webhook"):
    connection = http.client.HTTPConnection("127.0.0.1", standin.port)
    connection.request("POST", path, body, {"Content-Type": "application/json"})
    answer = connection.getresponse()
    result = answer.status, dict(answer.getheaders()), answer.read()
    connection.close()
    return result


@pytest.fixture
def clock():
    return FakeClock()


def test_messages_are_recorded_and_a_fast_caller_gets_429(
    start_standin, tmp_path, clock
):
    log_file = tmp_path / "slack" / "messages.jsonl"
    standin = start_standin(
        slack=SlackConfig(log_file=log_file, rate_per_second=1.0, burst=2, clock=clock)
    )
    messages = [
        {"text": "first"},
        {"attachments": [{"color": "danger", "text": "second"}]},
        {"text": "third"},
    ]

    answers = [_post(standin, json.dumps(message).encode()) for message in messages]

    assert [status for status, _, _ in answers] == [200, 200, 429]
    assert answers[0][2] == b"ok"
    assert answers[2][1]["Retry-After"] == "1"

    clock.advance(1.0)
    status, _, _ = _post(standin, json.dumps(messages[2]).encode())
    assert status == 200

    recorded = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [record["message"] for record in recorded] == messages
    assert standin.slack_messages() == messages
    stats = standin.stats()["slack"]
    assert (stats["messages"], stats["rate_limited"]) == (3, 1)


def test_retry_after_says_how_long_to_wait(start_standin, clock):
    standin = start_standin(
        slack=SlackConfig(rate_per_second=0.25, burst=1, clock=clock)
    )
    _post(standin, b'{"text": "one"}')

    status, headers, _ = _post(standin, b'{"text": "two"}')

    assert (status, headers["Retry-After"]) == (429, "4")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", b"invalid_payload"),
        (b"[1, 2]", b"invalid_payload"),
        (b'{"username": "bot"}', b"no_text"),
    ],
)
def test_a_bad_message_is_400(start_standin, body, reason):
    standin = start_standin()

    status, _, answer = _post(standin, body)

    assert (status, answer) == (400, reason)
    assert standin.stats()["slack"]["bad_requests"] == 1
    assert standin.slack_messages() == []


def test_blocks_alone_are_a_message_and_slack_paths_work(start_standin):
    standin = start_standin()

    status, _, _ = _post(
        standin, b'{"blocks": [{"type": "section"}]}', path="/services/T0/B0/XYZ"
    )

    assert status == 200
    assert standin.slack_messages() == [{"blocks": [{"type": "section"}]}]
