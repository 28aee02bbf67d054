"""The seeded world: determinism, consistency with the API, quirks at real rates."""

from __future__ import annotations

import http.client
import json
from collections import Counter
from itertools import pairwise

import pytest

from standin import world
from standin.config import Quirks
from standin.items import GENERATED_SOURCES, ItemSource
from standin.server import LABELS, ApiConfig, StreamConfig
from tests.standin.helpers import EPOCH_MS, RawStream


def _items(source: ItemSource, count: int) -> list[dict]:
    items = []
    for number in range(count // 512 + 1):
        block = source.block(number)
        for slot in range(len(block.item_ids)):
            frame = block.frames[block.offsets[slot] : block.offsets[slot + 1]]
            items.append(json.loads(frame.split(b"\r\n")[1]))
    return items[:count]


def _rsvps(quirks: Quirks, count: int = 1000) -> list[dict]:
    source = GENERATED_SOURCES["rsvps"](
        "rsvps", world.World(7, EPOCH_MS), quirks, EPOCH_MS, 3.0, 0
    )
    return _items(source, count)


def test_the_same_seed_gives_the_same_items(start_standin):
    def read_all(seed):
        standin = start_standin(
            seed=seed,
            streams={label: StreamConfig(rate=None, max_items=300) for label in LABELS},
        )
        payloads = {}
        for label in LABELS:
            with RawStream(standin.port, f"/2/{label}") as stream:
                payloads[label] = stream.payloads(300)
        return payloads

    first, again, other = read_all(5), read_all(5), read_all(6)

    assert first == again
    assert all(first[label] != other[label] for label in LABELS)


def test_item_i_does_not_depend_on_what_came_before():
    def source():
        return GENERATED_SOURCES["rsvps"](
            "rsvps", world.World(3, EPOCH_MS), Quirks(), EPOCH_MS, None, 0
        )

    in_order = source()
    in_order.block(0)
    in_order.block(1)
    jumped = source()

    assert jumped.block(5).frames == in_order.block(5).frames


def test_every_member_and_group_in_10000_items_resolves_through_the_api(
    start_standin,
):
    standin = start_standin(
        seed=11,
        api_key="k",
        api=ApiConfig(limit=1_000_000),
        streams={label: StreamConfig(rate=None) for label in LABELS},
    )
    member_ids, group_ids = set(), set()
    for label in ("rsvps", "event_comments", "photos", "open_events"):
        with RawStream(standin.port, f"/2/{label}") as stream:
            for item in stream.items(2500):
                if label == "rsvps":
                    group_ids.add(item["group"]["group_id"])
                elif label == "photos":
                    group_ids.add(item["photo_album"]["group"]["id"])
                else:
                    group_ids.add(item["group"]["id"])
                if "member" in item:
                    member_ids.add(item["member"]["member_id"])

    connection = http.client.HTTPConnection("127.0.0.1", standin.port)

    def results(path):
        connection.request("GET", path)
        answer = connection.getresponse()
        assert answer.status == 200
        return json.loads(answer.read())["results"]

    missing_members = [
        member_id
        for member_id in sorted(member_ids)
        if [m["id"] for m in results(f"/2/members?member_id={member_id}&key=k")]
        != [member_id]
    ]
    ordered = sorted(group_ids)
    found_groups = set()
    for start in range(0, len(ordered), 200):
        batch = ",".join(map(str, ordered[start : start + 200]))
        found_groups |= {g["id"] for g in results(f"/2/groups?group_id={batch}&key=k")}

    assert len(member_ids) > 1000 and len(group_ids) > 500
    assert missing_members == []
    assert found_groups == group_ids


def test_rsvp_quirks_come_at_about_the_measured_rates():
    items = _rsvps(Quirks())

    repeated_ids = sum(
        1 for n in Counter(i["rsvp_id"] for i in items).values() if n > 1
    )
    backwards = sum(1 for a, b in pairwise(items) if b["mtime"] < a["mtime"])
    without_venue = sum(1 for item in items if "venue" not in item)
    alphanumeric = sum(1 for i in items if not i["event"]["event_id"].isdigit())
    rounded_copies = {
        (i["rsvp_id"], i["mtime"]) for i in items if i["mtime"] % 1000 == 0
    }

    assert 120 <= repeated_ids <= 220  # 169 in the real capture
    assert 110 <= backwards <= 210  # 159
    assert 90 <= without_venue <= 180  # 13.6%
    assert 230 <= alphanumeric <= 390  # 31%
    assert rounded_copies


def test_a_changed_response_is_resent_under_the_same_id():
    items = _rsvps(Quirks())

    answers: dict[int, set[str]] = {}
    for item in items:
        answers.setdefault(item["rsvp_id"], set()).add(item["response"])

    assert any(len(responses) > 1 for responses in answers.values())


def test_without_quirks_items_are_tidy():
    items = _rsvps(Quirks.none())
    raw = json.dumps(items)

    assert len({item["rsvp_id"] for item in items}) == len(items)
    assert all(b["mtime"] > a["mtime"] for a, b in pairwise(items))
    assert all("venue" in item and "photo" in item["member"] for item in items)
    assert all("time" in item["event"] for item in items)
    assert all(item["event"]["event_id"].isdigit() for item in items)
    assert "\\/" not in raw


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("all", Quirks()),
        ("none", Quirks.none()),
        (
            "duplicates,escaped_slashes",
            Quirks(
                duplicates=True,
                backwards_mtimes=False,
                missing_fields=False,
                alphanumeric_ids=False,
                escaped_slashes=True,
            ),
        ),
    ],
)
def test_quirks_parse(text, expected):
    assert Quirks.parse(text) == expected


def test_an_unknown_quirk_is_refused():
    with pytest.raises(ValueError, match="dupes"):
        Quirks.parse("dupes")
