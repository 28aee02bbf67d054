"""End to end: the trigger against the stand-in and the real functions, served by
functions-framework on the local backend, with faults injected.

Every test ends by comparing, name for name, the objects stored under
LOCAL_DATA_DIR/gcs/<bucket>/<label>/ with the distinct item versions the
stand-in served: nothing lost, duplicates absorbed by create-only storage.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from collector.app import Collector
from collector.config import config_from_dict
from standin.cloud import free_port
from standin.functions import ServedFunction, serve_function
from standin.server import ApiConfig, StandIn, StandInConfig, StreamConfig
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ("save_stream_data", "save_member_data", "save_group_data")
API_KEY = "e2e-test-key"
RUNS = 16
SETTLE_S = 0.6  # a stream that gave nothing for this long has nothing in flight


class LocalFunctions:
    """save_stream_data, save_member_data and save_group_data, one
    functions-framework process each, on the local backend, each on a port of
    its own that stays the same when it is stopped and started again."""

    def __init__(self, data_dir: Path, api_url: str, logs: Path) -> None:
        self.data_dir = data_dir
        self.logs = logs
        self.ports = {target: free_port() for target in TARGETS}
        self.env = {
            "LOCAL_DATA_DIR": str(data_dir),
            "MEETUP_API_URL": api_url,
            "MEETUP_API_KEY": API_KEY,
            "ALLOWED_BUCKETS": ",".join(f"e2e-{n}" for n in range(RUNS)),
            "ALLOWED_COLLECTIONS": ",".join(
                f"{kind}{n}" for n in range(RUNS) for kind in ("members", "groups")
            ),
            "STORAGE_RETRY_SECONDS": "0.5",
        }
        self.served: dict[str, ServedFunction] = {}

    def url(self, target: str) -> str:
        return f"http://127.0.0.1:{self.ports[target]}"

    def start(self, *targets: str) -> None:
        for target in targets or TARGETS:
            with open(self.logs / f"{target}.log", "ab") as log:
                self.served[target] = serve_function(
                    target, self.env, output=log, port=self.ports[target]
                )

    def stop(self, *targets: str) -> None:
        for target in targets or list(self.served):
            served = self.served.pop(target, None)
            if served is not None:
                served.stop()


@pytest.fixture(scope="module")
def api_port() -> int:
    """Every stand-in of this module listens here, so that the functions, started
    once, always find the Meetup API stand-in of the running test."""
    return free_port()


@pytest.fixture(scope="module")
def functions(
    tmp_path_factory: pytest.TempPathFactory, api_port: int
) -> Iterator[LocalFunctions]:
    logs = tmp_path_factory.mktemp("function-logs")
    local = LocalFunctions(
        tmp_path_factory.mktemp("local-data"), f"http://127.0.0.1:{api_port}", logs
    )
    local.start()
    yield local
    local.stop()


_runs = itertools.count()


class Run:
    """One test's bucket, collections, stand-in and collector settings."""

    def __init__(self, functions: LocalFunctions, api_port: int, tmp_path: Path):
        number = next(_runs)
        assert number < RUNS, "raise RUNS"
        self.functions = functions
        self.api_port = api_port
        self.tmp_path = tmp_path
        self.bucket = f"e2e-{number}"
        self.members = f"members{number}"
        self.groups = f"groups{number}"
        self.standin: StandIn | None = None

    def start_standin(
        self, streams: dict[str, StreamConfig], api: ApiConfig | None = None
    ) -> StandIn:
        self.standin = StandIn(
            StandInConfig(
                seed=7,
                port=self.api_port,
                api_key=API_KEY,
                streams=streams,
                api=api or ApiConfig(),
            )
        ).start()
        return self.standin

    def config_document(self, labels: list[str], **changes: Any) -> dict[str, Any]:
        assert self.standin is not None
        document: dict[str, Any] = {
            "functions": {target: self.functions.url(target) for target in TARGETS},
            "bucket": self.bucket,
            "collections": {"members": self.members, "groups": self.groups},
            "state_dir": str(self.tmp_path / "state"),
            "streams": {label: {"url": self.standin.urls()[label]} for label in labels},
            "reader": {
                "resume_margin_ms": 3000,
                "read_timeout_seconds": 1.0,
                "idle_timeout_seconds": 3.0,
                "network_backoff": {"initial_seconds": 0.05, "maximum_seconds": 0.4},
                "http_backoff": {"initial_seconds": 0.1, "maximum_seconds": 0.8},
                "rate_limited_backoff": {"initial_seconds": 0.2, "maximum_seconds": 1},
            },
            "chunks": {"max_items": 200, "max_age_seconds": 0.2},
            "sender": {
                "retry_initial_seconds": 0.05,
                "retry_maximum_seconds": 0.4,
                "retry_jitter_seconds": 0.05,
                "shutdown_timeout_seconds": 10.0,
            },
            "profiles": {"enabled": False},
            "status": {"interval_seconds": 0.2},
        }
        for key, value in changes.items():
            if isinstance(value, dict) and isinstance(document.get(key), dict):
                document[key] = {**document[key], **value}
            else:
                document[key] = value
        return document

    def collector(self, labels: list[str], **changes: Any) -> Collector:
        return Collector(config_from_dict(self.config_document(labels, **changes)))

    def stored(self, label: str) -> set[str]:
        folder = self.functions.data_dir / "gcs" / self.bucket / label
        if not folder.is_dir():
            return set()
        return {path.name for path in folder.iterdir() if path.suffix == ".json"}

    def served(self, label: str) -> set[str]:
        assert self.standin is not None
        return {
            f"{item_id}_{mtime}.json" for item_id, mtime in self.standin.served(label)
        }

    def generated_all(self, label: str) -> bool:
        assert self.standin is not None
        stream = self.standin.stats()["streams"][label]
        return stream["generated"] >= stream["max_items"]

    def wait_until_stored(
        self,
        labels: list[str],
        stream_status: Callable[[str], dict[str, Any]],
        timeout_s: float = 60.0,
    ) -> None:
        """Until every stream generated all its items, its reader is connected
        and got nothing for a while (nothing is left in flight), and every
        version served is stored."""

        finished: set[str] = set()

        def settled(label: str) -> bool:
            # Once a stream that generated everything gave its connected reader
            # nothing for a while, nothing new can come (only replays).
            if label not in finished and self.generated_all(label):
                status = stream_status(label)
                if status["connected"] and status["idle_seconds"] >= SETTLE_S:
                    finished.add(label)
            return label in finished

        def done() -> bool:
            return all(
                settled(label) and self.stored(label) == self.served(label)
                for label in labels
            )

        try:
            wait_until(done, timeout_s=timeout_s, what="everything served is stored")
        except AssertionError as timed_out:
            states = {label: stream_status(label) for label in labels}
            raise AssertionError(
                f"{timed_out}: {self.describe(labels)}; readers: {states}"
            ) from None

    def describe(self, labels: list[str]) -> str:
        assert self.standin is not None
        stats = self.standin.stats()["streams"]
        lines = []
        for label in labels:
            served, stored = self.served(label), self.stored(label)
            lines.append(
                f"{label}: generated {stats[label]['generated']}, served "
                f"{len(served)}, stored {len(stored)}, missing "
                f"{sorted(served - stored)[:5]}, extra {sorted(stored - served)[:5]}"
            )
        return "; ".join(lines)

    def assert_everything_stored(self, labels: list[str]) -> None:
        for label in labels:
            served = self.served(label)
            assert served, f"the stand-in served no {label}"
            assert self.stored(label) == served, label

    def stop(self) -> None:
        if self.standin is not None:
            self.standin.stop()


