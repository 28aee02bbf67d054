"""The sender against a real HTTP server on 127.0.0.1 that answers scripted
statuses: what it posts, how long it waits (asserted exactly through an
injected sleep), what it splits and what it sets aside."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections import deque
from pathlib import Path

import pytest

from collector.outbox import ChunkLimits, Outbox, OutboxRecord
from collector.sender import (
    ChunkAbandoned,
    ChunkSender,
    RetryPolicy,
    SenderPool,
    make_session,
)
from collector.setaside import DeadLetters
from collector.statefiles import CheckpointStore
from tests.stub_server import Received, Reply, StubServer
from tests.waiting import wait_until

POLICY = RetryPolicy(
    initial_seconds=1.0,
    maximum_seconds=8.0,
    jitter_seconds=0.5,
    retry_after_maximum_seconds=60.0,
    alert_after_attempts=4,
)


def items(count: int, start: int = 0) -> list[OutboxRecord]:
    return [
        OutboxRecord(1_000 + n, b'{"rsvp_id":%d,"mtime":%d}' % (n, 1_000 + n))
        for n in range(start, start + count)
    ]


def scripted(*replies: Reply) -> StubServer:
    queue = deque(replies)
    return StubServer(lambda request: queue.popleft() if queue else Reply(200, {}))


def stored_answer(request: Received) -> Reply:
    count = request.body.count(b"\n")
    return Reply(200, {"label": "rsvps", "stored": count, "already_stored": 0})


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def make_sender(server: StubServer, tmp_path: Path, sleeps: Sleeps) -> ChunkSender:
    return ChunkSender(
        make_session(4),
        server.url + "/save_stream_data",
        "meetup-test",
        DeadLetters(tmp_path),
        POLICY,
        timeout=(2.0, 5.0),
        sleep=sleeps,
        uniform=lambda: 0.5,
    )


def test_a_chunk_is_posted_as_ndjson_of_the_raw_items(tmp_path: Path) -> None:
    with StubServer(stored_answer) as server:
        sender = make_sender(server, tmp_path, Sleeps())

        sender.send("rsvps", items(3))

    (request,) = server.received
    assert request.method == "POST"
    assert request.path == "/save_stream_data"
    assert request.query == {"label": ["rsvps"], "bucket": ["meetup-test"]}
    assert request.headers["Content-Type"] == "application/x-ndjson"
    assert request.body == b"".join(record.raw + b"\n" for record in items(3))
    assert sender.counters.get("items_stored") == 3


def test_408_429_and_5xx_are_retried_with_truncated_exponential_backoff(
    tmp_path: Path,
) -> None:
    statuses = [503, 500, 408, 429, 502, 504, 503]
    sleeps = Sleeps()
    with scripted(*(Reply(status, {"error": "x"}) for status in statuses)) as server:
        sender = make_sender(server, tmp_path, sleeps)

        sender.send("rsvps", items(2))

    assert sleeps == [1.25, 2.25, 4.25, 8.0, 8.0, 8.0, 8.0]
    assert len(server.received) == len(statuses) + 1
    assert sender.counters.get("retries") == len(statuses)
    assert sender.counters.get("chunks_sent") == 1


def test_retry_after_is_honoured_up_to_its_cap(tmp_path: Path) -> None:
    sleeps = Sleeps()
    with scripted(
        Reply(429, {}, headers={"Retry-After": "7"}),
        Reply(503, {}, headers={"Retry-After": "3600"}),
        Reply(503, {}),
    ) as server:
        make_sender(server, tmp_path, sleeps).send("rsvps", items(1))

    assert sleeps == [7.0, 60.0, 4.25]


def test_a_dropped_connection_is_retried(tmp_path: Path) -> None:
    sleeps = Sleeps()
    with scripted(Reply(drop=True), Reply(drop=True)) as server:
        sender = make_sender(server, tmp_path, sleeps)

        sender.send("rsvps", items(1))

    assert sleeps == [1.25, 2.25]
    assert sender.counters.get("chunks_sent") == 1


def test_a_refused_chunk_becomes_dead_letters_with_an_error_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with scripted(Reply(400, {"error": "bucket not allowed"})) as server:
        sender = make_sender(server, tmp_path, Sleeps())

        with caplog.at_level(logging.ERROR):
            sender.send("rsvps", items(2))

    letters = list(DeadLetters(tmp_path).entries())
    assert [letter.raw for letter in letters] == [record.raw for record in items(2)]
    assert {(letter.status, letter.reason) for letter in letters} == {
        (400, "bucket not allowed")
    }
    assert any(
        record.levelno == logging.ERROR and "dead letters" in record.getMessage()
        for record in caplog.records
    )
    assert len(server.received) == 1


@pytest.mark.parametrize("status", [403, 404, 405, 415])
def test_every_other_4xx_is_refused_for_good(tmp_path: Path, status: int) -> None:
    with scripted(Reply(status, {"error": "no"})) as server:
        sender = make_sender(server, tmp_path, Sleeps())
        sender.send("photos", items(1))

    assert len(server.received) == 1
    assert sender.counters.get("dead_letters") == 1


def test_items_rejected_in_a_200_become_dead_letters_and_the_rest_is_done(
    tmp_path: Path,
) -> None:
    answer = {
        "label": "rsvps",
        "stored": 2,
        "already_stored": 0,
        "rejected": [{"index": 1, "reason": "no rsvp_id"}],
    }
    with scripted(Reply(200, answer)) as server:
        sender = make_sender(server, tmp_path, Sleeps())
        sender.send("rsvps", items(3))

    (letter,) = DeadLetters(tmp_path).entries()
    assert (letter.raw, letter.reason, letter.mtime) == (
        items(3)[1].raw,
        "no rsvp_id",
        1001,
    )
    assert sender.counters.get("items_sent") == 2


def test_413_splits_the_chunk_until_it_fits(tmp_path: Path) -> None:
    def at_most_two(request: Received) -> Reply:
        if request.body.count(b"\n") > 2:
            return Reply(413, {"error": "too large"})
        return stored_answer(request)

    with StubServer(at_most_two) as server:
        sender = make_sender(server, tmp_path, Sleeps())
        sender.send("rsvps", items(7))

    delivered = [r.body for r in server.received if r.body.count(b"\n") <= 2]
    assert b"".join(delivered) == b"".join(record.raw + b"\n" for record in items(7))
    assert sender.counters.get("dead_letters") == 0


def test_a_single_item_answered_413_is_a_dead_letter(tmp_path: Path) -> None:
    with scripted(Reply(413, {"error": "too large"})) as server:
        sender = make_sender(server, tmp_path, Sleeps())
        sender.send("rsvps", items(1))

    assert [letter.status for letter in DeadLetters(tmp_path).entries()] == [413]


def test_a_stopped_sender_abandons_the_chunk(tmp_path: Path) -> None:
    with StubServer(lambda request: Reply(503, {})) as server:
        sender = make_sender(server, tmp_path, Sleeps())
        sender._sleep = lambda seconds: sender.abandon.set()

        with pytest.raises(ChunkAbandoned):
            sender.send("rsvps", items(1))

    assert sender.counters.get("dead_letters") == 0


def test_an_error_is_logged_once_after_alert_after_attempts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with scripted(*[Reply(503, {})] * 6) as server, caplog.at_level(logging.WARNING):
        make_sender(server, tmp_path, Sleeps()).send("rsvps", items(1))

    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "after 4 attempts" in errors[0].getMessage()


def test_chunks_go_over_kept_alive_connections(tmp_path: Path) -> None:
    with StubServer(stored_answer) as server:
        sender = make_sender(server, tmp_path, Sleeps())
        for start in range(0, 20, 2):
            sender.send("rsvps", items(2, start))

    assert len(server.received) == 10
    assert len(server.clients) == 1


def test_the_pool_keeps_several_chunks_in_flight_and_acknowledges_them(
    tmp_path: Path,
) -> None:
    everyone_in = threading.Barrier(3, timeout=10)

    def wait_for_company(request: Received) -> Reply:
        with contextlib.suppress(threading.BrokenBarrierError):
            everyone_in.wait()
        return stored_answer(request)

    outbox = Outbox(
        tmp_path / "outbox", ["rsvps"], ChunkLimits(2, 10_000, 60.0), fsync="never"
    )
    checkpoints = CheckpointStore(tmp_path / "checkpoints.json")
    outbox.append("rsvps", items(6))
    with StubServer(wait_for_company) as server:
        pool = SenderPool(
            outbox, make_sender(server, tmp_path, Sleeps()), checkpoints, 3
        )
        pool.start()

        assert pool.drain(timeout=10)

    assert server.most_in_progress == 3
    assert list((tmp_path / "outbox" / "rsvps").iterdir()) == []
    assert outbox.depth_items() == {"rsvps": 0}
    checkpoints.flush(force=True)
    saved = json.loads((tmp_path / "checkpoints.json").read_text())
    assert saved == {"rsvps": {"mtime": 1005}}


def test_the_pool_gives_chunks_back_when_it_must_stop(tmp_path: Path) -> None:
    outbox = Outbox(
        tmp_path / "outbox", ["rsvps"], ChunkLimits(2, 10_000, 60.0), fsync="never"
    )
    outbox.append("rsvps", items(4))
    with StubServer(lambda request: Reply(503, {})) as server:
        sender = ChunkSender(
            make_session(2),
            server.url,
            "meetup-test",
            DeadLetters(tmp_path),
            POLICY,
            timeout=(2.0, 5.0),
        )
        pool = SenderPool(outbox, sender, CheckpointStore(tmp_path / "c.json"), 2)
        pool.start()
        wait_until(lambda: len(server.received) >= 2, what="two attempts")

        assert not pool.drain(timeout=0.1)

    assert outbox.depth_items() == {"rsvps": 4}
    assert len(list((tmp_path / "outbox" / "rsvps").glob("*.ready"))) == 2
    assert outbox.has_ready()
