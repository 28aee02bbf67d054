"""Faults on demand: drops, stalls, broken lines, 503s, silence; at run time too."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from standin.server import StreamConfig
from tests.standin.helpers import EndOfStream, RawStream

FAST = {"rate": None, "max_items": 1000}


def _post_faults(standin, body):
    request = urllib.request.Request(
        f"{standin.url}/_standin/faults",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request) as answer:
        return json.load(answer)


def test_drop_after_ends_each_connection_cleanly(start_standin):
    standin = start_standin(streams={"rsvps": StreamConfig(**FAST, drop_after=5)})

    for _ in range(2):
        with RawStream(standin.port, "/2/rsvps") as stream:
            stream.items(5)
            with pytest.raises(EndOfStream):
                stream.next_chunk()
            assert stream.at_eof()

    assert standin.stats()["streams"]["rsvps"]["dropped"] == 2


def test_drop_probability_one_ends_after_one_item(start_standin):
    standin = start_standin(
        streams={"photos": StreamConfig(**FAST, drop_probability=1.0)}
    )

    with RawStream(standin.port, "/2/photos") as stream:
        stream.next_item()
        with pytest.raises(EndOfStream):
            stream.next_chunk()


def test_drop_probability_ends_connections_at_random(start_standin):
    standin = start_standin(
        streams={"photos": StreamConfig(**FAST, drop_probability=0.1)}
    )

    lengths = []
    for _ in range(3):
        with RawStream(standin.port, "/2/photos?since_count=1000") as stream:
            count = 0
            with pytest.raises(EndOfStream):
                while True:
                    stream.next_chunk()
                    count += 1
            lengths.append(count)

    assert all(1 <= length < 200 for length in lengths)


def test_a_stall_sends_nothing_and_keeps_the_socket_open(start_standin):
    standin = start_standin(
        streams={"rsvps": StreamConfig(**FAST, stall_after=3, stall_seconds=60)}
    )

    with RawStream(standin.port, "/2/rsvps") as stream:
        stream.items(3)
        assert stream.is_quiet()

    assert standin.stats()["streams"]["rsvps"]["stalls"] == 1


def test_a_stall_ends(start_standin):
    standin = start_standin(
        streams={"rsvps": StreamConfig(**FAST, stall_after=2, stall_seconds=0.1)}
    )

    with RawStream(standin.port, "/2/rsvps") as stream:
        assert len(stream.items(10)) == 10


def test_malformed_every_inserts_a_broken_line(start_standin):
    standin = start_standin(
        streams={"rsvps": StreamConfig(rate=None, max_items=8, malformed_every=4)}
    )

    with RawStream(standin.port, "/2/rsvps") as stream:
        payloads = stream.payloads(10)

    broken = []
    for position, payload in enumerate(payloads):
        assert payload.endswith(b"\n")
        try:
            json.loads(payload)
        except ValueError:
            broken.append(position)
    assert broken == [4, 9]
    assert len(standin.served("rsvps")) <= 8
    assert standin.stats()["streams"]["rsvps"]["malformed_lines"] == 2


def test_truncate_after_cuts_a_chunk_and_closes(start_standin):
    standin = start_standin(streams={"rsvps": StreamConfig(**FAST, truncate_after=3)})

    with RawStream(standin.port, "/2/rsvps") as stream:
        stream.items(3)
        size = int(stream.read_until(b"\r\n")[:-2], 16)
        assert stream.at_eof()
        assert 0 < len(stream.buffer) < size

    assert standin.stats()["streams"]["rsvps"]["truncated"] == 1


def test_connect_503_refuses_the_next_connects(start_standin):
    standin = start_standin(streams={"rsvps": StreamConfig(**FAST, connect_503=2)})

    statuses = []
    for _ in range(3):
        with RawStream(standin.port, "/2/rsvps") as stream:
            statuses.append(stream.status)

    assert statuses == [503, 503, 200]
    assert standin.stats()["streams"]["rsvps"]["refused_503"] == 2


def test_a_stream_goes_silent_after_every_n_items(start_standin):
    standin = start_standin(
        streams={"photos": StreamConfig(**FAST, silent_every=5, silent_seconds=60)}
    )

    with RawStream(standin.port, "/2/photos") as stream:
        stream.items(5)
        assert stream.is_quiet()

    stats = standin.stats()["streams"]["photos"]
    assert (stats["silences"], stats["generated"]) == (1, 5)


def test_silent_seconds_at_run_time_silences_a_stream_now(start_standin):
    standin = start_standin(streams={"photos": StreamConfig(**FAST)})

    standin.set_faults("photos", silent_seconds=60)

    with RawStream(standin.port, "/2/photos") as stream:
        assert stream.is_quiet()


def test_faults_change_on_an_open_connection(start_standin):
    standin = start_standin(streams={"rsvps": StreamConfig(rate=None)})

    with RawStream(standin.port, "/2/rsvps") as stream:
        stream.items(3)
        standin.set_faults("rsvps", drop_after=2000)
        with pytest.raises(EndOfStream):
            while True:
                stream.next_chunk()

    assert standin.stats()["streams"]["rsvps"]["dropped"] == 1


def test_faults_are_set_over_http(start_standin):
    standin = start_standin(streams={"rsvps": StreamConfig(**FAST)})

    faults = _post_faults(standin, {"rsvps": {"drop_after": 2}, "api": {}})
    assert faults["rsvps"]["drop_after"] == 2
    faults = _post_faults(standin, {"label": "rsvps", "connect_503": 1})
    assert faults["rsvps"]["connect_503"] == 1

    with RawStream(standin.port, "/2/rsvps") as stream:
        assert stream.status == 503
    with RawStream(standin.port, "/2/rsvps") as stream:
        stream.items(2)
        with pytest.raises(EndOfStream):
            stream.next_chunk()


@pytest.mark.parametrize(
    "body",
    [
        {"rsvps": {"drop_soon": 1}},
        {"rsvps": {"drop_after": -1}},
        {"nowhere": {"drop_after": 1}},
        {"api": {"drop_after": 1}},
        {"rsvps": {"drop_probability": 2}},
    ],
)
def test_bad_faults_are_refused(start_standin, body):
    standin = start_standin()

    with pytest.raises(urllib.error.HTTPError) as error:
        _post_faults(standin, body)

    assert error.value.code == 400
    assert standin.faults()["rsvps"]["drop_after"] is None


def test_by_default_streams_send_a_few_items_a_second_without_faults(
    start_standin,
):
    standin = start_standin()

    streams = standin.stats()["streams"]
    assert {s["rate"] for s in streams.values()} == {3.0}
    assert {s["max_items"] for s in streams.values()} == {None}
    faults = standin.faults()
    assert all(
        value in (None, 0, 0.0) for knobs in faults.values() for value in knobs.values()
    )
