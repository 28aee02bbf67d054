"""Serving one stream connection: chunked items from a timeline, with faults.

The response is HTTP/1.1 200 with Transfer-Encoding: chunked and never ends on
its own; each chunk is one item's JSON and a newline. Items go out straight from
the pre-framed blocks of the source, a whole run of a block per socket write, so
the per-item cost on this path is nil. Faults (see StreamConfig) are checked
between runs: a run never goes past the next item at which a fault is due.

Counters are kept per stream; the connection cap per client address is kept
across streams (meetup.com allowed 10).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import select
import socket
import threading
import time
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from standin.items import BLOCK_SIZE, Block
from standin.timeline import TableTimeline, Timeline

logger = logging.getLogger(__name__)

MAX_IDLE_S = 0.25  # a waiting connection looks at its client and faults this often
MIN_WAIT_S = 0.002  # at high rates, gather a few items per write
MALFORMED_LINE = b'{"mtime":1526781579178,"response":"ye\n'
END_OF_STREAM = b"0\r\n\r\n"


@dataclass
class StreamRequest:
    """What the client asked for in the query string."""

    since_mtime: int | None = None
    since_count: int | None = None
    trickle: bool = False
    event_id: str | None = None


@dataclass
class StreamCounters:
    items_served: int = 0
    connections_open: int = 0
    connections_total: int = 0
    refused_over_cap: int = 0
    refused_503: int = 0
    dropped: int = 0
    truncated: int = 0
    stalls: int = 0
    malformed_lines: int = 0
    trickles: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str, amount: int = 1) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + amount)

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return {
                name: value
                for name, value in vars(self).items()
                if isinstance(value, int)
            }


class ConnectionCap:
    """At most `limit` open stream connections per client address."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.refused = 0

    def acquire(self, address: str) -> bool:
        with self._lock:
            if self._open[address] >= self.limit:
                self.refused += 1
                return False
            self._open[address] += 1
            return True

    def release(self, address: str) -> None:
        with self._lock:
            self._open[address] -= 1
            if self._open[address] <= 0:
                del self._open[address]

    def open_connections(self) -> int:
        with self._lock:
            return sum(self._open.values())


class _ClientGone(Exception):
    """The client closed the connection, or the stand-in is stopping."""


class _Ended(Exception):
    """A fault ends the connection cleanly (the last chunk is sent)."""


class _Truncated(Exception):
    """A fault cut a chunk in half; the connection is to be closed as it is."""


