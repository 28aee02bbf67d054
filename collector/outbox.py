"""The outbox: every item read is appended here before anything else happens.

Layout, per stream label, under STATE/outbox/<label>/:

    000000000041.ready   sealed segments: whole chunks, waiting to be sent
    000000000042.open    the segment being appended to

A segment is one chunk: it is sealed (fsynced, renamed to .ready) as soon as it
reaches the chunk limits in items or bytes, or its first item reaches the chunk
age limit. The sender posts a sealed segment and deletes it once the function
has acknowledged it, so whatever is on disk is exactly what is not acknowledged.
After a crash every segment left is sent again (a partly written .open one is
sealed as it is); duplicates are harmless, storage is create-only.

Each record is one line: "<crc32 hex> <mtime or -> <raw item bytes>\\n". The
checksum covers the mtime and the item, so a torn or garbled line (a crash in
the middle of a write, a power cut with fsync off) is detected and skipped.
Segment sequence numbers only grow, so which segments wait to be sent is a range
of numbers, not a list: memory does not grow with the backlog.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from collector.statefiles import fsync_directory

logger = logging.getLogger(__name__)

FsyncPolicy = Literal["always", "interval", "never"]
OPEN_SUFFIX = ".open"
READY_SUFFIX = ".ready"


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    mtime: int | None
    raw: bytes

    @property
    def body_bytes(self) -> int:
        """The bytes this item adds to a request body (raw + newline)."""
        return len(self.raw) + 1


@dataclass(frozen=True, slots=True)
class ChunkLimits:
    max_items: int
    max_bytes: int
    max_age_seconds: float


@dataclass(frozen=True, slots=True)
class SealedSegment:
    label: str
    seq: int
    path: Path


def encode_record(record: OutboxRecord) -> bytes:
    mtime = b"-" if record.mtime is None else str(record.mtime).encode("ascii")
    if b"\n" in record.raw:
        raise ValueError("an outbox record cannot contain a newline")

    body = mtime + b" " + record.raw
    return b"%08x %s\n" % (zlib.crc32(body), body)


def decode_records(data: bytes) -> tuple[list[OutboxRecord], int]:
    """The records in a segment's bytes, and how many lines were damaged."""
    records: list[OutboxRecord] = []
    damaged = 0
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif lines:
        # No newline at the very end: the last write was torn.
        lines.pop()
        damaged += 1

    for line in lines:
        record = _decode_line(line)
        if record is None:
            damaged += 1
        else:
            records.append(record)
    return records, damaged


def _decode_line(line: bytes) -> OutboxRecord | None:
    checksum, _, body = line.partition(b" ")
    try:
        expected = int(checksum, 16)
    except ValueError:
        return None
    if len(checksum) != 8 or zlib.crc32(body) != expected:
        return None

    mtime_text, _, raw = body.partition(b" ")
    if mtime_text == b"-":
        return OutboxRecord(None, raw)
    try:
        return OutboxRecord(int(mtime_text), raw)
    except ValueError:
        return None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class _OpenSegment:
    def __init__(self, seq: int, path: Path, opened_at: float) -> None:
        self.seq = seq
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.opened_at = opened_at
        self.items = 0
        self.body_bytes = 0
        self.unsynced = False


