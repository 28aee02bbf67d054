"""open_venues?trickle: the whole venue table in batches, then the live stream."""

from __future__ import annotations

from standin import world
from standin.server import StreamConfig
from tests.standin.helpers import RawStream


def test_trickle_sends_the_venue_table_then_goes_live(start_standin):
    standin = start_standin(
        streams={"open_venues": StreamConfig(rate=None, max_items=5)}
    )

    with RawStream(standin.port, "/2/open_venues?trickle") as stream:
        table = stream.items(world.VENUE_COUNT)
        live = stream.items(5)
        assert stream.is_quiet()

    table_ids = [venue["id"] for venue in table]
    assert len(set(table_ids)) == world.VENUE_COUNT
    assert {venue["id"] for venue in live} <= set(table_ids)
    assert min(venue["mtime"] for venue in live) > max(v["mtime"] for v in table)


def test_a_reconnect_with_trickle_gets_the_trickle_again(start_standin):
    standin = start_standin(
        streams={"open_venues": StreamConfig(rate=None, max_items=3)}
    )
    with RawStream(standin.port, "/2/open_venues?trickle") as stream:
        first = stream.items(world.VENUE_COUNT + 3)
    resume_from = max(venue["mtime"] for venue in first) - 1

    path = f"/2/open_venues?trickle&since_mtime={resume_from}"
    with RawStream(standin.port, path) as stream:
        again = stream.items(world.VENUE_COUNT)

    assert [v["id"] for v in again] == [v["id"] for v in first[: world.VENUE_COUNT]]
    assert standin.stats()["streams"]["open_venues"]["trickles"] == 2


def test_without_trickle_there_is_no_table(start_standin):
    standin = start_standin(
        streams={"open_venues": StreamConfig(rate=None, max_items=4)}
    )

    with RawStream(standin.port, "/2/open_venues") as stream:
        live = stream.items(4)
        assert stream.is_quiet()

    assert all(venue["mtime"] >= standin.epoch_ms - 3000 for venue in live)
    assert standin.stats()["streams"]["open_venues"]["trickles"] == 0
