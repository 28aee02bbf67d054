"""Profiles: the time-to-live store, the bounded queue, batching, and pacing by
the rate-limit headers the functions pass back (against a real HTTP server)."""

from __future__ import annotations

import logging
from collections import deque
from pathlib import Path

import pytest

from collector.profiles import (
    GROUP,
    MEMBER,
    ProfileEndpoint,
    ProfilePolicy,
    ProfileScheduler,
    ProfileStore,
    RateLimitPacer,
)
from collector.sender import make_session
from tests.stub_server import Received, Reply, StubServer


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_ids_fetched_within_the_ttl_are_not_queued_again(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path / "p.sqlite3")

    assert store.enqueue(MEMBER, [1, 2, 3], now=100.0, ttl=60.0) == 3
    assert store.enqueue(MEMBER, [2, 3, 4], now=101.0, ttl=60.0) == 1
    store.mark_fetched(MEMBER, [1, 2], now=102.0)

    assert store.next_batch(MEMBER, 10) == [3, 4]
    assert store.enqueue(MEMBER, [1], now=161.0, ttl=60.0) == 0
    assert store.enqueue(MEMBER, [1], now=162.5, ttl=60.0) == 1
    assert store.enqueue(GROUP, [1], now=162.5, ttl=60.0) == 1


def test_the_ttl_is_remembered_across_restarts(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path / "p.sqlite3")
    store.enqueue(GROUP, [7, 8], now=100.0, ttl=60.0)
    store.mark_fetched(GROUP, [7], now=100.0)
    store.close()

    again = ProfileStore(tmp_path / "p.sqlite3")

    assert again.next_batch(GROUP, 10) == [8]
    assert again.enqueue(GROUP, [7], now=110.0, ttl=60.0) == 0


def test_trim_forgets_expired_ids_caps_memory_and_drops_the_oldest_pending(
    tmp_path: Path,
) -> None:
    store = ProfileStore(tmp_path / "p.sqlite3")
    store.enqueue(MEMBER, range(10), now=100.0, ttl=60.0)
    store.mark_fetched(MEMBER, range(5), now=100.0)
    store.enqueue(MEMBER, range(10, 20), now=101.0, ttl=60.0)
    store.mark_fetched(GROUP, [1], now=150.0)

    dropped = store.trim(now=155.0, ttl=60.0, max_remembered=3, max_pending=4)

    assert dropped == {MEMBER: 11}
    assert store.next_batch(MEMBER, 100) == [16, 17, 18, 19]
    assert store.fetched_count() == 3
    assert store.was_fetched(GROUP, 1)
    store.trim(now=211.0, ttl=60.0, max_remembered=3, max_pending=4)
    assert store.fetched_count() == 0


def test_the_pacer_waits_for_the_reset_when_nothing_remains() -> None:
    pacer = RateLimitPacer(margin_seconds=1.0)

    assert pacer.budget(0.0) == 1  # nothing known: a probe of one request
    pacer.update({"X-RateLimit-Remaining": "4", "X-RateLimit-Reset": "8"}, now=10.0)
    assert (pacer.budget(10.0), pacer.wait_seconds(10.0)) == (4, 0.0)
    pacer.spend(4)
    assert pacer.wait_seconds(12.0) == 7.0
    assert pacer.budget(19.0) == 1
    pacer.throttled(30.0, now=20.0)
    assert pacer.wait_seconds(20.0) == 30.0


def api_answer(remaining: int, reset: int = 10, status: int = 200, **body) -> Reply:
    return Reply(
        status,
        body,
        headers={
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": str(reset),
        },
    )


def stores_everything(remaining: int = 29) -> object:
    def answer(request: Received) -> Reply:
        ids = next(iter(request.json().values()))
        return api_answer(remaining, stored=ids, not_found=[])

    return answer


def make_scheduler(
    server: StubServer,
    tmp_path: Path,
    clock: FakeClock,
    policy: ProfilePolicy | None = None,
) -> ProfileScheduler:
    endpoints = {
        MEMBER: ProfileEndpoint(
            MEMBER, server.url + "/members", "members", "member_id", 10
        ),
        GROUP: ProfileEndpoint(
            GROUP, server.url + "/groups", "groups", "group_id", 200
        ),
    }
    return ProfileScheduler(
        ProfileStore(tmp_path / "p.sqlite3"),
        make_session(1),
        endpoints,
        RateLimitPacer(margin_seconds=1.0),
        policy or ProfilePolicy(ttl_seconds=3600.0, retry_jitter_seconds=0.0),
        clock=clock,
        wall_clock=clock,
    )


def run_steps(scheduler: ProfileScheduler, clock: FakeClock, limit: int = 100) -> list:
    """Step until nothing is pending, advancing the fake clock over each wait."""
    waits = []
    for _ in range(limit):
        wait = scheduler.step()
        if wait == float("inf"):
            return waits
        if wait > 0:
            waits.append(round(wait, 3))
            clock.now += wait
    raise AssertionError("still pending")