class LabelOutbox:
    """The outbox of one stream label; safe to use from several threads."""

    def __init__(
        self,
        directory: Path,
        label: str,
        limits: ChunkLimits,
        fsync: FsyncPolicy = "interval",
        clock: Callable[[], float] = time.monotonic,
        on_sealed: Callable[[], None] | None = None,
    ) -> None:
        self.label = label
        self.directory = directory
        self._limits = limits
        self._fsync = fsync
        self._clock = clock
        self._on_sealed = on_sealed
        self._lock = threading.Lock()
        self._open: _OpenSegment | None = None
        self._next_seq = 0
        self._next_ready_seq = 0
        self._given_back: deque[int] = deque()
        self._closed = False
        self.depth_items = 0
        self.damaged_lines = 0
        self.recovered_max_mtime: int | None = None
        self.directory.mkdir(parents=True, exist_ok=True)
        self._recover()

    def _recover(self) -> None:
        ready, unsealed = [], []
        for path in self.directory.iterdir():
            seq = _segment_seq(path)
            if seq is None:
                continue
            if path.suffix == OPEN_SUFFIX:
                unsealed.append((seq, path))
            else:
                ready.append(seq)

        for seq, path in unsealed:
            # A crash left this segment open; whatever it holds goes out as is.
            if self._fsync != "never":
                with open(path, "rb+") as stream:
                    os.fsync(stream.fileno())
            os.replace(path, path.with_suffix(READY_SUFFIX))
            ready.append(seq)
        if unsealed and self._fsync != "never":
            fsync_directory(self.directory)

        for seq in ready:
            records, _ = decode_records(self._ready_path(seq).read_bytes())
            self.depth_items += len(records)
            for record in records:
                if record.mtime is not None and (
                    self.recovered_max_mtime is None
                    or record.mtime > self.recovered_max_mtime
                ):
                    self.recovered_max_mtime = record.mtime
        if ready:
            self._next_ready_seq = min(ready)
            self._next_seq = max(ready) + 1
            logger.info(
                "outbox %s: %d unacknowledged segments (%d items) from an earlier "
                "run will be sent again",
                self.label,
                len(ready),
                self.depth_items,
            )

    def append(self, records: Iterable[OutboxRecord]) -> None:
        """Write records at the end of the outbox, sealing chunks as they fill."""
        sealed = False
        with self._lock:
            if self._closed:
                raise RuntimeError(f"outbox {self.label} is closed")

            pending = bytearray()
            for record in records:
                segment = self._open
                if segment is not None and (
                    segment.body_bytes + record.body_bytes > self._limits.max_bytes
                    and segment.items > 0
                ):
                    self._write(segment, pending)
                    pending.clear()
                    self._seal_locked()
                    sealed = True
                    segment = None
                if segment is None:
                    segment = self._start_segment()

                pending += encode_record(record)
                segment.items += 1
                segment.body_bytes += record.body_bytes
                self.depth_items += 1
                if segment.items >= self._limits.max_items:
                    self._write(segment, pending)
                    pending.clear()
                    self._seal_locked()
                    sealed = True

            if pending and self._open is not None:
                self._write(self._open, pending)

        if sealed and self._on_sealed:
            self._on_sealed()

    def seal_if_due(self, now: float | None = None) -> bool:
        """Seal the open segment once its first item is max_age_seconds old."""
        with self._lock:
            segment = self._open
            now = self._clock() if now is None else now
            due = (
                segment is not None
                and segment.items > 0
                and now - segment.opened_at >= self._limits.max_age_seconds
            )
            if due:
                self._seal_locked()

        if due and self._on_sealed:
            self._on_sealed()
        return due

    def seal(self) -> None:
        """Seal the open segment now (on shutdown)."""
        with self._lock:
            sealed = self._open is not None and self._open.items > 0
            if sealed:
                self._seal_locked()

        if sealed and self._on_sealed:
            self._on_sealed()

    def sync(self) -> None:
        """fsync the open segment if it has unsynced writes (fsync "interval")."""
        with self._lock:
            segment = self._open
            if segment is not None and segment.unsynced:
                os.fsync(segment.fd)
                segment.unsynced = False

    def take(self) -> SealedSegment | None:
        """The oldest sealed segment not handed out yet, or None."""
        with self._lock:
            if self._given_back:
                seq = self._given_back.popleft()
                return SealedSegment(self.label, seq, self._ready_path(seq))

            sealed_below = self._open.seq if self._open else self._next_seq
            while self._next_ready_seq < sealed_below:
                seq = self._next_ready_seq
                self._next_ready_seq += 1
                path = self._ready_path(seq)
                if path.exists():
                    return SealedSegment(self.label, seq, path)
            return None

    def has_ready(self) -> bool:
        """Whether take() may still hand out a sealed segment."""
        with self._lock:
            sealed_below = self._open.seq if self._open else self._next_seq
            return bool(self._given_back) or self._next_ready_seq < sealed_below

    def give_back(self, segment: SealedSegment) -> None:
        """Return a segment that could not be sent now; take() hands it out again."""
        with self._lock:
            self._given_back.append(segment.seq)

    def read(self, segment: SealedSegment) -> list[OutboxRecord]:
        records, damaged = decode_records(segment.path.read_bytes())
        if damaged:
            with self._lock:
                self.damaged_lines += damaged
            logger.warning(
                "outbox %s segment %d: skipped %d damaged lines (torn write?)",
                self.label,
                segment.seq,
                damaged,
            )
        return records

    def acknowledge(self, segment: SealedSegment, items: int) -> None:
        """The function took every item of segment (or they were set aside)."""
        segment.path.unlink(missing_ok=True)
        with self._lock:
            self.depth_items = max(self.depth_items - items, 0)

    def close(self) -> None:
        """Seal what is open and refuse further appends."""
        self.seal()
        with self._lock:
            self._closed = True

    @property
    def has_open_items(self) -> bool:
        with self._lock:
            return self._open is not None and self._open.items > 0

    def _start_segment(self) -> _OpenSegment:
        seq = self._next_seq
        self._next_seq += 1
        path = self.directory / f"{seq:012d}{OPEN_SUFFIX}"
        self._open = _OpenSegment(seq, path, self._clock())
        return self._open

    def _write(self, segment: _OpenSegment, data: bytearray) -> None:
        if not data:
            return

        _write_all(segment.fd, bytes(data))
        if self._fsync == "always":
            os.fsync(segment.fd)
        else:
            segment.unsynced = True

    def _seal_locked(self) -> None:
        segment = self._open
        if segment is None:
            return

        self._open = None
        if self._fsync != "never" and (segment.unsynced or self._fsync == "always"):
            os.fsync(segment.fd)
        os.close(segment.fd)
        os.replace(segment.path, self._ready_path(segment.seq))
        if self._fsync != "never":
            fsync_directory(self.directory)
        logger.debug(
            "outbox %s: sealed segment %d (%d items, %d bytes)",
            self.label,
            segment.seq,
            segment.items,
            segment.body_bytes,
        )

    def _ready_path(self, seq: int) -> Path:
        return self.directory / f"{seq:012d}{READY_SUFFIX}"


