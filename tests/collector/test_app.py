"""The collector as a whole against stub servers: the status counters and
status.json, where streams resume on start, one trigger per state folder, and a
bounded shutdown that keeps what it could not send."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from collector.app import Collector
from collector.config import config_from_dict
from collector.outbox import ChunkLimits, LabelOutbox, OutboxRecord
from collector.statefiles import CheckpointStore, StateLockBusy
from tests.collector.test_config import MINIMAL
from tests.stub_server import Received, Reply, StubServer
from tests.waiting import wait_until

RSVPS = b"".join(
    b'{"rsvp_id": %d, "mtime": %d, "member": {"member_id": %d}, '
    b'"group": {"group_id": 9}}\n' % (n, 1000 + n, 100 + n)
    for n in range(1, 21)
)


def config(server: StubServer, tmp_path: Path, **changes: Any):
    document = {
        **MINIMAL,
        "functions": {
            "save_stream_data": server.url + "/stream",
            "save_member_data": server.url + "/members",
            "save_group_data": server.url + "/groups",
        },
        "state_dir": str(tmp_path / "state"),
        "streams": {"rsvps": {"url": server.url + "/2/rsvps"}},
        "chunks": {"max_items": 5, "max_age_seconds": 0.1},
        "status": {"interval_seconds": 0.1},
        "reader": {"network_backoff": {"initial_seconds": 0.05, "maximum_seconds": 1}},
        "sender": {"retry_initial_seconds": 0.05, "retry_maximum_seconds": 0.2},
        **changes,
    }
    return config_from_dict(document)


class Functions:
    """A stream that serves RSVPS once and then nothing, and functions that
    store everything (or answer 503 while down is set)."""

    def __init__(self) -> None:
        self.down = threading.Event()
        self.hold = threading.Event()

    def __call__(self, request: Received) -> Reply:
        if request.path == "/2/rsvps":
            first = "since_mtime" not in request.raw_query
            return Reply(chunks=[RSVPS] if first else [], hold=self.hold)
        if self.down.is_set():
            return Reply(503, {"error": "down"})
        if request.path == "/stream":
            return Reply(200, {"stored": request.body.count(b"\n"), "rejected": []})
        ids = next(iter(request.json().values()))
        headers = {"X-RateLimit-Remaining": "25", "X-RateLimit-Reset": "10"}
        return Reply(200, {"stored": ids, "not_found": []}, headers=headers)


def test_status_has_every_counter_and_is_written_to_status_json(tmp_path: Path) -> None:
    functions = Functions()
    with StubServer(functions) as server:
        collector = Collector(config(server, tmp_path))
        collector.start()
        try:
            wait_until(lambda: collector.status()["items_sent"] == 20)
            wait_until(lambda: collector.status()["profiles"]["members_stored"] == 20)
            wait_until(
                lambda: (
                    json.loads((tmp_path / "state" / "status.json").read_text()).get(
                        "items_sent"
                    )
                    == 20
                )
            )
        finally:
            functions.hold.set()
            collector.stop()

    status = collector.status()
    rsvps = status["streams"]["rsvps"]
    assert rsvps["items"] == 20
    assert {"items_per_second", "connected", "idle_seconds", "outbox_items"} <= set(
        rsvps
    )
    assert rsvps["checkpoint_mtime"] == 1020
    assert status["outbox_items"] == 0
    assert status["chunks_sent"] == 4
    for counter in ("chunks_in_flight", "retries", "dead_letters", "malformed"):
        assert status[counter] == 0
    assert status["profiles"]["groups_stored"] == 1
    assert status["profiles"]["members_queued"] == 0
    assert json.loads((tmp_path / "state" / "status.json").read_text())[
        "streams"
    ].keys() == {"rsvps"}


def test_a_stop_while_the_function_is_down_is_bounded_and_keeps_the_items(
    tmp_path: Path,
) -> None:
    functions = Functions()
    functions.down.set()
    with StubServer(functions) as server:
        settings = config(
            server,
            tmp_path,
            sender={"shutdown_timeout_seconds": 0.3, "retry_initial_seconds": 0.05},
            profiles={"enabled": False},
        )
        collector = Collector(settings)
        collector.start()
        wait_until(lambda: collector.status()["retries"] >= 2)

        assert collector.stop() is False
        functions.hold.set()
        assert collector.status()["outbox_items"] == 20

        functions.down.clear()
        functions.hold.clear()
        again = Collector(settings)
        assert again.readers[0].largest_mtime == 1020  # resumes from the outbox
        again.start()
        try:
            wait_until(lambda: again.status()["items_sent"] >= 20)
        finally:
            functions.hold.set()
            again.stop()

    posted = b"".join(r.body for r in server.requests_to("/stream") if r.body)
    assert set(posted.splitlines()) == set(RSVPS.splitlines())
    assert again.status()["outbox_items"] == 0


def test_a_stream_resumes_from_its_checkpoint_before_its_outbox(tmp_path: Path) -> None:
    state = tmp_path / "state"
    outbox = LabelOutbox(
        state / "outbox" / "rsvps", "rsvps", ChunkLimits(10, 10**6, 60), "never"
    )
    outbox.append([OutboxRecord(7000, b'{"rsvp_id": 1}')])
    CheckpointStore(state / "checkpoints.json").acknowledge("rsvps", 5000)

    with StubServer(Functions()) as server:
        collector = Collector(config(server, tmp_path))

    try:
        assert collector.readers[0].largest_mtime == 5000
        assert collector.outbox.depth_items() == {"rsvps": 1}
    finally:
        collector.stop()


def test_one_trigger_per_state_folder(tmp_path: Path) -> None:
    with StubServer(Functions()) as server:
        first = Collector(config(server, tmp_path))
        try:
            with pytest.raises(StateLockBusy, match="another trigger"):
                Collector(config(server, tmp_path))
        finally:
            first.stop()

        Collector(config(server, tmp_path)).stop()  # free again


def test_the_first_checkpoint_of_a_stream_is_written_at_once(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.json"
    store = CheckpointStore(path, min_interval=3600)

    store.acknowledge("rsvps", 10)
    store.acknowledge("rsvps", 20)

    assert json.loads(path.read_text()) == {"rsvps": {"mtime": 10}}
    store.flush(force=True)
    assert CheckpointStore(path).mtime("rsvps") == 20


def test_checkpoints_acknowledged_from_many_threads_are_all_written(
    tmp_path: Path,
) -> None:
    path = tmp_path / "checkpoints.json"
    store = CheckpointStore(path, min_interval=0)
    labels = [f"label{n}" for n in range(8)]
    failures: list[BaseException] = []

    def acknowledge(label: str) -> None:
        try:
            for mtime in range(1, 51):
                store.acknowledge(label, mtime)
                store.flush(force=True)
        except BaseException as error:  # reported below, not lost in the thread
            failures.append(error)

    threads = [threading.Thread(target=acknowledge, args=(label,)) for label in labels]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert failures == []
    assert json.loads(path.read_text()) == {label: {"mtime": 50} for label in labels}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoints.json"]
