"""One stream's single history, which every connection to the stream reads.

Items 0 .. head-1 exist; the head moves on at the stream's rate (or, with no
rate, as far as the fastest reader asks), stops for a while when the stream goes
silent, and stops for good at the stream's cap. A connection starts at the head
("live"), or earlier for since_count and since_mtime, and reads on from there, so
two connections, or a reconnect, see the same items.

Nothing per item is kept but one byte: whether the item was ever written to a
client (for StandIn.served). The items themselves are rebuilt from the source.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from standin.config import StreamConfig
from standin.items import BLOCK_SIZE, Block, ItemSource

_SERVED = b"\x01" * BLOCK_SIZE


class Timeline:
    def __init__(
        self,
        label: str,
        source: ItemSource,
        config: StreamConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.source = source
        self.config = config
        self._clock = clock
        self._lock = threading.Lock()
        start = config.backlog
        if source.length is not None:
            start = min(start, source.length)
        self.start = start
        self._head = start
        self._credit = 0.0  # items due but not yet generated (with a rate)
        self._counted_until = clock()  # production counts from here; later: silent
        self.silences = 0
        self._served = bytearray(start)

    def restart_clock(self) -> None:
        """Count production from now (the stand-in has just started serving)."""
        with self._lock:
            self._counted_until = self._clock()
            self._credit = 0.0

    @property
    def rate(self) -> float | None:
        return self.config.rate

    def _cap(self) -> int | None:
        cap = None
        if self.config.max_items is not None:
            cap = self.start + self.config.max_items
        if self.source.length is not None:
            cap = self.source.length if cap is None else min(cap, self.source.length)
        return cap

    def _next_silence(self, head: int) -> int | None:
        every = self.config.silent_every
        if not every or self.config.silent_seconds <= 0:
            return None
        new_items = head - self.start
        return self.start + (new_items // every + 1) * every

    def advance(self, wanted: int | None = None) -> int:
        """Generate what is due by now; with no rate, up to `wanted`. The head."""
        with self._lock:
            now = self._clock()
            head = self._head
            if now < self._counted_until:
                return head  # silent

            rate = self.config.rate
            if rate is not None:
                self._credit += (now - self._counted_until) * rate
                self._counted_until = now
                target = head + int(self._credit)
            else:
                target = max(head, wanted or head)

            cap = self._cap()
            if cap is not None and target >= cap:
                target = max(head, cap)
                self._credit = 0.0
            boundary = self._next_silence(head)
            if boundary is not None and target >= boundary:
                target = boundary
                self._credit = 0.0
                self._counted_until = now + self.config.silent_seconds
                self.silences += 1
            elif rate is not None:
                self._credit -= target - head

            if target > head:
                self._served.extend(bytes(target - head))
                self._head = target
            return target

    def head(self) -> int:
        return self.advance()

    def seconds_to_next(self) -> float | None:
        """How long until the head can move again; None once the cap is reached."""
        with self._lock:
            cap = self._cap()
            if cap is not None and self._head >= cap:
                return None

            now = self._clock()
            if now < self._counted_until:
                return self._counted_until - now
            rate = self.config.rate
            if rate is None:
                return 0.0
            credit = self._credit + (now - self._counted_until) * rate
            return max(0.0, (1.0 - credit) / rate)

    # TODO: item mtimes follow the nominal rate (epoch + i / rate), so after a
    # silent stretch they lag the wall clock by its length; nothing depends on
    # mtime being close to "now", and the seed stays deterministic this way.
    def silence_for(self, seconds: float) -> None:
        """Generate nothing for `seconds` from now (a one-off silent stretch)."""
        with self._lock:
            now = self._clock()
            if self.config.rate is not None and now > self._counted_until:
                self._credit += (now - self._counted_until) * self.config.rate
            self._counted_until = max(self._counted_until, now + seconds)
            self.silences += 1

    def live_position(self) -> int:
        return self.advance()

    def since_count_position(self, count: int) -> int:
        return max(0, self.advance() - count)

    def since_mtime_position(self, mtime_ms: int) -> tuple[int, int]:
        """Where to start for since_mtime, and where the history ends (the head)."""
        head = self.advance()
        return min(head, self.source.first_index_after(mtime_ms)), head

    def block(self, number: int) -> Block:
        return self.source.block(number)

    def mark_served(self, first: int, end: int) -> None:
        """Items first .. end-1 were written to a client (end - first <= a block)."""
        self._served[first:end] = _SERVED[: end - first]

    def served_count(self) -> int:
        return self._served.count(1)

    def served_versions(self) -> set[tuple[Any, int | None]]:
        return _versions(self.source, self._served)

    @property
    def generated(self) -> int:
        return self._head - self.start


class TableTimeline:
    """The venue table of ?trickle: all there from the start, never growing."""

    def __init__(self, source: ItemSource) -> None:
        self.source = source
        self.length = source.length or 0
        self._served = bytearray(self.length)

    def block(self, number: int) -> Block:
        return self.source.block(number)

    def mark_served(self, first: int, end: int) -> None:
        self._served[first:end] = _SERVED[: end - first]

    def served_versions(self) -> set[tuple[Any, int | None]]:
        return _versions(self.source, self._served)


def _versions(source: ItemSource, served: bytearray) -> set[tuple[Any, int | None]]:
    versions: set[tuple[Any, int | None]] = set()
    for first in range(0, len(served), BLOCK_SIZE):
        flags = served[first : first + BLOCK_SIZE]
        if 1 not in flags:
            continue

        block = source.block(first // BLOCK_SIZE)
        for slot, flag in enumerate(flags):
            if flag:
                versions.add((block.item_ids[slot], block.mtimes[slot]))
    return versions
