"""report_slack: LogEntry in, one Slack message out; folding, pacing, retries."""

from __future__ import annotations

import base64
import datetime
import json
import uuid

import pytest
import requests

from standin import functions as served_functions
from tests.conftest import PROJECT
from tests.scripted_server import Answer, ScriptedServer
from tests.waiting import wait_until

import slack_report


def log_entry(message: str = "could not store 3 rsvps items", **overrides) -> dict:
    entry = {
        "insertId": uuid.uuid4().hex,
        "logName": f"projects/{PROJECT}/logs/run.googleapis.com%2Fstdout",
        "severity": "ERROR",
        "timestamp": "2026-12-03T10:00:00.123Z",
        "resource": {
            "type": "cloud_run_revision",
            "labels": {"service_name": "save-stream-data", "location": "europe-west1"},
        },
        "jsonPayload": {"message": message, "label": "rsvps", "status": 503},
    }
    entry.update(overrides)
    return entry


def push_body(entry: object, raw: bytes | None = None) -> dict:
    """A Pub/Sub push request's body, as the emulator and Pub/Sub send it."""
    data = raw if raw is not None else json.dumps(entry).encode()
    return {
        "message": {
            "data": base64.b64encode(data).decode(),
            "messageId": uuid.uuid4().hex[:12],
            "publishTime": datetime.datetime.now(datetime.UTC).isoformat(),
        },
        "subscription": f"projects/{PROJECT}/subscriptions/errors-to-slack",
    }


@pytest.fixture
def report_function(load_function, slack):
    return load_function("report_slack", SLACK_WEBHOOK_URL=slack.url + "/slack/webhook")


def deliver(client, body: dict, **headers: str):
    return client.post(f"/projects/{PROJECT}/topics/errors", json=body, headers=headers)


def test_an_error_entry_becomes_one_slack_message(report_function, slack):
    answer = deliver(report_function, push_body(log_entry()))

    assert answer.status_code == 200
    [post] = slack.requests_to("/slack/webhook")
    message = post.json()
    assert message["text"].startswith("ERROR in cloud_run_revision save-stream-data")
    [attachment] = message["attachments"]
    assert attachment["color"] == slack_report.SEVERITY_COLOURS["ERROR"]
    assert attachment["text"] == "could not store 3 rsvps items"
    fields = {f["title"]: f["value"] for f in attachment["fields"]}
    assert fields["When"] == "2026-12-03T10:00:00.123Z"
    assert fields["label"] == '"rsvps"'
    assert fields["status"] == "503"


def test_a_text_payload_and_critical_severity_are_reported(report_function, slack):
    entry = log_entry(severity="CRITICAL", textPayload="Traceback: boom")
    del entry["jsonPayload"]

    deliver(report_function, push_body(entry))

    [post] = slack.requests_to("/slack/webhook")
    attachment = post.json()["attachments"][0]
    assert attachment["color"] == slack_report.SEVERITY_COLOURS["CRITICAL"]
    assert attachment["text"] == "Traceback: boom"


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"[1, 2]", b'{"severity": "ERROR"}', b"\xff\xfe"],
    ids=["not JSON", "array", "no payload", "not UTF-8"],
)
def test_a_message_that_is_not_a_log_entry_is_acknowledged_not_posted(
    report_function, slack, caplog, raw
):
    answer = deliver(report_function, push_body(None, raw=raw))

    assert answer.status_code == 200
    assert slack.requests_to("/slack/webhook") == []
    assert any(
        r.levelname == "WARNING" and "not a LogEntry" in r.getMessage()
        for r in caplog.records
    )


def test_identical_reports_within_the_window_are_folded(report_function, slack):
    for _ in range(5):
        deliver(report_function, push_body(log_entry()))
    deliver(report_function, push_body(log_entry("another failure")))

    posts = [
        p.json()["attachments"][0]["text"] for p in slack.requests_to("/slack/webhook")
    ]
    assert posts == ["could not store 3 rsvps items", "another failure"]


def test_an_event_older_than_the_maximum_age_is_dropped(load_function, slack):
    client = load_function(
        "report_slack",
        SLACK_WEBHOOK_URL=slack.url + "/slack/webhook",
        REPORT_MAX_AGE_SECONDS="60",
    )
    body = push_body(log_entry())
    body["message"]["publishTime"] = "2026-01-01T00:00:00Z"

    answer = deliver(client, body)

    assert answer.status_code == 200
    assert slack.requests_to("/slack/webhook") == []