@pytest.fixture
def run(functions: LocalFunctions, api_port: int, tmp_path: Path) -> Iterator[Run]:
    test_run = Run(functions, api_port, tmp_path)
    yield test_run
    test_run.stop()


def in_process(collector: Collector) -> Callable[[str], dict[str, Any]]:
    return lambda label: collector.status()["streams"][label]


def test_a_function_that_answers_503_for_a_while_loses_nothing(run: Run) -> None:
    labels = ["rsvps", "photos"]
    run.start_standin(
        {
            "rsvps": StreamConfig(rate=400.0, max_items=800),
            "photos": StreamConfig(rate=100.0, max_items=200),
        }
    )
    # A file where the rsvps folder should be: every write fails, and the real
    # save_stream_data answers 503 ("storage unavailable").
    blocker = run.functions.data_dir / "gcs" / run.bucket / "rsvps"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a folder")
    collector = run.collector(labels)
    collector.start()
    try:
        wait_until(lambda: collector.status()["retries"] >= 5, what="503s retried")
        assert run.stored("rsvps") == set()
        blocker.unlink()

        run.wait_until_stored(labels, in_process(collector))
    finally:
        collector.stop()

    run.assert_everything_stored(labels)
    assert collector.status()["dead_letters"] == 0


def test_a_function_that_is_down_for_a_while_loses_nothing(run: Run) -> None:
    labels = ["event_comments"]
    run.start_standin({"event_comments": StreamConfig(rate=300.0, max_items=900)})
    collector = run.collector(labels)
    collector.start()
    try:
        wait_until(lambda: run.stored("event_comments"), what="a first chunk stored")
        run.functions.stop("save_stream_data")
        try:
            wait_until(lambda: collector.status()["retries"] >= 5, what="retries")
            assert collector.status()["outbox_items"] > 0
        finally:
            run.functions.start("save_stream_data")

        run.wait_until_stored(labels, in_process(collector))
    finally:
        collector.stop()

    run.assert_everything_stored(labels)