def _segment_seq(path: Path) -> int | None:
    if path.suffix not in (OPEN_SUFFIX, READY_SUFFIX) or not path.stem.isdigit():
        return None
    return int(path.stem)


class Outbox:
    """The outboxes of all stream labels, and the hand-out of sealed chunks to
    the sender's workers, fairly across labels."""

    def __init__(
        self,
        directory: Path,
        labels: Iterable[str],
        limits: ChunkLimits,
        fsync: FsyncPolicy = "interval",
        fsync_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ready = threading.Condition()
        self._clock = clock
        self._fsync = fsync
        self._fsync_interval = fsync_interval
        self._synced_at = clock()
        self.labels: dict[str, LabelOutbox] = {
            label: LabelOutbox(
                directory / label,
                label,
                limits,
                fsync,
                clock,
                on_sealed=self._notify_sealed,
            )
            for label in labels
        }
        self._turn = 0

    def __getitem__(self, label: str) -> LabelOutbox:
        return self.labels[label]

    def append(self, label: str, records: Iterable[OutboxRecord]) -> None:
        self.labels[label].append(records)

    def take(self, timeout: float | None = None) -> SealedSegment | None:
        """The next sealed segment, waiting up to timeout seconds for one."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._ready:
            while True:
                segment = self._take_round_robin()
                if segment is not None:
                    return segment

                remaining = None if deadline is None else deadline - self._clock()
                if remaining is not None and remaining <= 0:
                    return None
                self._ready.wait(remaining)

    def has_ready(self) -> bool:
        return any(outbox.has_ready() for outbox in self.labels.values())

    def give_back(self, segment: SealedSegment) -> None:
        self.labels[segment.label].give_back(segment)
        self._notify_sealed()

    def housekeeping(self, now: float | None = None) -> None:
        """Seal chunks that reached their age limit; fsync on the interval."""
        now = self._clock() if now is None else now
        for outbox in self.labels.values():
            outbox.seal_if_due(now)

        if self._fsync == "interval" and now - self._synced_at >= self._fsync_interval:
            for outbox in self.labels.values():
                outbox.sync()
            self._synced_at = now

    def seal_all(self) -> None:
        for outbox in self.labels.values():
            outbox.seal()

    def close(self) -> None:
        for outbox in self.labels.values():
            outbox.close()

    def depth_items(self) -> dict[str, int]:
        return {label: outbox.depth_items for label, outbox in self.labels.items()}

    def _take_round_robin(self) -> SealedSegment | None:
        outboxes = list(self.labels.values())
        for offset in range(len(outboxes)):
            outbox = outboxes[(self._turn + offset) % len(outboxes)]
            segment = outbox.take()
            if segment is not None:
                self._turn = (self._turn + offset + 1) % len(outboxes)
                return segment
        return None

    def _notify_sealed(self) -> None:
        with self._ready:
            self._ready.notify_all()
