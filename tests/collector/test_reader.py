"""Stream readers against a real chunked HTTP server on 127.0.0.1: items into
the outbox, malformed lines set aside, resume without a gap (trickle kept),
separate backoff schedules, and quiet told from dead."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from collector.config import ReaderSettings, config_from_dict
from collector.items import StreamItem
from collector.outbox import ChunkLimits, LabelOutbox
from collector.reader import StreamReader, Watchdog, resume_url
from collector.setaside import MalformedLines
from tests.collector.test_config import MINIMAL
from tests.stub_server import Received, Reply, StubServer
from tests.waiting import wait_until


def settings(**reader: object) -> ReaderSettings:
    document = dict(MINIMAL, reader={"resume_margin_ms": 100, **reader})
    return config_from_dict(document).reader


def rsvp(rsvp_id: int, mtime: int, member: int = 1, group: int = 2) -> bytes:
    return (
        json.dumps(
            {
                "rsvp_id": rsvp_id,
                "mtime": mtime,
                "member": {"member_id": member},
                "group": {"group_id": group},
            }
        ).encode()
        + b"\n"
    )


class Harness:
    """A reader on one stub stream; its sleep records waits and stops the
    reader after `stop_after` of them."""

    def __init__(
        self,
        tmp_path: Path,
        server: StubServer,
        path: str = "/2/rsvps",
        label: str = "rsvps",
        stop_after: int = 1,
        reader_settings: ReaderSettings | None = None,
        start_mtime: int | None = None,
    ) -> None:
        self.waits: list[float] = []
        self.offered: list[StreamItem] = []
        self.outbox = LabelOutbox(
            tmp_path / "outbox", label, ChunkLimits(1000, 10**6, 60.0), fsync="never"
        )
        self.malformed = MalformedLines(tmp_path)
        self.stop_after = stop_after
        self.reader = StreamReader(
            label,
            server.url + path,
            reader_settings or settings(),
            self.outbox,
            self.malformed,
            on_items=self.offered.extend,
            start_mtime=start_mtime,
            sleep=self._sleep,
        )

    def _sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        if len(self.waits) >= self.stop_after:
            self.reader.request_stop()

    def items_in_outbox(self) -> list[bytes]:
        self.outbox.seal()
        raws = []
        while (segment := self.outbox.take()) is not None:
            raws += [record.raw for record in self.outbox.read(segment)]
        return raws


def script(*replies: Reply) -> Callable[[Received], Reply]:
    queue = deque(replies)
    return lambda request: queue.popleft() if queue else Reply(503, {})


def test_items_go_to_the_outbox_and_their_ids_to_the_profiles(tmp_path: Path) -> None:
    lines = [rsvp(1, 100, member=7, group=8), rsvp(2, 200, member=9, group=8)]
    # Each line split over two network chunks, to cross chunk boundaries.
    chunks = [piece for line in lines for piece in (line[:5], line[5:])]
    with StubServer(script(Reply(chunks=chunks))) as server:
        harness = Harness(tmp_path, server)
        harness.reader.run()

    assert harness.items_in_outbox() == [line.rstrip(b"\n") for line in lines]
    assert [item.member_ids for item in harness.offered] == [(7,), (9,)]
    assert harness.reader.largest_mtime == 200
    assert harness.reader.counters.get("items") == 2


def test_a_malformed_line_is_counted_kept_aside_and_the_stream_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    chunks = [rsvp(1, 100), b'{"rsvp_id": 2, "mtime": \n', rsvp(3, 300)]
    with StubServer(script(Reply(chunks=chunks))) as server:
        harness = Harness(tmp_path, server)
        with caplog.at_level(logging.WARNING):
            harness.reader.run()

    assert len(harness.items_in_outbox()) == 2
    assert harness.reader.counters.get("malformed") == 1
    (kept,) = [
        json.loads(line) for line in harness.malformed.path.read_text().splitlines()
    ]
    assert kept["label"] == "rsvps"
    assert kept["line"] == '{"rsvp_id": 2, "mtime": '
    assert any("malformed line on rsvps" in r.getMessage() for r in caplog.records)


def test_a_reconnect_resumes_from_the_largest_mtime_less_the_margin_keeping_trickle(
    tmp_path: Path,
) -> None:
    venue = b'{"id": %d, "mtime": %d}\n'
    replies = script(
        Reply(chunks=[venue % (1, 5000), venue % (2, 9000), venue % (3, 7000)]),
        Reply(chunks=[venue % (4, 9500)]),
    )
    with StubServer(replies) as server:
        harness = Harness(
            tmp_path,
            server,
            path="/2/open_venues?trickle&since_count=5",
            label="open_venues",
            stop_after=2,
        )
        harness.reader.run()

    queries = [request.raw_query for request in server.received]
    assert queries == ["trickle&since_count=5", "trickle&since_mtime=8900"]


def test_a_stream_that_keeps_ending_in_its_replay_shortens_its_margin(
    tmp_path: Path,
) -> None:
    replies = script(
        Reply(chunks=[rsvp(1, 9000)]),
        Reply(chunks=[rsvp(1, 9000)]),  # only a replay: no progress
        Reply(chunks=[rsvp(1, 9000)]),
        Reply(chunks=[rsvp(2, 9500)]),  # something new: the margin comes back
        Reply(chunks=[]),
    )
    with StubServer(replies) as server:
        Harness(tmp_path, server, stop_after=5).reader.run()

    queries = [request.raw_query for request in server.received]
    assert queries == [
        "",
        "since_mtime=8900",
        "since_mtime=8950",
        "since_mtime=8975",
        "since_mtime=9400",
    ]


def test_the_first_connect_resumes_from_the_checkpoint(tmp_path: Path) -> None:
    with StubServer(script(Reply(chunks=[rsvp(1, 100)]))) as server:
        Harness(tmp_path, server, start_mtime=50_000).reader.run()

    assert server.received[0].raw_query == "since_mtime=49900"


def test_network_http_and_rate_limit_errors_back_off_separately_and_reset(
    tmp_path: Path,
) -> None:
    replies = script(
        Reply(503, {}),
        Reply(503, {}),
        Reply(420, {}),
        Reply(drop=True),
        Reply(drop=True),
        Reply(chunks=[rsvp(1, 100)]),  # data flows: every schedule starts again
        Reply(503, {}),
        Reply(429, {}, headers={"Retry-After": "90"}),
        Reply(503, {}, headers={"Retry-After": "30"}),
    )
    reader_settings = settings(
        network_backoff={"initial_seconds": 0.5, "maximum_seconds": 16.0},
        http_backoff={"initial_seconds": 5.0, "maximum_seconds": 320.0},
        rate_limited_backoff={"initial_seconds": 60.0, "maximum_seconds": 600.0},
    )
    with StubServer(replies) as server:
        harness = Harness(
            tmp_path, server, stop_after=9, reader_settings=reader_settings
        )
        harness.reader.run()

    assert harness.waits == [5.0, 10.0, 60.0, 0.5, 1.0, 0.5, 5.0, 90.0, 30.0]
    assert harness.reader.counters.get("http_errors") == 6
    assert harness.reader.counters.get("network_errors") == 3


def test_a_silent_connection_is_reopened_at_once_and_found_quiet(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hold = threading.Event()
    replies = script(
        Reply(chunks=[rsvp(1, 100)], hold=hold),
        Reply(chunks=[rsvp(2, 200)]),
    )
    with StubServer(replies) as server:
        harness = Harness(
            tmp_path, server, reader_settings=settings(read_timeout_seconds=0.3)
        )
        with caplog.at_level(logging.INFO):
            harness.reader.run()
        hold.set()

    assert harness.waits == [0.5]  # only after the clean end of the second
    assert harness.reader.counters.get("quiet_reconnects") == 1
    assert len(harness.items_in_outbox()) == 2
    assert any("was quiet, not dead" in r.getMessage() for r in caplog.records)


def test_a_silent_connection_that_cannot_be_reopened_was_dead(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hold = threading.Event()
    replies = script(Reply(chunks=[rsvp(1, 100)], hold=hold), Reply(drop=True))
    with StubServer(replies) as server:
        harness = Harness(
            tmp_path, server, reader_settings=settings(read_timeout_seconds=0.3)
        )
        with caplog.at_level(logging.INFO):
            harness.reader.run()
        hold.set()

    assert harness.waits == [0.5]
    assert harness.reader.counters.get("quiet_reconnects") == 0
    assert any(
        r.levelno == logging.WARNING and "is dead" in r.getMessage()
        for r in caplog.records
    )


def test_the_watchdog_ends_a_connection_that_gives_no_complete_item(
    tmp_path: Path,
) -> None:
    hold = threading.Event()
    # Bytes arrive, but never a whole line: the read timeout cannot see this.
    replies = script(
        Reply(chunks=[rsvp(1, 100), b'{"rsvp_id": 2,'], hold=hold),
        Reply(chunks=[rsvp(2, 200)]),
    )
    with StubServer(replies) as server:
        harness = Harness(
            tmp_path,
            server,
            reader_settings=settings(
                read_timeout_seconds=30.0, idle_timeout_seconds=0.2
            ),
        )
        watchdog = Watchdog([harness.reader], idle_timeout=0.2)
        harness.reader.start()

        def watched() -> bool:
            watchdog.check(time.monotonic())
            return harness.reader.counters.get("quiet_reconnects") == 1

        wait_until(watched, timeout_s=5, what="the watchdog ends the connection")
        harness.reader.stop(timeout=5)
        hold.set()

    assert len(harness.items_in_outbox()) == 2


def test_stop_ends_a_blocked_read_at_once(tmp_path: Path) -> None:
    hold = threading.Event()
    with StubServer(script(Reply(chunks=[rsvp(1, 100)], hold=hold))) as server:
        harness = Harness(
            tmp_path, server, reader_settings=settings(read_timeout_seconds=60)
        )
        harness.reader.start()
        wait_until(lambda: harness.reader.counters.get("items") == 1)
        started = time.monotonic()

        harness.reader.stop(timeout=5)

        assert time.monotonic() - started < 2
        assert not harness.reader._thread.is_alive()
        hold.set()


def test_stop_ends_a_stream_that_keeps_flowing_at_once(tmp_path: Path) -> None:
    # The stream answers "Connection: close", as meetup.com's did: http.client
    # then lets go of the connection's socket, and only the response holds it.
    serving = threading.Event()
    serving.set()

    def endless() -> Iterator[bytes]:
        # 40 items a second, as the stand-in serves by default in a local run.
        pace = threading.Event()
        rsvp_id = 0
        while serving.is_set():
            rsvp_id += 1
            yield rsvp(rsvp_id, rsvp_id)
            pace.wait(0.025)

    reply = Reply(chunks=endless(), headers={"Connection": "close"})
    with StubServer(script(reply)) as server:
        harness = Harness(
            tmp_path, server, reader_settings=settings(read_timeout_seconds=60)
        )
        harness.reader.start()
        wait_until(lambda: harness.reader.counters.get("items") >= 10)
        started = time.monotonic()

        harness.reader.stop(timeout=5)
        read_by_then = harness.reader.counters.get("items")

        assert time.monotonic() - started < 2
        assert not harness.reader._thread.is_alive()
        serving.clear()

    assert harness.reader.counters.get("items") == read_by_then
    assert len(harness.items_in_outbox()) == read_by_then


@pytest.mark.parametrize(
    ("url", "since", "expected"),
    [
        ("http://h/2/rsvps", None, "http://h/2/rsvps"),
        ("http://h/2/rsvps", 5, "http://h/2/rsvps?since_mtime=5"),
        (
            "http://h/2/open_venues?trickle",
            5,
            "http://h/2/open_venues?trickle&since_mtime=5",
        ),
        (
            "http://h/2/x?trickle=&a=1&since_mtime=3",
            9,
            "http://h/2/x?trickle=&a=1&since_mtime=9",
        ),
        (
            "http://h/2/x?since_count=10&event_id=7",
            9,
            "http://h/2/x?event_id=7&since_mtime=9",
        ),
    ],
)
def test_resume_url_keeps_every_other_parameter_as_written(
    url: str, since: int | None, expected: str
) -> None:
    assert resume_url(url, since) == expected
