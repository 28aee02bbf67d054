"""save_member_data and save_group_data against a scripted Meetup API, on the local
backend and on the Firestore emulator."""

from __future__ import annotations

import json

import pytest

from standin import cloud
from tests.functions.conftest import GROUPS, MEMBERS
from tests.scripted_server import Answer

import meetup_api

API_KEY = "k3y-that-must-never-be-logged"
RATE = {
    "X-RateLimit-Limit": "30",
    "X-RateLimit-Remaining": "29",
    "X-RateLimit-Reset": "7",
}


def member(member_id: int, **fields) -> dict:
    return {
        "id": member_id,
        "name": f"Member {member_id}",
        "status": "active",
        "city": "Kansas City",
        "country": "us",
        "joined": 1358875372000,
        **fields,
    }


def group(group_id: int) -> dict:
    return {"id": group_id, "name": f"Group {group_id}", "urlname": f"g{group_id}"}


def v2(results: list[dict], url: str = "") -> dict:
    return {
        "results": results,
        "meta": {"count": len(results), "url": url + f"&key={API_KEY}", "next": ""},
    }


@pytest.fixture(autouse=True)
def instant_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    # The retry schedule itself is asserted in test_meetup_api.py; here the waits
    # only need to be short.
    monkeypatch.setattr(meetup_api, "BACKOFF_INITIAL_S", 0.001)
    monkeypatch.setattr(meetup_api, "BACKOFF_MAX_S", 0.001)
    monkeypatch.setattr(meetup_api, "JITTER_S", 0.0)


def profile_function(load_function, backend, meetup_server, target, **env):
    settings = {
        "ALLOWED_COLLECTIONS": f"{MEMBERS},{GROUPS}",
        "MEETUP_API_URL": meetup_server.url,
        "MEETUP_API_KEY": API_KEY,
        **backend.env,
        **env,
    }
    return load_function(target, **settings)


def test_members_are_fetched_one_per_call_and_stored_as_m_id(
    load_function, backend, meetup_server
):
    meetup_server.script(
        "/2/members",
        Answer(200, v2([member(11)]), RATE),
        Answer(200, v2([]), RATE),
        Answer(200, v2([member(13, bio="hi")]), RATE),
    )
    client = profile_function(load_function, backend, meetup_server, "save_member_data")

    answer = client.post(f"/?collection={MEMBERS}", json={"member_id": [11, 12, 13]})

    assert answer.status_code == 200, answer.json
    assert answer.json == {"stored": [11, 13], "not_found": [12]}
    assert answer.headers["X-RateLimit-Remaining"] == "29"
    assert answer.headers["X-RateLimit-Reset"] == "7"
    calls = meetup_server.requests_to("/2/members")
    assert [c.query["member_id"] for c in calls] == [["11"], ["12"], ["13"]]
    assert all(c.query["key"] == [API_KEY] for c in calls)

    documents = backend.documents(MEMBERS)
    assert sorted(documents) == ["m11", "m13"]
    assert documents["m13"]["bio"] == "hi"
    assert documents["m11"]["name"] == "Member 11"
    assert documents["m11"]["fetched_at"]


def test_member_ids_may_come_as_a_comma_list_in_the_query(
    load_function, local_backend, meetup_server
):
    meetup_server.script(
        "/2/members",
        Answer(200, v2([member(1)]), RATE),
        Answer(200, v2([member(2)]), RATE),
    )
    client = profile_function(
        load_function, local_backend, meetup_server, "save_member_data"
    )

    answer = client.post(f"/?collection={MEMBERS}&member_id=1,2,1")

    assert answer.status_code == 200, answer.json
    assert answer.json["stored"] == [1, 2]
    assert len(meetup_server.requests_to("/2/members")) == 2


def test_a_profile_is_merged_into_the_existing_document(
    load_function, backend, meetup_server
):
    meetup_server.script(
        "/2/members",
        Answer(200, v2([member(5, city="Sydney", photo={"photo_id": 1})]), RATE),
        Answer(200, v2([member(5, photo={"thumb_link": "t"})]), RATE),
    )
    client = profile_function(load_function, backend, meetup_server, "save_member_data")

    client.post(f"/?collection={MEMBERS}", json={"member_id": 5})
    client.post(f"/?collection={MEMBERS}", json={"member_id": 5})

    document = backend.documents(MEMBERS)["m5"]
    assert document["city"] == "Kansas City"
    assert document["photo"] == {"photo_id": 1, "thumb_link": "t"}


def test_groups_are_fetched_many_per_call_and_stored_in_one_batch(
    load_function, backend, meetup_server
):
    meetup_server.script("/2/groups", Answer(200, v2([group(3), group(1)]), RATE))
    client = profile_function(load_function, backend, meetup_server, "save_group_data")

    answer = client.post(f"/?collection={GROUPS}", json={"group_id": [1, 2, 3]})

    assert answer.status_code == 200, answer.json
    assert answer.json == {"stored": [1, 3], "not_found": [2]}
    [call] = meetup_server.requests_to("/2/groups")
    assert call.query["group_id"] == ["1,2,3"]
    assert sorted(backend.documents(GROUPS)) == ["m1", "m3"]


