"""Lines and items: splitting whatever the chunk boundaries, the fields the
collector takes out of each stream's items, and what counts as malformed."""

from __future__ import annotations

import json

import pytest

from collector import contract
from collector.items import LineSplitter, MalformedItem, parse_item

RSVP = (
    b'{"venue":{"venue_name":"Archers Arena"},"response":"yes",'
    b'"member":{"member_id":1936372,"photo":"https:\\/\\/x\\/a.jpeg"},'
    b'"rsvp_id":1672114274,"mtime":1496767464097,'
    b'"group":{"group_city":"Toronto","group_id":1822458}}'
)


def test_lines_are_whole_whatever_the_chunk_boundaries() -> None:
    stream = b'{"a":1}\n{"b":2}\r\n\n{"c":3}\n'
    for cut in range(1, len(stream)):
        splitter = LineSplitter(max_line_bytes=100)

        lines = splitter.feed(stream[:cut]) + splitter.feed(stream[cut:])

        assert lines == [b'{"a":1}', b'{"b":2}', b'{"c":3}'], cut


def test_a_partial_line_waits_for_its_end() -> None:
    splitter = LineSplitter(max_line_bytes=100)

    assert splitter.feed(b'{"a":') == []
    assert splitter.pending_bytes == 5
    assert splitter.feed(b"1}\n") == [b'{"a":1}']


def test_an_oversized_line_is_reported_and_skipped_without_buffering_it() -> None:
    reported = []
    splitter = LineSplitter(
        max_line_bytes=10, on_oversized=lambda p, n: reported.append((p, n))
    )

    lines = (
        splitter.feed(b"x" * 8) + splitter.feed(b"y" * 30) + splitter.feed(b"z\n{}\n")
    )

    assert lines == [b"{}"]
    assert reported == [(b"xxxxxxxxyy", 39)]
    assert splitter.pending_bytes == 0


def test_reset_forgets_a_partial_line() -> None:
    splitter = LineSplitter(max_line_bytes=100)
    splitter.feed(b'{"broken')

    splitter.reset()

    assert splitter.feed(b'{"a":1}\n') == [b'{"a":1}']


def test_an_rsvp_gives_its_id_mtime_member_and_group_and_keeps_its_bytes() -> None:
    item = parse_item("rsvps", RSVP)

    assert item.item_id == 1672114274
    assert item.mtime == 1496767464097
    assert item.member_ids == (1936372,)
    assert item.group_ids == (1822458,)
    assert item.raw == RSVP  # escaped slashes and key order untouched


@pytest.mark.parametrize(
    ("label", "document", "item_id", "members", "groups"),
    [
        (
            "open_events",
            {"id": "xxlwkmywpbzb", "group": {"id": 7}},
            "xxlwkmywpbzb",
            (),
            (7,),
        ),
        (
            "event_comments",
            {"id": 5, "member": {"member_id": 3}, "group": {"id": 8}},
            5,
            (3,),
            (8,),
        ),
        (
            "photos",
            {
                "photo_id": 9,
                "member": {"member_id": 4, "name": "A"},
                "photo_album": {"group": {"id": 11}},
            },
            9,
            (4,),
            (11,),
        ),
        ("open_venues", {"id": 12, "name": "Hall"}, 12, (), ()),
        (
            "rsvps",
            {"rsvp_id": 1, "member": {}, "group": {"group_id": "15"}},
            1,
            (),
            (15,),
        ),
    ],
)
def test_ids_come_from_the_paths_of_each_stream(
    label: str, document: dict, item_id: object, members: tuple, groups: tuple
) -> None:
    item = parse_item(label, json.dumps(document).encode())

    assert item.item_id == item_id
    assert item.member_ids == members
    assert item.group_ids == groups


def test_every_stream_has_an_id_field_and_profile_paths_are_known_streams() -> None:
    assert set(contract.ITEM_ID_FIELDS) == set(contract.STREAM_LABELS)
    assert set(contract.MEMBER_ID_PATHS) <= set(contract.STREAM_LABELS)
    assert set(contract.GROUP_ID_PATHS) <= set(contract.STREAM_LABELS)


def test_an_item_without_mtime_is_kept_with_none() -> None:
    assert parse_item("open_venues", b'{"id": 3}').mtime is None
    assert parse_item("open_venues", b'{"id": 3, "mtime": "soon"}').mtime is None


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b'{"rsvp_id": 1', "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"id": 1}', "no usable 'rsvp_id'"),
        (b'{"rsvp_id": true}', "no usable 'rsvp_id'"),
        (b"\xff\xfe", "not JSON"),
    ],
)
def test_malformed_lines_say_why(line: bytes, why: str) -> None:
    with pytest.raises(MalformedItem, match=why):
        parse_item("rsvps", line)