class StreamSession:
    """One client reading one stream, from its start position on, forever."""

    def __init__(
        self,
        sock: socket.socket,
        timeline: Timeline,
        table: TableTimeline | None,
        request: StreamRequest,
        counters: StreamCounters,
        stopping: threading.Event,
        rng: random.Random,
    ) -> None:
        self._sock = sock
        self._timeline = timeline
        self._table = table
        self._request = request
        self._counters = counters
        self._stopping = stopping
        self._rng = rng
        self.sent = 0  # items written on this connection
        self._malformed_at = 0
        self._stalled = False
        self._drop_probability = 0.0
        self._drop_at: int | None = None

    def run(self) -> str:
        """Serve until the client leaves, a fault ends it, or the stand-in stops.

        Returns how it ended: "gone", "dropped" or "truncated".
        """
        start, history_end = self._start_position()
        try:
            if self._request.trickle and self._table is not None:
                self._counters.add("trickles")
                self._pump_table()
            self._pump_timeline(start, history_end)
        except _Ended:
            self._counters.add("dropped")
            with contextlib.suppress(OSError):
                self._sock.sendall(END_OF_STREAM)
            return "dropped"
        except _Truncated:
            self._counters.add("truncated")
            return "truncated"
        except _ClientGone:
            return "gone"
        return "gone"

    def _start_position(self) -> tuple[int, int]:
        request = self._request
        if request.since_count is not None:
            start = self._timeline.since_count_position(request.since_count)
            return start, start
        if request.since_mtime is not None:
            return self._timeline.since_mtime_position(request.since_mtime)
        start = self._timeline.live_position()
        return start, start

    # pumps

    def _pump_table(self) -> None:
        table = self._table
        assert table is not None
        position = 0
        while position < table.length:
            room = self._room()
            block = table.block(position // BLOCK_SIZE)
            slot = position - block.first
            if room == 0:
                self._truncate(block, slot)
            end = min(len(block.item_ids), slot + room)
            self._send_run(block, slot, end, table.mark_served)
            position = block.first + end
            pause = self._timeline.config.trickle_pause_s
            if pause > 0 and position % BLOCK_SIZE == 0 and position < table.length:
                self._pause(pause)

    def _pump_timeline(self, position: int, history_end: int) -> None:
        timeline = self._timeline
        request = self._request
        pulled = timeline.rate is None
        while True:
            if self._stopping.is_set():
                raise _ClientGone

            room = self._room()
            wanted = None
            if pulled:
                wanted = position + max(
                    1, min(room, BLOCK_SIZE - position % BLOCK_SIZE)
                )
            head = timeline.advance(wanted)
            if position >= head:
                wait = timeline.seconds_to_next()
                wait = MAX_IDLE_S if wait is None else min(wait, MAX_IDLE_S)
                self._pause(max(wait, MIN_WAIT_S))
                continue

            block = timeline.block(position // BLOCK_SIZE)
            slot = position - block.first
            if room == 0:
                self._truncate(block, slot)
            end = min(head - block.first, len(block.item_ids), slot + room)
            filtering_history = (
                request.since_mtime is not None and position < history_end
            )
            if filtering_history:
                end = min(end, history_end - block.first)
            if filtering_history or request.event_id is not None:
                end = self._send_selected(block, slot, end, room, history_end)
            else:
                self._send_run(block, slot, end, timeline.mark_served)
            position = block.first + end

    # faults

    def _room(self) -> int:
        """Apply any fault due now; how many items may go before the next one.

        0 means: truncate the next item now.
        """
        config = self._timeline.config
        sent = self.sent
        limits = [1 << 60]

        every = config.malformed_every
        if every:
            if sent > 0 and sent % every == 0 and self._malformed_at != sent:
                self._malformed_at = sent
                self._counters.add("malformed_lines")
                self._write(b"%x\r\n%b\r\n" % (len(MALFORMED_LINE), MALFORMED_LINE))
            limits.append((sent // every + 1) * every)

        if config.stall_after is not None and not self._stalled:
            if sent >= config.stall_after:
                self._stalled = True
                self._counters.add("stalls")
                logger.info(
                    "%s: stalling a connection for %.1f s after %d items",
                    self._timeline.label,
                    config.stall_seconds,
                    sent,
                )
                self._pause(config.stall_seconds)
            else:
                limits.append(config.stall_after)

        if config.truncate_after is not None:
            if sent >= config.truncate_after:
                return 0
            limits.append(config.truncate_after)

        if config.drop_probability != self._drop_probability:
            self._drop_probability = config.drop_probability
            self._drop_at = self._draw_drop_point(sent, config.drop_probability)
        for drop_at in (config.drop_after, self._drop_at):
            if drop_at is not None:
                if sent >= drop_at:
                    raise _Ended
                limits.append(drop_at)

        return min(limits) - sent

    def _draw_drop_point(self, sent: int, probability: float) -> int | None:
        """After how many items a connection ends, each item ending it with p."""
        if probability <= 0.0:
            return None
        if probability >= 1.0:
            return sent + 1
        survive = 1.0 - self._rng.random()
        return sent + 1 + int(math.log(survive) / math.log(1.0 - probability))

    def _truncate(self, block: Block, slot: int) -> None:
        frame = block.frames[block.offsets[slot] : block.offsets[slot + 1]]
        header_end = frame.index(b"\r\n") + 2
        payload = frame[header_end:-2]
        self._write(frame[:header_end] + payload[: len(payload) // 2])
        logger.info("%s: truncated a chunk and closing", self._timeline.label)
        raise _Truncated

    # writing

    def _send_run(
        self, block: Block, slot: int, end: int, mark: Callable[[int, int], None]
    ) -> None:
        """Write items slot .. end-1 of the block with as few sends as possible."""
        offsets = block.offsets
        view = memoryview(block.frames)[offsets[slot] : offsets[end]]
        written = self._send(view)
        complete = end - slot
        if written < len(view):
            complete = bisect_right(offsets, offsets[slot] + written, slot, end + 1)
            complete -= slot + 1
        if complete > 0:
            mark(block.first + slot, block.first + slot + complete)
            self.sent += complete
            self._counters.add("items_served", complete)
        if written < len(view):
            raise _ClientGone

    def _send_selected(
        self, block: Block, slot: int, end: int, room: int, history_end: int
    ) -> int:
        """Write the items of slot .. end-1 that pass the filters; where it stopped."""
        request = self._request
        since_mtime = request.since_mtime
        event_id = request.event_id
        chosen: list[int] = []
        position = slot
        while position < end and len(chosen) < room:
            keep = True
            if since_mtime is not None and block.first + position < history_end:
                mtime = block.mtimes[position]
                keep = mtime is not None and mtime > since_mtime
            if keep and event_id is not None:
                keep = (
                    block.event_ids is not None
                    and event_id in (block.event_ids[position])
                )
            if keep:
                chosen.append(position)
            position += 1
        if not chosen:
            return position

        offsets = block.offsets
        frames = [block.frames[offsets[k] : offsets[k + 1]] for k in chosen]
        data = b"".join(frames)
        written = self._send(memoryview(data))
        done = 0
        for k, frame in zip(chosen, frames, strict=True):
            written -= len(frame)
            if written < 0:
                break
            self._timeline.mark_served(block.first + k, block.first + k + 1)
            done += 1
        self.sent += done
        self._counters.add("items_served", done)
        if done < len(chosen):
            raise _ClientGone
        return position

    def _send(self, view: memoryview) -> int:
        """Write as much of view as the client takes; the bytes written."""
        total = 0
        try:
            while total < len(view):
                total += self._sock.send(view[total:])
        except OSError:
            pass
        return total

    def _write(self, data: bytes) -> None:
        if self._send(memoryview(data)) < len(data):
            raise _ClientGone

    def _pause(self, seconds: float) -> None:
        """Send nothing for `seconds`, noticing a client that leaves meanwhile."""
        deadline = time.monotonic() + seconds
        while True:
            if self._stopping.is_set():
                raise _ClientGone
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                readable, _, _ = select.select(
                    [self._sock], [], [], min(max(left, MIN_WAIT_S), MAX_IDLE_S)
                )
                if readable and not self._sock.recv(4096):
                    raise _ClientGone
            except (OSError, ValueError):
                raise _ClientGone from None
