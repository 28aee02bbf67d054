"""The wire format of the streams, checked byte by byte over a raw socket."""

from __future__ import annotations

import json

import pytest

from standin.server import LABELS, Quirks, StreamConfig
from tests.standin.helpers import RawStream


def test_a_stream_is_chunked_with_one_json_object_and_a_newline_a_chunk(
    start_standin,
):
    standin = start_standin(
        seed=1, streams={"rsvps": StreamConfig(rate=None, max_items=20)}
    )

    with RawStream(standin.port, "/2/rsvps") as stream:
        assert stream.status_line == "HTTP/1.1 200 OK"
        assert stream.headers["content-type"] == "application/json; charset=utf-8"
        assert stream.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in stream.headers

        # The first chunk exactly: hex size, CRLF, the object and "\n", CRLF.
        raw = stream.read_until(b"\n\r\n")
        size_line, _, rest = raw.partition(b"\r\n")
        payload = rest[:-2]
        assert size_line == b"%x" % len(payload)
        assert payload.endswith(b"}\n") and payload.count(b"\n") == 1
        assert isinstance(json.loads(payload), dict)

        items = stream.items(19)
        assert all("rsvp_id" in item and "mtime" in item for item in items)
        # max_items reached: the stream goes quiet but does not end.
        assert stream.is_quiet()


def test_slashes_are_escaped_as_the_real_stream_did(start_standin):
    standin = start_standin(
        streams={
            "rsvps": StreamConfig(rate=None, max_items=50),
            "photos": StreamConfig(
                rate=None, max_items=50, quirks=Quirks(escaped_slashes=False)
            ),
        }
    )

    with RawStream(standin.port, "/2/rsvps") as stream:
        escaped = b"".join(stream.payloads(50))
    with RawStream(standin.port, "/2/photos") as stream:
        plain = b"".join(stream.payloads(50))

    assert b"https:\\/\\/" in escaped
    assert b"/" not in escaped.replace(b"\\/", b"")
    assert b"https://secure.meetupstatic.com/photos/" in plain
    assert b"\\/" not in plain


# (path of the id, path of the member id or None, path of the group id or None)
SHAPES = {
    "rsvps": ("rsvp_id", "member.member_id", "group.group_id"),
    "open_events": ("id", None, "group.id"),
    "event_comments": ("id", "member.member_id", "group.id"),
    "photos": ("photo_id", "member.member_id", "photo_album.group.id"),
    "open_venues": ("id", None, None),
}
REQUIRED = {
    "rsvps": {"response", "guests", "member", "event", "group", "visibility"},
    "open_events": {"name", "time", "status", "event_url", "group", "utc_offset"},
    "event_comments": {"comment", "status", "member", "event", "group"},
    "photos": {"photo_link", "thumb_link", "ctime", "member", "photo_album"},
    "open_venues": {"name", "address_1", "city", "country", "lat", "lon"},
}


def _get(item, path):
    for key in path.split("."):
        item = item[key]
    return item


@pytest.mark.parametrize("label", LABELS)
def test_items_have_the_shape_of_their_stream(start_standin, label):
    standin = start_standin(streams={label: StreamConfig(rate=None, max_items=200)})

    with RawStream(standin.port, f"/2/{label}") as stream:
        items = stream.items(200)

    id_path, member_path, group_path = SHAPES[label]
    for item in items:
        assert REQUIRED[label] <= item.keys()
        assert isinstance(item["mtime"], int)
        item_id = _get(item, id_path)
        assert isinstance(item_id, str if label == "open_events" else int)
        if member_path:
            assert isinstance(_get(item, member_path), int)
        if group_path:
            assert isinstance(_get(item, group_path), int)
    if label == "photos":
        assert all("name" in item["member"] for item in items)  # not member_name
    if label == "rsvps":
        countries = {item["group"]["group_country"] for item in items}
        assert all(country == country.lower() for country in countries)