def test_ids_are_deduplicated_and_batched_ten_members_and_200_groups(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    with StubServer(stores_everything()) as server:
        scheduler = make_scheduler(server, tmp_path, clock)
        scheduler.offer(list(range(1, 26)) + [1, 2, 3], list(range(1000, 1450)))
        scheduler.offer([5], [1000])

        run_steps(scheduler, clock)

    members = [r.json()["member_id"] for r in server.requests_to("/members")]
    groups = [r.json()["group_id"] for r in server.requests_to("/groups")]
    assert [len(batch) for batch in members] == [1, 10, 10, 4]  # first: a probe
    assert sorted(id_ for batch in members for id_ in batch) == list(range(1, 26))
    assert [len(batch) for batch in groups] == [200, 200, 50]
    assert {r.raw_query for r in server.requests_to("/members")} == {
        "collection=members"
    }
    assert scheduler.counters.get("members_stored") == 25
    assert scheduler.counters.get("groups_stored") == 450


def test_member_batches_are_cut_to_what_remains_and_wait_for_the_reset(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    remaining = deque([3, 0, 9])

    def answer(request: Received) -> Reply:
        ids = request.json()["member_id"]
        return api_answer(remaining.popleft(), reset=5, stored=ids)

    with StubServer(answer) as server:
        scheduler = make_scheduler(server, tmp_path, clock)
        scheduler.offer(range(1, 6), [])

        waits = run_steps(scheduler, clock)

    sizes = [len(r.json()["member_id"]) for r in server.requests_to("/members")]
    assert sizes == [1, 3, 1]
    assert waits == [6.0]  # X-RateLimit-Reset 5 s + a margin of 1 s


def test_a_429_requeues_the_remaining_ids_and_waits_retry_after(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    replies = deque(
        [
            api_answer(10, stored=[1]),
            Reply(
                429,
                {
                    "error": "throttled",
                    "stored": [2],
                    "remaining": [3, 4],
                    "retry_after": 12,
                },
                headers={
                    "Retry-After": "12",
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": "12",
                },
            ),
        ]
    )

    def answer(request: Received) -> Reply:
        if replies:
            return replies.popleft()
        return api_answer(20, stored=request.json()["member_id"])

    with StubServer(answer) as server:
        scheduler = make_scheduler(server, tmp_path, clock)
        scheduler.offer([1, 2, 3, 4], [])
        with caplog.at_level(logging.WARNING):
            waits = run_steps(scheduler, clock)

    batches = [r.json()["member_id"] for r in server.requests_to("/members")]
    assert batches == [[1], [2, 3, 4], [3], [4]]  # after the wait: a probe first
    assert waits[0] == 13.0
    assert scheduler.counters.get("profile_throttled") == 1
    assert scheduler.counters.get("members_stored") == 4


def test_5xx_is_retried_with_backoff_and_an_unknown_key_waits_long(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    replies = deque(
        [
            Reply(503, {"error": "firestore"}),
            Reply(503, {"error": "firestore"}),
            Reply(502, {"error": "bad key", "code": "meetup_unauthorized"}),
        ]
    )

    def answer(request: Received) -> Reply:
        if replies:
            return replies.popleft()
        return api_answer(20, stored=request.json()["group_id"])

    policy = ProfilePolicy(
        retry_initial_seconds=2.0,
        retry_maximum_seconds=60.0,
        retry_jitter_seconds=0.0,
        unauthorized_retry_seconds=600.0,
    )
    with StubServer(answer) as server:
        scheduler = make_scheduler(server, tmp_path, clock, policy)
        scheduler.offer([], [42])
        with caplog.at_level(logging.WARNING):
            waits = run_steps(scheduler, clock)

    assert waits == [2.0, 4.0, 600.0]
    assert len(server.requests_to("/groups")) == 4
    assert any(
        r.levelno == logging.ERROR
        and "refuses the functions' API key" in r.getMessage()
        for r in caplog.records
    )


def test_ids_not_found_are_not_asked_for_again(tmp_path: Path) -> None:
    clock = FakeClock()

    def answer(request: Received) -> Reply:
        return api_answer(20, stored=[], not_found=request.json()["member_id"])

    with StubServer(answer) as server:
        scheduler = make_scheduler(server, tmp_path, clock)
        scheduler.offer([9], [])
        run_steps(scheduler, clock)
        scheduler.offer([9], [])
        run_steps(scheduler, clock)

    assert len(server.requests_to("/members")) == 1
    assert scheduler.counters.get("members_not_found") == 1


def test_the_pending_queue_is_bounded_by_dropping_the_oldest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    policy = ProfilePolicy(max_pending=5, trim_interval_seconds=0.0)
    with StubServer(stores_everything()) as server:
        scheduler = make_scheduler(server, tmp_path, clock, policy)
        with caplog.at_level(logging.WARNING):
            scheduler.offer(range(1, 9), [])
            scheduler.flush_staging()

    assert scheduler.counters.get("profiles_dropped") == 3
    assert scheduler.counters.get("members_queued") == 5
    assert any("dropped the 3 oldest" in r.getMessage() for r in caplog.records)
