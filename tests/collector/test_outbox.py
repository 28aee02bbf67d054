"""The outbox: append, chunks cut by count, bytes and age, hand-out and
acknowledgement, and recovery after a crash (torn writes included)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from collector.outbox import (
    ChunkLimits,
    LabelOutbox,
    Outbox,
    OutboxRecord,
    decode_records,
    encode_record,
)

ROOT = Path(__file__).resolve().parents[2]
LIMITS = ChunkLimits(max_items=3, max_bytes=1000, max_age_seconds=5.0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def records(count: int, start: int = 0) -> list[OutboxRecord]:
    return [
        OutboxRecord(1_000 + n, b'{"rsvp_id": %d, "mtime": %d}' % (n, 1_000 + n))
        for n in range(start, start + count)
    ]


def take_all(outbox: LabelOutbox) -> list[list[OutboxRecord]]:
    chunks = []
    while (segment := outbox.take()) is not None:
        chunks.append(outbox.read(segment))
    return chunks


def test_a_record_round_trips_with_its_checksum() -> None:
    record = OutboxRecord(1526781579178, b'{"a": "https:\\/\\/x"}')

    line = encode_record(record)

    assert line.endswith(b"\n")
    assert decode_records(line) == ([record], 0)
    assert decode_records(encode_record(OutboxRecord(None, b"{}"))) == (
        [OutboxRecord(None, b"{}")],
        0,
    )


def test_damaged_and_torn_lines_are_skipped_and_counted() -> None:
    good = encode_record(OutboxRecord(1, b'{"id": 1}'))
    flipped = bytearray(encode_record(OutboxRecord(2, b'{"id": 2}')))
    flipped[-3] ^= 0x01
    torn = encode_record(OutboxRecord(3, b'{"id": 3}'))[:-4]

    found, damaged = decode_records(good + bytes(flipped) + b"\0\0\0\n" + good + torn)

    assert found == [OutboxRecord(1, b'{"id": 1}')] * 2
    assert damaged == 3


def test_chunks_are_cut_by_count(tmp_path: Path) -> None:
    outbox = LabelOutbox(tmp_path, "rsvps", LIMITS, fsync="never")

    outbox.append(records(7))

    assert take_all(outbox) == [records(3), records(3, 3)]
    assert outbox.has_open_items
    assert outbox.depth_items == 7


def test_chunks_are_cut_by_bytes_and_a_big_item_goes_alone(tmp_path: Path) -> None:
    limits = ChunkLimits(max_items=100, max_bytes=100, max_age_seconds=5.0)
    outbox = LabelOutbox(tmp_path, "rsvps", limits, fsync="never")
    small = [OutboxRecord(n, b"x" * 39) for n in range(3)]  # 40 bytes each in a body
    big = OutboxRecord(9, b"y" * 300)

    outbox.append([*small, big, small[0]])
    outbox.seal()

    assert take_all(outbox) == [small[:2], small[2:], [big], [small[0]]]


def test_chunks_are_cut_by_age_of_their_first_item(tmp_path: Path) -> None:
    clock = FakeClock()
    outbox = LabelOutbox(tmp_path, "rsvps", LIMITS, fsync="never", clock=clock)
    outbox.append(records(1))
    clock.now += 4.9
    outbox.append(records(1, 1))

    assert not outbox.seal_if_due()
    clock.now += 0.1
    assert outbox.seal_if_due()
    assert take_all(outbox) == [records(2)]


def test_acknowledged_segments_are_deleted_and_unacknowledged_come_back(
    tmp_path: Path,
) -> None:
    outbox = LabelOutbox(tmp_path, "rsvps", LIMITS, fsync="never")
    outbox.append(records(9))
    first, second, third = outbox.take(), outbox.take(), outbox.take()

    outbox.acknowledge(first, 3)
    outbox.give_back(second)

    assert not first.path.exists()
    assert outbox.take() == second
    assert outbox.take() is None
    assert outbox.depth_items == 6
    assert third.path.exists()


def test_a_restart_sends_again_everything_not_acknowledged(tmp_path: Path) -> None:
    outbox = LabelOutbox(tmp_path, "rsvps", LIMITS, fsync="interval")
    outbox.append(records(8))  # two sealed chunks and two items in an open one
    outbox.acknowledge(outbox.take(), 3)
    outbox.take()  # taken but not acknowledged when the process dies

    again = LabelOutbox(tmp_path, "rsvps", LIMITS, fsync="interval")

    assert again.depth_items == 5
    assert take_all(again) == [records(3, 3), records(2, 6)]
    again.append(records(1, 8))
    again.seal()
    assert take_all(again) == [records(1, 8)]


def test_a_torn_last_write_costs_only_the_torn_item(tmp_path: Path) -> None:
    outbox = LabelOutbox(tmp_path, "rsvps", LIMITS, fsync="never")
    outbox.append(records(2))
    (open_segment,) = tmp_path.glob("*.open")
    with open(open_segment, "ab") as stream:
        stream.write(encode_record(records(1, 2)[0])[:10])

    again = LabelOutbox(tmp_path, "rsvps", LIMITS, fsync="never")
    (segment,) = [again.take()]

    assert again.read(segment) == records(2)
    assert again.damaged_lines == 1


APPENDER = """
import sys
from pathlib import Path
from collector.outbox import ChunkLimits, LabelOutbox, OutboxRecord
outbox = LabelOutbox(Path(sys.argv[1]), "rsvps", ChunkLimits(50, 10**6, 60.0),
                     fsync="never")
