"""The command line: --help, config errors before anything starts, the
dead-letter commands, and a whole run that ends on SIGTERM with exit 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import deque
from pathlib import Path

import pytest

from collector.cli import main
from collector.outbox import OutboxRecord
from collector.setaside import DeadLetters
from tests.collector.test_config import MINIMAL
from tests.stub_server import Received, Reply, StubServer
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


def write_config(tmp_path: Path, **changes: object) -> Path:
    document = {**MINIMAL, "state_dir": "state", **changes}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(document))
    return path


def test_help_explains_every_flag_and_command(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])

    text = capsys.readouterr().out
    assert exited.value.code == 0
    for word in (
        "--config",
        "--duration",
        "--streams",
        "--log-level",
        "dead-letters list",
        "dead-letters resend",
        "check-config",
        "SIGTERM",
    ):
        assert word in text


def test_a_wrong_config_stops_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = write_config(tmp_path, chunks={"max_items": -1})

    assert main(["--config", str(path)]) == 2
    assert (
        "config error: chunks.max_items: must be greater than 0"
        in capsys.readouterr().err
    )
    assert not (tmp_path / "state").exists()


def test_unknown_streams_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--config", str(write_config(tmp_path)), "--streams", "rsvps,tweets"])

    assert exited.value.code == 2
    assert "unknown streams tweets" in capsys.readouterr().err


def test_dead_letters_are_listed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write_config(tmp_path)
    dead_letters = DeadLetters(tmp_path / "state")
    dead_letters.add(
        "rsvps", [OutboxRecord(5, b'{"rsvp_id": 77, "mtime": 5}')], 400, "bad"
    )
    dead_letters.add(
        "photos", [OutboxRecord(6, b'{"photo_id": 8, "mtime": 6}')], 200, "odd"
    )

    assert (
        main(["--config", str(path), "dead-letters", "list", "--label", "rsvps"]) == 0
    )

    out = capsys.readouterr().out
    assert "id=77" in out and "status=400" in out and "bad" in out
    assert "1 dead letters (rsvps: 1)" in out
    assert "photo" not in out.split("file:")[0]


def test_resend_sends_dead_letters_again_and_keeps_those_refused_again(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    dead_letters = DeadLetters(tmp_path / "state")
    good = OutboxRecord(5, b'{"rsvp_id": 1, "mtime": 5}')
    bad = OutboxRecord(6, b'{"rsvp_id": "?", "mtime": 6}')
    dead_letters.add("rsvps", [good, bad], 503, "down for good?")
    answers = deque(
        [
            Reply(503, {}, headers={"Retry-After": "0"}),
            Reply(200, {"stored": 1, "rejected": [{"index": 1, "reason": "bad id"}]}),
        ]
    )
    with StubServer(lambda request: answers.popleft()) as server:
        functions = dict(MINIMAL["functions"], save_stream_data=server.url + "/s")
        path = write_config(tmp_path, functions=functions)

        code = main(["--config", str(path), "dead-letters", "resend"])
        bodies = [request.body for request in server.received]

    assert code == 0
    assert bodies[-1] == good.raw + b"\n" + bad.raw + b"\n"
    (left,) = DeadLetters(tmp_path / "state").entries()
    assert (left.raw, left.reason, left.status) == (bad.raw, "bad id", 200)
    assert "resent 2 of 2 dead letters; 1 refused again" in capsys.readouterr().out


def test_a_run_reads_sends_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    rsvps = b"".join(
        b'{"rsvp_id": %d, "mtime": %d}\n' % (n, 1000 + n) for n in range(1, 6)
    )

    def answer(request: Received) -> Reply:
        if request.path == "/2/rsvps":
            return Reply(chunks=[rsvps]) if request.raw_query == "" else Reply(503, {})
        return Reply(200, {"stored": request.body.count(b"\n")})

    with StubServer(answer) as server:
        path = write_config(
            tmp_path,
            streams={"rsvps": {"url": server.url + "/2/rsvps"}},
            functions={
                "save_stream_data": server.url + "/stream",
                "save_member_data": server.url + "/members",
                "save_group_data": server.url + "/groups",
            },
            chunks={"max_age_seconds": 0.1},
            status={"interval_seconds": 0.2},
        )
        process = subprocess.Popen(
            [sys.executable, "trigger_gcf.py", "--config", str(path)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NO_GCE_CHECK": "true"},
        )
        try:
            wait_until(
                lambda: server.requests_to("/stream"), timeout_s=20, what="a POST"
            )
            wait_until(lambda: (tmp_path / "state" / "status.json").exists())
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=20)
        finally:
            if process.poll() is None:
                process.kill()
            output = process.stdout.read().decode()
            process.stdout.close()

    assert code == 0, output
    posted = b"".join(r.body for r in server.requests_to("/stream"))
    assert posted == rsvps
    checkpoints = json.loads((tmp_path / "state" / "checkpoints.json").read_text())
    assert checkpoints == {"rsvps": {"mtime": 1005}}
    entries = [json.loads(line) for line in output.splitlines() if line]
    messages = [entry["message"] for entry in entries if "message" in entry]
    assert any(message.startswith("status: rsvps") for message in messages)
    assert "trigger stopped: every item read was sent" in messages