def test_streams_that_end_stall_break_and_refuse_resume_without_a_gap(
    run: Run,
) -> None:
    # A reconnect replays the last resume_margin_ms (3 s) of items: each fault
    # lets a connection run a little longer than that, so it always moves on.
    labels = ["rsvps", "photos", "open_events", "event_comments"]
    standin = run.start_standin(
        {
            "rsvps": StreamConfig(rate=200.0, max_items=1200, drop_after=700),
            "photos": StreamConfig(
                rate=100.0, max_items=500, stall_after=400, stall_seconds=3.0
            ),
            "open_events": StreamConfig(rate=200.0, max_items=1000, truncate_after=700),
            "event_comments": StreamConfig(rate=200.0, max_items=400, connect_503=4),
        }
    )
    collector = run.collector(labels)
    collector.start()
    try:
        wait_until(lambda: collector.status()["streams"]["rsvps"]["items"] > 200)
        standin.set_faults("rsvps", connect_503=3)

        run.wait_until_stored(labels, in_process(collector), timeout_s=90)
    finally:
        collector.stop()

    run.assert_everything_stored(labels)
    stats = standin.stats()["streams"]
    streams = collector.status()["streams"]
    assert stats["rsvps"]["dropped"] >= 2
    assert stats["rsvps"]["refused_503"] == 3
    assert stats["photos"]["stalls"] >= 1
    assert streams["photos"]["quiet_reconnects"] >= 1
    assert stats["open_events"]["truncated"] >= 2
    assert stats["event_comments"]["refused_503"] == 4
    assert streams["event_comments"]["http_errors"] == 4
    assert standin.stats()["connections"]["refused_over_cap"] == 0


def test_a_malformed_line_is_kept_aside_and_the_stream_goes_on(run: Run) -> None:
    labels = ["rsvps"]
    standin = run.start_standin(
        {"rsvps": StreamConfig(rate=300.0, max_items=600, malformed_every=100)}
    )
    collector = run.collector(labels)
    collector.start()
    try:
        run.wait_until_stored(labels, in_process(collector))
    finally:
        collector.stop()

    run.assert_everything_stored(labels)
    malformed = standin.stats()["streams"]["rsvps"]["malformed_lines"]
    assert malformed >= 5
    assert collector.status()["streams"]["rsvps"]["malformed"] == malformed
    kept = (run.tmp_path / "state" / "malformed.ndjson").read_text().splitlines()
    assert len(kept) == malformed
    assert all(json.loads(line)["label"] == "rsvps" for line in kept)


def test_a_reconnect_of_open_venues_keeps_trickle(run: Run) -> None:
    labels = ["open_venues"]
    # The first connection ends after the venue table (2,500) and 100 new venues.
    standin = run.start_standin(
        {"open_venues": StreamConfig(rate=100.0, max_items=300, drop_after=2600)}
    )
    collector = run.collector(labels)
    collector.start()
    try:
        wait_until(
            lambda: standin.stats()["streams"]["open_venues"]["connections_total"] >= 2,
            what="a reconnect",
        )
        standin.set_faults("open_venues", drop_after=None)
        run.wait_until_stored(labels, in_process(collector))
    finally:
        collector.stop()

    run.assert_everything_stored(labels)
    stats = standin.stats()["streams"]["open_venues"]
    assert stats["dropped"] >= 1
    assert stats["connections_total"] >= 2
    assert stats["trickles"] == stats["connections_total"]