def test_entries_of_report_slack_itself_are_never_reported(report_function, slack):
    entry = log_entry(
        resource={
            "type": "cloud_run_revision",
            "labels": {"service_name": "report-slack"},
        }
    )

    deliver(report_function, push_body(entry))

    assert slack.requests_to("/slack/webhook") == []


def test_when_slack_is_down_the_event_fails_so_pubsub_retries(
    report_function, slack, monkeypatch
):
    monkeypatch.setattr(slack_report, "POST_ATTEMPTS", 2)
    monkeypatch.setattr(slack_report, "_wait_for_slack", lambda state: 0.0)
    slack.default = Answer(503, {})

    answer = deliver(report_function, push_body(log_entry()))

    assert answer.status_code == 500
    assert len(slack.requests_to("/slack/webhook")) == 2


class FakeClock:
    """A monotonic clock that moves only when something sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def reporter(slack: ScriptedServer, clock: FakeClock, fold_s: float = 300.0):
    return slack_report.SlackReporter(
        slack.url + "/hook", requests.Session(), fold_s, clock=clock, sleep=clock.sleep
    )


def report(message: str) -> slack_report.Report:
    return slack_report.parse_log_entry(log_entry(message))


def test_posts_keep_to_one_a_second(slack):
    clock = FakeClock()
    slack_reporter = reporter(slack, clock)

    for n in range(3):
        slack_reporter.report(report(f"failure {n}"))

    assert len(slack.requests_to("/hook")) == 3
    assert clock.sleeps == [1.0, 1.0]


def test_a_429_is_waited_out_for_its_retry_after(slack):
    slack.script("/hook", Answer(429, {}, {"Retry-After": "3"}), Answer(200, {}))
    clock = FakeClock()

    reporter(slack, clock).report(report("failure"))

    assert len(slack.requests_to("/hook")) == 2
    assert sum(clock.sleeps) == pytest.approx(3.0)


def test_a_long_retry_after_is_left_to_pubsub(slack):
    slack.script("/hook", Answer(429, {}, {"Retry-After": "120"}))
    clock = FakeClock()

    with pytest.raises(slack_report.SlackUnavailable):
        reporter(slack, clock).report(report("failure"))

    assert clock.sleeps == []


def test_repeats_are_counted_in_the_next_post_after_the_window(slack):
    clock = FakeClock()
    slack_reporter = reporter(slack, clock, fold_s=60)

    slack_reporter.report(report("disk full"))
    for _ in range(4):
        clock.now += 5
        assert slack_reporter.report(report("disk full")) is False
    clock.now += 60
    assert slack_reporter.report(report("disk full")) is True

    titles = [p.json()["attachments"][0]["title"] for p in slack.requests_to("/hook")]
    assert titles == [
        "ERROR in cloud_run_revision save-stream-data",
        "ERROR in cloud_run_revision save-stream-data (repeated 5 times)",
    ]


@pytest.mark.emulator
def test_a_log_entry_published_to_pubsub_reaches_slack(
    pubsub_emulator, slack, tmp_path
):
    from google.cloud import pubsub_v1

    served = served_functions.serve_function(
        "report_slack",
        {
            "SLACK_WEBHOOK_URL": slack.url + "/slack/webhook",
            "PUBSUB_EMULATOR_HOST": pubsub_emulator.env["PUBSUB_EMULATOR_HOST"],
        },
        output=(tmp_path / "report_slack.log").open("wb"),
    )
    try:
        topic_name = f"errors-{uuid.uuid4().hex[:8]}"
        publisher = pubsub_v1.PublisherClient()
        subscriber = pubsub_v1.SubscriberClient()
        topic = publisher.topic_path(PROJECT, topic_name)
        publisher.create_topic(name=topic)
        subscriber.create_subscription(
            name=subscriber.subscription_path(PROJECT, f"{topic_name}-to-slack"),
            topic=topic,
            push_config={
                "push_endpoint": f"{served.url}projects/{PROJECT}/topics/{topic_name}"
            },
        )

        publisher.publish(topic, json.dumps(log_entry("published")).encode()).result(
            timeout=30
        )

        wait_until(lambda: slack.requests_to("/slack/webhook"), timeout_s=30)
        [post] = slack.requests_to("/slack/webhook")
        assert post.json()["attachments"][0]["text"] == "published"
    finally:
        served.stop()