n = 0
while True:
    outbox.append([OutboxRecord(n, b'{"rsvp_id": %d}' % n)])
    if n == 2000:
        print("ready", flush=True)
    n += 1
"""


def test_after_sigkill_every_item_written_is_recovered_intact(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", APPENDER, str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "ready"

    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    process.stdout.close()
    outbox = LabelOutbox(tmp_path, "rsvps", LIMITS, fsync="never")
    recovered = [record for chunk in take_all(outbox) for record in chunk]

    ids = [record.mtime for record in recovered]
    assert len(ids) > 2000
    assert ids == list(range(len(ids)))  # no gap, no damage, in order
    assert all(record.raw == b'{"rsvp_id": %d}' % record.mtime for record in recovered)
    assert not list(tmp_path.glob("*.open"))


def test_the_outbox_hands_chunks_out_fairly_across_labels(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path, ["rsvps", "photos"], LIMITS, fsync="never")
    outbox.append("rsvps", records(9))
    outbox.append("photos", records(3))

    labels = [outbox.take(timeout=0).label for _ in range(4)]

    assert labels == ["rsvps", "photos", "rsvps", "rsvps"]
    assert outbox.take(timeout=0) is None
    assert not outbox.has_ready()


def test_housekeeping_seals_aged_chunks_for_every_label(tmp_path: Path) -> None:
    clock = FakeClock()
    outbox = Outbox(
        tmp_path, ["rsvps", "photos"], LIMITS, fsync="interval", clock=clock
    )
    outbox.append("photos", records(1))

    clock.now += 5.0
    outbox.housekeeping()

    segment = outbox.take(timeout=0)
    assert segment.label == "photos"
    assert outbox["photos"].read(segment) == records(1)


@pytest.mark.parametrize("policy", ["always", "interval", "never"])
def test_every_fsync_policy_keeps_the_records(tmp_path: Path, policy: str) -> None:
    outbox = LabelOutbox(tmp_path, "rsvps", LIMITS, fsync=policy)

    outbox.append(records(4))
    outbox.sync()
    outbox.close()

    assert take_all(LabelOutbox(tmp_path, "rsvps", LIMITS, fsync=policy)) == [
        records(3),
        records(1, 3),
    ]
    with pytest.raises(RuntimeError, match="closed"):
        outbox.append(records(1))


def test_the_checksum_is_crc32_of_mtime_and_item() -> None:
    line = encode_record(OutboxRecord(5, b"{}"))

    assert line == b"%08x 5 {}\n" % zlib.crc32(b"5 {}")
