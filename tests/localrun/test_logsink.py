"""The local log sink: ERROR lines of a component reach report_slack as LogEntries,
and from there the Slack stand-in; report_slack's own errors never do."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from standin import logsink
from standin.functions import serve_function
from tests.scripted_server import ScriptedServer
from tests.waiting import wait_until


def structured(severity: str, message: str, **fields) -> bytes:
    return json.dumps({"severity": severity, "message": message, **fields}).encode()


def feed(sink: logsink.LogSink, component: str, lines: list[bytes], stderr=False):
    """Give the sink a pipe that carries the lines, as a child's output would."""
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "wb") as writer:
        writer.write(b"".join(line + b"\n" for line in lines))
    sink.attach(component, os.fdopen(read_end, "rb"), stderr=stderr)


@pytest.fixture
def routed(tmp_path: Path):
    entries: list[dict] = []
    sink = logsink.LogSink(tmp_path / "logs", [entries.append])
    yield sink, entries
    sink.close()


def test_only_error_and_above_are_routed_and_everything_is_kept(routed, tmp_path):
    sink, entries = routed

    feed(
        sink,
        "trigger",
        [
            structured("INFO", "started"),
            structured("WARNING", "retrying"),
            structured("ERROR", "dead letters: 3 rsvps", label="rsvps"),
            b"not json at all",
            structured("CRITICAL", "stopping"),
        ],
    )
    sink.drain(["trigger"])

    assert [e["severity"] for e in entries] == ["ERROR", "CRITICAL"]
    error = entries[0]
    assert error["jsonPayload"] == {
        "message": "dead letters: 3 rsvps",
        "label": "rsvps",
    }
    assert error["resource"] == {
        "type": "gce_instance",
        "labels": {"instance_id": "trigger"},
    }
    assert error["logName"] == "projects/local/logs/trigger"
    assert len((tmp_path / "logs" / "trigger.log").read_bytes().splitlines()) == 5


def test_report_slack_entries_are_excluded_as_the_cloud_sink_excludes_them(routed):
    sink, entries = routed

    feed(sink, "report_slack", [structured("ERROR", "Slack is down")])
    sink.drain(["report_slack"])

    assert entries == []
    assert sink.errors_by_component == {"report_slack": 1}


def test_a_traceback_on_stderr_is_one_entry(routed):
    sink, entries = routed

    feed(
        sink,
        "save_stream_data",
        [
            b"[INFO] booting worker",
            b"Traceback (most recent call last):",
            b'  File "main.py", line 1, in <module>',
            b"    boom()",
            b"RuntimeError: boom",
            b"[INFO] worker exiting",
        ],
        stderr=True,
    )
    sink.drain(["save_stream_data"])

    [entry] = entries
    assert entry["severity"] == "ERROR"
    assert entry["textPayload"].startswith("Traceback (most recent call last):")
    assert entry["textPayload"].endswith("RuntimeError: boom")
    assert entry["resource"]["labels"]["service_name"] == "save-stream-data"


def test_an_error_line_reaches_slack_through_report_slack(tmp_path: Path):
    with ScriptedServer() as slack:
        report_slack = serve_function(
            "report_slack", {"SLACK_WEBHOOK_URL": slack.url + "/slack/webhook"}
        )
        try:
            sink = logsink.LogSink(tmp_path, [logsink.push_to(report_slack.url)])
            feed(
                sink,
                "save_member_data",
                [structured("ERROR", "the Meetup API rejected the key")],
            )
            sink.close()

            [post] = wait_until(lambda: slack.requests_to("/slack/webhook"))
        finally:
            report_slack.stop()

    message = post.json()
    assert "ERROR in cloud_run_revision save-member-data" in message["text"]
    assert message["attachments"][0]["text"] == "the Meetup API rejected the key"


def test_archived_entries_are_kept_by_log_and_hour(tmp_path: Path):
    archive = logsink.archive_to(tmp_path)
    entry = logsink.log_entry("trigger", {"severity": "ERROR", "message": "lost"})

    archive(entry)
    archive(entry)

    moment = entry["timestamp"]
    path = (
        tmp_path
        / "trigger"
        / moment[:4]
        / moment[5:7]
        / moment[8:10]
        / f"{moment[11:13]}:00:00.json"
    )
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        entry,
        entry,
    ]
