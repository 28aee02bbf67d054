"""Serving a stream from a file of recorded items."""

from __future__ import annotations

import json

import pytest

from standin.server import StandIn, StandInConfig, StreamConfig
from tests.standin.helpers import RawStream

# Recorded items out of mtime order, with a duplicate and a missing mtime.
RECORDED = [
    {"rsvp_id": 11, "mtime": 1526781579178, "response": "yes", "url": "https://a/b"},
    {"rsvp_id": 12, "mtime": 1526781570000, "response": "no"},
    {"rsvp_id": 11, "mtime": 1526781579000, "response": "yes"},
    {"rsvp_id": 13, "mtime": 1526781590000, "response": "yes"},
    {"rsvp_id": 14, "response": "yes"},
    {"rsvp_id": 15, "mtime": 1526781585000, "response": "no"},
]


@pytest.fixture
def ndjson_file(tmp_path):
    path = tmp_path / "rsvps.ndjson"
    lines = [json.dumps(item, separators=(",", ":")) for item in RECORDED]
    path.write_text("\n".join(lines) + "\n\n")
    return path


@pytest.fixture
def array_file(tmp_path):
    path = tmp_path / "rsvps.json"
    path.write_text(json.dumps(RECORDED, indent=2))
    return path


def test_ndjson_replays_byte_for_byte_in_file_order(start_standin, ndjson_file):
    standin = start_standin(
        streams={"rsvps": StreamConfig(rate=None, replay_file=ndjson_file)}
    )

    with RawStream(standin.port, "/2/rsvps") as stream:
        payloads = stream.payloads(len(RECORDED))
        assert stream.is_quiet()

    assert b"".join(payloads) == ndjson_file.read_bytes().rstrip(b"\n") + b"\n"
    assert standin.served("rsvps") == {
        (item["rsvp_id"], item.get("mtime")) for item in RECORDED
    }


def test_a_json_array_replays_in_order_with_escaped_slashes(start_standin, array_file):
    standin = start_standin(
        streams={"rsvps": StreamConfig(rate=None, replay_file=array_file)}
    )

    with RawStream(standin.port, "/2/rsvps") as stream:
        payloads = stream.payloads(len(RECORDED))

    assert [json.loads(p) for p in payloads] == RECORDED
    assert b'"url":"https:\\/\\/a\\/b"' in payloads[0]


def test_since_count_and_since_mtime_apply_to_the_file(start_standin, ndjson_file):
    # A backlog of the whole file: everything has been played already.
    standin = start_standin(
        streams={"rsvps": StreamConfig(rate=None, replay_file=ndjson_file, backlog=100)}
    )

    with RawStream(standin.port, "/2/rsvps?since_count=2") as stream:
        assert stream.items(2) == RECORDED[-2:]
        assert stream.is_quiet()
    with RawStream(standin.port, "/2/rsvps?since_mtime=1526781579000") as stream:
        assert stream.items(3) == [RECORDED[0], RECORDED[3], RECORDED[5]]
        assert stream.is_quiet()


def test_a_replay_at_a_rate(start_standin, ndjson_file):
    standin = start_standin(
        streams={"rsvps": StreamConfig(rate=500.0, replay_file=ndjson_file)}
    )

    with RawStream(standin.port, "/2/rsvps?since_count=10") as stream:
        assert stream.items(len(RECORDED)) == RECORDED


def test_a_file_that_is_not_items_is_refused(tmp_path):
    path = tmp_path / "bad.ndjson"
    path.write_text('{"rsvp_id": 1}\nnot json\n')

    with pytest.raises(ValueError, match="bad.ndjson:2"):
        StandIn(StandInConfig(streams={"rsvps": StreamConfig(replay_file=path)}))
