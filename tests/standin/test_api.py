"""The profile API: v2 envelope, 401, rate limit headers, throttling, faults."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlencode

import pytest

from standin.server import ApiConfig, StandIn
from tests.standin.helpers import FakeClock

KEY = "test-key"


class Client:
    """One kept-alive connection to the stand-in, as a function would hold."""

    def __init__(self, standin: StandIn) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", standin.port)

    def get(self, path, **params):
        query = urlencode(params, safe=",")
        self.connection.request("GET", f"{path}?{query}" if query else path)
        answer = self.connection.getresponse()
        body = json.loads(answer.read())
        return answer.status, dict(answer.getheaders()), body


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def api(start_standin, clock):
    def start(**api_config):
        standin = start_standin(api_key=KEY, api=ApiConfig(clock=clock, **api_config))
        return standin, Client(standin)

    return start


def test_a_member_in_the_v2_envelope(api):
    standin, client = api()
    member_id = standin.world.member_id(42)

    status, headers, body = client.get("/2/members", member_id=member_id, key=KEY)

    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    [member] = body["results"]
    assert member["id"] == member_id
    assert {"name", "status", "link", "city", "country", "joined", "topics"} <= set(
        member
    )
    meta = body["meta"]
    assert meta["url"] == (
        f"http://127.0.0.1:{standin.port}/2/members?member_id={member_id}&key={KEY}"
    )
    assert (meta["count"], meta["total_count"], meta["method"]) == (1, 1, "Members")


def test_groups_several_at_once_unknown_ids_left_out(api):
    standin, client = api()
    known = [standin.world.group_id(index) for index in (3, 700, 1499)]
    asked = [known[0], 12345, known[1], known[2]]

    status, _, body = client.get(
        "/2/groups", group_id=",".join(map(str, asked)), key=KEY
    )

    assert status == 200
    assert [group["id"] for group in body["results"]] == known
    group = body["results"][0]
    assert {"urlname", "city", "country", "timezone", "members", "organizer"} <= set(
        group
    )
    organizer = group["organizer"]["member_id"]
    status, _, body = client.get("/2/members", member_id=organizer, key=KEY)
    assert [member["id"] for member in body["results"]] == [organizer]


def test_groups_are_paged(api):
    standin, client = api()
    group_ids = ",".join(str(standin.world.group_id(index)) for index in range(5))

    _, _, body = client.get("/2/groups", group_id=group_ids, page=2, key=KEY)

    assert len(body["results"]) == 2
    assert body["meta"]["total_count"] == 5
    assert "offset=1" in body["meta"]["next"]


def test_an_unknown_member_gives_empty_results(api):
    _, client = api()

    status, _, body = client.get("/2/members", member_id=1, key=KEY)

    assert (status, body["results"]) == (200, [])


@pytest.mark.parametrize("params", [{}, {"key": "wrong-key"}])
def test_a_missing_or_wrong_key_is_401_with_rate_limit_headers(api, params):
    standin, client = api()

    status, headers, body = client.get(
        "/2/members", member_id=standin.world.member_id(1), **params
    )

    assert status == 401
    assert body["code"] == "not_authorized"
    assert headers["X-RateLimit-Limit"] == "30"
    assert standin.stats()["api"]["unauthorized"] == 1


def test_member_id_takes_one_id(api):
    _, client = api()

    status, _, body = client.get("/2/members", member_id="1,2", key=KEY)

    assert status == 400
    assert "one integer" in body["details"]


def test_rate_limit_headers_count_down_and_reset(api, clock):
    standin, client = api(limit=3, window_seconds=10)
    member_id = standin.world.member_id(7)

    seen = []
    for _ in range(3):
        status, headers, _ = client.get("/2/members", member_id=member_id, key=KEY)
        seen.append((status, headers["X-RateLimit-Remaining"]))
        clock.advance(2)
    assert seen == [(200, "2"), (200, "1"), (200, "0")]

    status, headers, body = client.get("/2/members", member_id=member_id, key=KEY)
    assert status == 429
    assert body == {
        "errors": [{"code": "throttled", "message": "Credentials have been throttled"}]
    }
    assert (headers["X-RateLimit-Remaining"], headers["X-RateLimit-Reset"]) == (
        "0",
        "4",
    )

    clock.advance(4)
    status, headers, _ = client.get("/2/members", member_id=member_id, key=KEY)
    assert (status, headers["X-RateLimit-Remaining"]) == (200, "2")
    assert headers["X-RateLimit-Reset"] == "10"

    stats = standin.stats()["api"]
    assert (stats["throttled"], stats["ok"], stats["requests"]) == (1, 4, 5)
    assert stats["max_requests_in_window"] == 3
    assert stats["limit_exceeded"] == 0


def test_v2_style_throttling_is_a_400(api):
    standin, client = api(limit=1, throttle_style="400")
    member_id = standin.world.member_id(7)
    client.get("/2/members", member_id=member_id, key=KEY)

    status, _, body = client.get("/2/members", member_id=member_id, key=KEY)

    assert status == 400
    assert body == {
        "problem": "Client throttled",
        "code": "throttled",
        "details": "Credentials have been throttled",
    }


def test_a_client_that_keeps_going_is_blocked(api, clock):
    standin, client = api(limit=2, window_seconds=10, block_after=2, block_seconds=100)
    member_id = standin.world.member_id(7)
    statuses = [
        client.get("/2/members", member_id=member_id, key=KEY)[0] for _ in range(5)
    ]
    assert statuses == [200, 200, 429, 429, 429]

    clock.advance(10)  # a new window, but the block holds
    status, headers, body = client.get("/2/members", member_id=member_id, key=KEY)
    assert status == 429
    assert "one hour" in body["errors"][0]["message"]
    assert headers["X-RateLimit-Reset"] == "90"

    clock.advance(90)
    assert client.get("/2/members", member_id=member_id, key=KEY)[0] == 200
    stats = standin.stats()["api"]
    assert (stats["throttled"], stats["blocked"]) == (2, 2)


def test_error_rate_gives_5xx_and_can_be_turned_off(api):
    standin, client = api(error_rate=1.0)
    member_id = standin.world.member_id(7)

    status, headers, _ = client.get("/2/members", member_id=member_id, key=KEY)
    assert status in (500, 503)
    assert "X-RateLimit-Remaining" in headers

    standin.set_faults("api", error_rate=0.0)
    assert client.get("/2/members", member_id=member_id, key=KEY)[0] == 200
    assert standin.stats()["api"]["errors_injected"] == 1


def test_latency_is_added_with_the_injected_sleep(start_standin):
    naps = []
    standin = start_standin(
        api_key=KEY, api=ApiConfig(latency_ms=250, sleep=naps.append)
    )
    client = Client(standin)

    client.get("/2/groups", group_id=standin.world.group_id(1), key=KEY)

    assert naps == [0.25]