def test_a_throttling_meetup_api_slows_the_collector_and_every_profile_is_stored(
    run: Run,
) -> None:
    labels = ["rsvps", "photos"]
    limit, window = 20, 2.0
    standin = run.start_standin(
        {
            "rsvps": StreamConfig(rate=30.0, max_items=60),
            "photos": StreamConfig(rate=10.0, max_items=20),
        },
        api=ApiConfig(limit=limit, window_seconds=window),
    )
    collector = run.collector(
        labels,
        profiles={
            "enabled": True,
            "retry_initial_seconds": 0.1,
            "retry_maximum_seconds": 1.0,
            "pacing_margin_seconds": 0.2,
        },
    )
    started = time.monotonic()
    collector.start()
    try:
        wait_until(
            lambda: collector.status()["profiles"]["profile_calls"] >= 1,
            what="a first profile call",
        )
        burn_the_window(standin)
        run.wait_until_stored(labels, in_process(collector))
        member_ids, group_ids = profile_ids(run, labels)

        def profiles_done() -> bool:
            profiles = collector.status()["profiles"]
            return profiles["members_queued"] == profiles["groups_queued"] == 0 and (
                stored_profiles(run, run.members) >= member_ids
                and stored_profiles(run, run.groups) >= group_ids
            )

        wait_until(profiles_done, timeout_s=90, what="every profile stored")
        elapsed = time.monotonic() - started
    finally:
        collector.stop()

    run.assert_everything_stored(labels)
    api = standin.stats()["api"]
    (key,) = api["keys"].values()
    assert api["limit_exceeded"] == 0
    assert api["max_requests_in_window"] <= limit
    assert key["blocks"] == 0
    profiles = collector.status()["profiles"]
    assert profiles["profile_throttled"] >= 1  # the window someone else spent
    assert key["throttled"] <= 3  # ours: at most the call that found out, twice
    # Paced: the Meetup requests of the members alone need this many windows.
    assert elapsed >= (len(member_ids) // limit - 1) * window
    assert stored_profiles(run, run.members) == member_ids
    assert stored_profiles(run, run.groups) == group_ids


def burn_the_window(standin: StandIn) -> None:
    """Someone else spends what is left of the key's window, up to the first
    throttled answer: the collector's next call meets a throttled API."""
    for _ in range(100):
        answer = requests.get(
            f"{standin.url}/2/groups",
            params={"group_id": "1", "key": API_KEY},
            timeout=5,
        )
        if answer.status_code == 429:
            return
    raise AssertionError("the Meetup API stand-in never throttled")


def profile_ids(run: Run, labels: list[str]) -> tuple[set[int], set[int]]:
    """The member and group ids in every stored item (as contract.md says)."""
    from collector.items import parse_item

    members: set[int] = set()
    groups: set[int] = set()
    for label in labels:
        folder = run.functions.data_dir / "gcs" / run.bucket / label
        for name in run.stored(label):
            item = parse_item(label, (folder / name).read_bytes())
            members.update(item.member_ids)
            groups.update(item.group_ids)
    return members, groups


def stored_profiles(run: Run, collection: str) -> set[int]:
    folder = run.functions.data_dir / "firestore" / collection
    if not folder.is_dir():
        return set()
    return {
        int(path.stem[1:])
        for path in folder.iterdir()
        if path.suffix == ".json" and path.stem.startswith("m")
    }


def test_a_trigger_killed_mid_run_resends_on_restart_and_loses_nothing(
    run: Run,
) -> None:
    labels = ["rsvps", "photos"]
    run.start_standin(
        {
            "rsvps": StreamConfig(rate=300.0, max_items=1500),
            "photos": StreamConfig(rate=100.0, max_items=500),
        }
    )
    document = run.config_document(
        labels,
        logging={"level": "WARNING"},
        chunks={"max_items": 100, "max_age_seconds": 0.5},
    )
    config_path = run.tmp_path / "config.json"
    config_path.write_text(json.dumps(document))
    status_path = run.tmp_path / "state" / "status.json"

    def status() -> dict[str, Any]:
        try:
            return json.loads(status_path.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    first = start_trigger(config_path, run.tmp_path / "first.log")
    try:
        wait_until(
            lambda: (
                status().get("items_sent", 0) > 300
                and status().get("outbox_items", 0) > 0
            ),
            timeout_s=30,
            what="a run in full flow",
        )
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    killed_with = list((run.tmp_path / "state" / "outbox").rglob("*.*"))
    assert killed_with, "the kill left nothing in the outbox to resend"
    status_path.unlink()

    second = start_trigger(config_path, run.tmp_path / "second.log")
    try:
        wait_until(lambda: status(), timeout_s=30, what="the second run's status")
        run.wait_until_stored(
            labels,
            lambda label: status()["streams"][label],
            timeout_s=60,
        )
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()

    run.assert_everything_stored(labels)
    final = json.loads(status_path.read_text())
    assert final["outbox_items"] == 0
    assert final["items_already_stored"] > 0  # the resent duplicates, absorbed


def start_trigger(config_path: Path, log_path: Path) -> subprocess.Popen:
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "trigger_gcf.py", "--config", str(config_path)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NO_GCE_CHECK": "true"},
        )