@pytest.mark.parametrize(
    "throttle",
    [
        Answer(429, {"errors": [{"code": "throttled"}]}, {"Retry-After": "9"}),
        Answer(
            400,
            {"problem": "Client throttled", "code": "throttled", "details": "x"},
            {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "9"},
        ),
    ],
    ids=["429", "400 throttled"],
)
def test_throttling_tells_the_caller_when_to_come_back_with_what(
    load_function, local_backend, meetup_server, throttle
):
    meetup_server.script("/2/members", Answer(200, v2([member(1)]), RATE), throttle)
    client = profile_function(
        load_function, local_backend, meetup_server, "save_member_data"
    )

    answer = client.post(f"/?collection={MEMBERS}", json={"member_id": [1, 2, 3]})

    assert answer.status_code == 429
    assert answer.headers["Retry-After"] == "9"
    assert answer.json["stored"] == [1]
    assert answer.json["remaining"] == [2, 3]
    assert answer.json["retry_after"] == 9
    assert len(meetup_server.requests_to("/2/members")) == 2
    assert sorted(local_backend.documents(MEMBERS)) == ["m1"]


def test_an_exhausted_rate_limit_stops_before_spending_another_call(
    load_function, local_backend, meetup_server
):
    spent = {**RATE, "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "4"}
    meetup_server.script("/2/members", Answer(200, v2([member(1)]), spent))
    client = profile_function(
        load_function, local_backend, meetup_server, "save_member_data"
    )

    answer = client.post(f"/?collection={MEMBERS}", json={"member_id": [1, 2]})

    assert answer.status_code == 429
    assert answer.json["remaining"] == [2]
    assert answer.headers["Retry-After"] == "4"
    assert len(meetup_server.requests_to("/2/members")) == 1


def test_a_wrong_key_is_a_configuration_error_not_retried(
    load_function, local_backend, meetup_server, caplog
):
    meetup_server.script("/2/members", Answer(401, {"problem": "bad key"}))
    client = profile_function(
        load_function, local_backend, meetup_server, "save_member_data"
    )

    answer = client.post(f"/?collection={MEMBERS}", json={"member_id": 1})

    assert answer.status_code == 502
    assert answer.json["code"] == "meetup_unauthorized"
    assert len(meetup_server.requests_to("/2/members")) == 1
    assert any(
        r.levelname == "ERROR" and "401" in r.getMessage() for r in caplog.records
    )
    assert not local_backend.written_anything()


def test_server_errors_are_retried_then_succeed(
    load_function, local_backend, meetup_server
):
    meetup_server.script(
        "/2/groups",
        Answer(500, {}),
        Answer(503, {}),
        Answer(200, v2([group(4)]), RATE),
    )
    client = profile_function(
        load_function, local_backend, meetup_server, "save_group_data"
    )

    answer = client.post(f"/?collection={GROUPS}", json={"group_id": 4})

    assert answer.status_code == 200, answer.json
    assert answer.json["stored"] == [4]
    assert len(meetup_server.requests_to("/2/groups")) == 3


def test_persistent_server_errors_answer_503(
    load_function, local_backend, meetup_server
):
    meetup_server.default = Answer(500, {})
    client = profile_function(
        load_function, local_backend, meetup_server, "save_group_data"
    )

    answer = client.post(f"/?collection={GROUPS}", json={"group_id": 4})

    assert answer.status_code == 503
    assert len(meetup_server.requests_to("/2/groups")) == meetup_api.ATTEMPTS
    assert not local_backend.written_anything()


def test_the_key_may_come_in_the_body_and_is_used_over_the_environment(
    load_function, local_backend, meetup_server
):
    meetup_server.script("/2/members", Answer(200, v2([member(1)]), RATE))
    client = profile_function(
        load_function, local_backend, meetup_server, "save_member_data"
    )

    answer = client.post(
        f"/?collection={MEMBERS}", json={"member_id": 1, "api_key": "from-body"}
    )

    assert answer.status_code == 200
    assert meetup_server.requests_to("/2/members")[0].query["key"] == ["from-body"]


def test_no_key_at_all_is_a_clear_error(load_function, local_backend, meetup_server):
    client = profile_function(
        load_function,
        local_backend,
        meetup_server,
        "save_member_data",
        MEETUP_API_KEY="",
    )

    answer = client.post(f"/?collection={MEMBERS}", json={"member_id": 1})

    assert answer.status_code == 500
    assert "API key" in answer.json["error"]
    assert meetup_server.received == []


def test_the_key_never_reaches_a_log_line(
    load_function, local_backend, meetup_server, caplog, capsys
):
    # Every path that logs: success, unknown id, throttling, 401, 5xx, and a
    # network error (whose message, from requests, holds the whole URL).
    meetup_server.script(
        "/2/members",
        Answer(200, v2([member(1)], url="http://x/2/members?member_id=1")),
        Answer(200, v2([])),
        Answer(429, {}, {"Retry-After": "1"}),
    )
    client = profile_function(
        load_function, local_backend, meetup_server, "save_member_data"
    )
    client.post(f"/?collection={MEMBERS}", json={"member_id": [1, 2, 3]})
    meetup_server.script("/2/members", Answer(401, {}))
    client.post(f"/?collection={MEMBERS}", json={"member_id": 1})
    meetup_server.default = Answer(502, {})
    client.post(f"/?collection={MEMBERS}", json={"member_id": 1})
    closed = profile_function(
        load_function,
        local_backend,
        meetup_server,
        "save_member_data",
        MEETUP_API_URL=f"http://127.0.0.1:{cloud.free_port()}",
    )
    assert (
        closed.post(f"/?collection={MEMBERS}", json={"member_id": 1}).status_code == 503
    )

    logged = "\n".join(r.getMessage() for r in caplog.records) + capsys.readouterr().out
    assert "Meetup API attempt" in logged
    assert API_KEY not in logged
    assert API_KEY not in json.dumps([r.__dict__ for r in caplog.records], default=str)
