"""The Meetup client's retry schedule, with an injected sleep so nothing waits."""

from __future__ import annotations

import pytest
import requests

from tests.scripted_server import Answer

import meetup_api


def client_for(server, sleeps: list[float]) -> meetup_api.MeetupClient:
    return meetup_api.MeetupClient(
        server.url, "key", requests.Session(), sleep=sleeps.append
    )


def test_backoff_is_truncated_exponential_with_bounded_jitter(meetup_server):
    meetup_server.default = Answer(503, {})
    sleeps: list[float] = []

    with pytest.raises(meetup_api.MeetupUnavailable):
        client_for(meetup_server, sleeps).member(1)

    assert len(sleeps) == meetup_api.ATTEMPTS - 1
    for attempt, slept in enumerate(sleeps):
        base = min(meetup_api.BACKOFF_INITIAL_S * 2**attempt, 8.0)
        assert base <= slept <= min(base + meetup_api.JITTER_S, 8.0)


def test_a_success_after_failures_returns_the_profile(meetup_server):
    meetup_server.script(
        "/2/members",
        Answer(500, {}),
        Answer(200, {"results": [{"id": 3, "name": "x"}], "meta": {}}),
    )
    sleeps: list[float] = []

    profile = client_for(meetup_server, sleeps).member(3)

    assert profile == {"id": 3, "name": "x"}
    assert len(sleeps) == 1


def test_throttling_is_not_retried_and_says_how_long_to_wait(meetup_server):
    spent = {"X-RateLimit-Reset": "6", "X-RateLimit-Remaining": "0"}
    meetup_server.script("/2/groups", Answer(429, {}, spent))
    sleeps: list[float] = []

    with pytest.raises(meetup_api.MeetupThrottled) as raised:
        client_for(meetup_server, sleeps).groups([1])

    assert raised.value.retry_after == 6.0
    assert sleeps == []


def test_another_4xx_is_not_retried(meetup_server):
    refusal = {"problem": "bad", "code": "bad_param"}
    meetup_server.script("/2/members", Answer(400, refusal))
    sleeps: list[float] = []

    with pytest.raises(meetup_api.MeetupRejected):
        client_for(meetup_server, sleeps).member(1)

    assert sleeps == []
    assert len(meetup_server.received) == 1


def test_more_groups_than_a_page_holds_take_several_calls(meetup_server):
    meetup_server.default = Answer(200, {"results": [], "meta": {}})
    sleeps: list[float] = []
    ids = list(range(1, meetup_api.GROUPS_PER_CALL + 6))

    found = client_for(meetup_server, sleeps).groups(ids)

    assert found == {}
    calls = meetup_server.requests_to("/2/groups")
    assert [len(c.query["group_id"][0].split(",")) for c in calls] == [
        meetup_api.GROUPS_PER_CALL,
        5,
    ]
