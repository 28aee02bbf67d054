"""since_count, since_mtime and event_id, on a history with real-traffic quirks."""

from __future__ import annotations

from standin.server import StreamConfig
from tests.standin.helpers import RawStream

HISTORY = 300


def _history(standin, label="rsvps"):
    with RawStream(standin.port, f"/2/{label}?since_count={HISTORY}") as stream:
        items = stream.items(HISTORY)
        assert stream.is_quiet()
    return items


def test_since_count_sends_the_most_recent_items(start_standin):
    standin = start_standin(
        seed=4, streams={"rsvps": StreamConfig(backlog=HISTORY, max_items=0)}
    )
    history = _history(standin)

    with RawStream(standin.port, "/2/rsvps?since_count=40") as stream:
        recent = stream.items(40)
        assert stream.is_quiet()

    assert recent == history[-40:]


def test_since_mtime_sends_every_item_with_a_greater_mtime_in_order(start_standin):
    standin = start_standin(
        seed=4, streams={"rsvps": StreamConfig(backlog=HISTORY, max_items=0)}
    )
    history = _history(standin)
    since = max(item["mtime"] for item in history[:200])
    expected = [item for item in history if item["mtime"] > since]
    # The quirks put older mtimes after newer ones: the filter must skip them.
    skipped_late = [item for item in history[201:] if item["mtime"] <= since]
    assert skipped_late

    with RawStream(standin.port, f"/2/rsvps?since_mtime={since}") as stream:
        resumed = stream.items(len(expected))
        assert stream.is_quiet()

    assert resumed == expected


def test_since_mtime_goes_on_live_after_the_history(start_standin):
    def config():
        return {
            "seed": 4,
            "streams": {"rsvps": StreamConfig(rate=None, backlog=100, max_items=25)},
        }

    # The same seed gives the same items: a twin shows what is to come.
    twin = start_standin(**config())
    with RawStream(twin.port, "/2/rsvps?since_count=100") as stream:
        history = stream.items(100)
        live = stream.items(25)
    since = max(item["mtime"] for item in history[:90])
    expected = [item for item in history if item["mtime"] > since] + live

    standin = start_standin(**config())
    with RawStream(standin.port, f"/2/rsvps?since_mtime={since}") as stream:
        resumed = stream.items(len(expected))
        assert stream.is_quiet()

    # Live items come whatever their mtime, after the filtered history.
    assert resumed == expected


def test_a_live_connection_starts_at_the_head(start_standin):
    standin = start_standin(
        seed=4, streams={"rsvps": StreamConfig(rate=None, backlog=50, max_items=10)}
    )

    with RawStream(standin.port, "/2/rsvps") as stream:
        live = stream.items(10)
        assert stream.is_quiet()
    with RawStream(standin.port, "/2/rsvps?since_count=10") as stream:
        assert stream.items(10) == live


def test_since_mtime_and_since_count_together_are_refused(start_standin):
    standin = start_standin()

    with RawStream(standin.port, "/2/rsvps?since_mtime=1&since_count=2") as stream:
        assert stream.status == 400
        assert "cannot be combined" in stream.json()["details"]


def test_event_id_keeps_one_event(start_standin):
    standin = start_standin(
        seed=4, streams={"rsvps": StreamConfig(backlog=HISTORY, max_items=0)}
    )
    history = _history(standin)
    event_id = history[10]["event"]["event_id"]
    expected = [item for item in history if item["event"]["event_id"] == event_id]

    path = f"/2/rsvps?since_count={HISTORY}&event_id={event_id}"
    with RawStream(standin.port, path) as stream:
        assert stream.items(len(expected)) == expected
        assert stream.is_quiet()
