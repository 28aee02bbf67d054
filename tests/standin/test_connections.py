"""The cap on open stream connections, stop(), and what served() reports."""

from __future__ import annotations

import json
import urllib.request

from standin.server import StreamConfig
from tests.standin.helpers import RawStream, wait_for

QUIET = StreamConfig(rate=None, max_items=0)


def test_the_eleventh_connection_of_a_client_is_refused(start_standin):
    standin = start_standin(streams={"photos": QUIET, "rsvps": QUIET})
    streams = [
        RawStream(standin.port, "/2/photos" if n % 2 else "/2/rsvps") for n in range(10)
    ]
    try:
        assert [stream.status for stream in streams] == [200] * 10

        with RawStream(standin.port, "/2/photos") as refused:
            assert refused.status == 429
            assert refused.json()["code"] == "connection_limit"
            assert refused.headers["connection"] == "close"
        stats = standin.stats()
        assert stats["connections"] == {
            "open": 10,
            "refused_over_cap": 1,
            "limit_per_client": 10,
        }
        assert stats["streams"]["photos"]["refused_over_cap"] == 1

        # A quiet stream still notices its client leave, and frees the slot.
        streams.pop().close()
        wait_for(lambda: standin.stats()["connections"]["open"] == 9)
        with RawStream(standin.port, "/2/photos") as admitted:
            assert admitted.status == 200
    finally:
        for stream in streams:
            stream.close()


def test_the_cap_is_configurable(start_standin):
    standin = start_standin(streams={"photos": QUIET}, max_connections_per_client=1)

    with (
        RawStream(standin.port, "/2/photos") as first,
        RawStream(standin.port, "/2/photos") as second,
    ):
        assert (first.status, second.status) == (200, 429)


def test_stop_closes_open_streams(start_standin):
    standin = start_standin(streams={"rsvps": QUIET, "photos": StreamConfig(rate=None)})
    quiet = RawStream(standin.port, "/2/rsvps")
    busy = RawStream(standin.port, "/2/photos")
    busy.items(3)

    standin.stop()

    assert quiet.at_eof()
    assert busy.at_eof()
    quiet.close()
    busy.close()
    assert standin.stats()["connections"]["open"] == 0


def test_served_is_what_clients_were_sent(start_standin):
    standin = start_standin(streams={"rsvps": StreamConfig(rate=None, max_items=700)})

    with RawStream(standin.port, "/2/rsvps") as stream:
        items = stream.items(700)
    read = {(item["rsvp_id"], item["mtime"]) for item in items}

    assert len(read) < 700  # duplicates with the same mtime count once
    wait_for(lambda: standin.served("rsvps") == read)
    with urllib.request.urlopen(f"{standin.url}/_standin/served/rsvps") as answer:
        lines = [json.loads(line) for line in answer.read().splitlines()]
    assert {(line["id"], line["mtime"]) for line in lines} == read
    assert standin.stats()["streams"]["rsvps"]["items_served"] == 700


def test_served_covers_the_trickle(start_standin):
    standin = start_standin(streams={"open_venues": QUIET})

    with RawStream(standin.port, "/2/open_venues?trickle") as stream:
        table = stream.items(600)

    read = {(venue["id"], venue["mtime"]) for venue in table}
    wait_for(lambda: read <= standin.served("open_venues"))
