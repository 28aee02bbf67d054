"""Where stream items come from: generated from the seeded world, or replayed.

A source hands out items in blocks of BLOCK_SIZE, each block already framed for
the wire: one HTTP chunk per item, the chunk holding the item's JSON and a
newline. A connection sends a whole run of a block with one socket write.

Generated item i depends on (seed, label, i) alone: block b draws its random
numbers from its own generator seeded with (seed, label, b), a fixed number per
item, so any block can be rebuilt at any time and nothing but a few recent
blocks needs to be kept. An item's mtime is the timeline's base time for i
(epoch + i / rate) minus what the quirks take off; it is never above the base
time, which is what lets since_mtime find its first item by arithmetic.
"""

from __future__ import annotations

import json
import math
import random
import threading
from collections import OrderedDict
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any

from standin import world as w
from standin.config import ID_FIELDS, Quirks

BLOCK_SIZE = 512  # also the size of open_venues' trickle batches
CACHED_BLOCKS = 16
FAST_NOMINAL_RATE = 1000.0  # mtime spacing of a stream with no rate: 1 ms

# Measured in 1,000 consecutive real RSVPs: 169 ids came twice; of the second
# copies 19 were exact, some changed response or guests, most only had their
# mtime rounded to whole seconds; 1 to 481 items apart, median 8. A dup's source
# must not be a dup itself, so the candidate share is a little above the result.
DUPLICATE_SHARE = 0.23
EXACT_COPY_SHARE = 0.11
CHANGED_SHARE = 0.15
BACKWARDS_SHARE = 0.07  # plus the rounded copies: about 16% of pairs go back
BACKWARDS_MAX_MS = 2500


@dataclass(slots=True)
class Block:
    """Items first .. first+len-1, framed; offsets[k] is where item k's chunk starts."""

    first: int
    frames: bytes
    offsets: list[int]
    item_ids: list[Any]
    mtimes: list[int | None]
    event_ids: list[tuple[str, ...]] | None  # for ?event_id=; None: no events

    @property
    def end(self) -> int:
        return self.first + len(self.item_ids)


def frame_block(
    first: int,
    lines: list[bytes],
    item_ids: list[Any],
    mtimes: list[int | None],
    event_ids: list[tuple[str, ...]] | None = None,
) -> Block:
    frames = [b"%x\r\n%b\n\r\n" % (len(line) + 1, line) for line in lines]
    offsets = [0, *accumulate(map(len, frames))]
    return Block(first, b"".join(frames), offsets, item_ids, mtimes, event_ids)


class ItemSource:
    """A numbered sequence of items; length None means endless."""

    label: str
    length: int | None = None

    def block(self, number: int) -> Block:
        raise NotImplementedError

    def first_index_after(self, mtime_ms: int) -> int:
        """An index such that every item before it has an mtime <= mtime_ms."""
        return 0


class _BlockCache:
    """The few most recently built blocks, each built once even when asked for
    by several connections at the same time."""

    def __init__(self, build: Any, size: int = CACHED_BLOCKS) -> None:
        self._build = build
        self._size = size
        self._blocks: OrderedDict[int, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, number: int) -> Any:
        block = self._blocks.get(number)  # the common case needs no lock
        if block is not None:
            return block

        with self._lock:
            block = self._blocks.get(number)
            if block is not None:
                return block

            block = self._blocks[number] = self._build(number)
            if len(self._blocks) > self._size:
                self._blocks.popitem(last=False)
            return block


class GeneratedSource(ItemSource):
    """Items made from the world; a subclass per stream says how."""

    DRAWS = 8  # random numbers per item; the last two are for backwards mtimes

    def __init__(
        self,
        label: str,
        world: w.World,
        quirks: Quirks,
        epoch_ms: int,
        rate: float | None,
        backlog: int,
    ) -> None:
        self.label = label
        self.world = world
        self.quirks = quirks
        self.epoch_ms = epoch_ms
        self.backlog = backlog
        self._escape = quirks.escaped_slashes
        self._spacing_us = max(1, round(1_000_000 / (rate or FAST_NOMINAL_RATE)))
        self._draws = _BlockCache(self._make_draws, size=CACHED_BLOCKS * 2)
        self._blocks = _BlockCache(self._make_block)

    def base_mtime(self, index: int) -> int:
        return self.epoch_ms + (index - self.backlog) * self._spacing_us // 1000

    def first_index_after(self, mtime_ms: int) -> int:
        guess = self.backlog + (mtime_ms - self.epoch_ms) * 1000 // self._spacing_us
        index = max(0, guess - 1)
        while self.base_mtime(index) <= mtime_ms:
            index += 1
        return index

    def block(self, number: int) -> Block:
        return self._blocks.get(number)

    def _make_draws(self, number: int) -> list[float]:
        draw = random.Random(f"{self.world.seed}/{self.label}/{number}").random
        return [draw() for _ in range(self.DRAWS * BLOCK_SIZE)]

    def _draws_of(self, index: int) -> tuple[list[float], int]:
        """The block's random numbers and where item `index`'s start."""
        block_number, slot = divmod(index, BLOCK_SIZE)
        return self._draws.get(block_number), slot * self.DRAWS

    def _mtime(self, index: int, draws: list[float], at: int) -> int:
        mtime = self.base_mtime(index)
        k = at + self.DRAWS - 2
        if self.quirks.backwards_mtimes and draws[k] < BACKWARDS_SHARE:
            mtime -= 1 + int(draws[k + 1] * BACKWARDS_MAX_MS)
        return mtime

    def _make_block(self, number: int) -> Block:
        draws = self._draws.get(number)
        first = number * BLOCK_SIZE
        lines: list[bytes] = []
        item_ids: list[Any] = []
        mtimes: list[int | None] = []
        event_ids: list[tuple[str, ...]] = []
        for slot in range(BLOCK_SIZE):
            line, item_id, mtime, event_id = self._item(
                first + slot, draws, slot * self.DRAWS
            )
            lines.append(line)
            item_ids.append(item_id)
            mtimes.append(mtime)
            event_ids.append(event_id)
        return frame_block(first, lines, item_ids, mtimes, event_ids)

    def _item(
        self, index: int, draws: list[float], at: int
    ) -> tuple[bytes, Any, int, tuple[str, ...]]:
        """Item `index`: its JSON, id, mtime and (shown, numeric) event id."""
        raise NotImplementedError

    def _event(self, draw: float) -> tuple[w.Event, tuple[str, ...]]:
        event = self.world.event(int(draw * w.EVENT_COUNT))
        shown = self.world.event_shown_id(event, self.quirks.alphanumeric_ids)
        return event, (shown, str(event.numeric_id))


_RSVP = (
    b'{%b"visibility":"public","response":"%b","guests":%d,"member":%b,'
    b'"rsvp_id":%d,"mtime":%d,%b'
)
_MTIME, _RESPONSE, _GUESTS = 1, 5, 6  # positions in RsvpSource._original's list
_FLIPPED = {b"yes": b"no", b"no": b"yes", b"waitlist": b"yes"}


class RsvpSource(GeneratedSource):
    DRAWS = 12

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Fragments by small integer keys: the hottest lookups of the generator.
        self._venues: dict[int, bytes] = {}
        self._members: dict[int, bytes] = {}
        self._tails: dict[int, bytes] = {}

    def _item(
        self, index: int, draws: list[float], at: int
    ) -> tuple[bytes, Any, int, tuple[str, ...]]:
        source = self._duplicated(index, draws, at)
        if source is None:
            rsvp = self._original(index, draws, at)
        else:
            rsvp = self._original(source, *self._draws_of(source))
            kind = draws[at + 2]
            if kind < EXACT_COPY_SHARE:
                pass
            elif kind < EXACT_COPY_SHARE + CHANGED_SHARE:
                rsvp[_RESPONSE] = _FLIPPED[rsvp[_RESPONSE]]
                rsvp[_GUESTS] = int(draws[at + 6] * 3) if kind < 0.2 else 0
                rsvp[_MTIME] = self.base_mtime(index)
            else:
                rsvp[_MTIME] = rsvp[_MTIME] // 1000 * 1000

        rsvp_id, mtime, event, event_id, member, response, guests = rsvp[:7]
        with_venue, with_photo, with_time = rsvp[7:]
        line = _RSVP % (
            self._venue(event.venue_index) if with_venue else b"",
            response,
            guests,
            self._member(member, with_photo),
            rsvp_id,
            mtime,
            self._tail(event, with_time),
        )
        return line, rsvp_id, mtime, event_id

    def _venue(self, venue_index: int) -> bytes:
        venue = self._venues.get(venue_index)
        if venue is None:
            fragment = self.world.fragment(
                "rsvp_venue", venue_index, None, self._escape
            )
            venue = self._venues[venue_index] = b'"venue":%b,' % fragment
        return venue

    def _member(self, member_index: int, with_photo: bool) -> bytes:
        key = member_index * 2 + with_photo
        member = self._members.get(key)
        if member is None:
            member = self._members[key] = self.world.fragment(
                "rsvp_member", member_index, with_photo, self._escape
            )
        return member

    def _tail(self, event: w.Event, with_time: bool) -> bytes:
        key = event.index * 2 + with_time
        tail = self._tails.get(key)
        if tail is None:
            fragment = self.world.fragment
            variant = (with_time, self.quirks.alphanumeric_ids)
            tail = self._tails[key] = b'"event":%b,"group":%b}' % (
                fragment("rsvp_event", event.index, variant, self._escape),
                fragment("rsvp_group", event.group_index, None, self._escape),
            )
        return tail

    def _is_candidate(self, index: int) -> bool:
        draws, at = self._draws_of(index)
        return draws[at] < DUPLICATE_SHARE

    def _duplicated(self, index: int, draws: list[float], at: int) -> int | None:
        """The index of the item this one re-sends, or None for a new RSVP."""
        if not self.quirks.duplicates or draws[at] >= DUPLICATE_SHARE:
            return None

        spread = draws[at + 1]
        if spread < 0.95:
            gap = 1 + int(-math.log(1.0 - spread / 0.95) * 9.0)
        else:
            gap = 50 + int((spread - 0.95) / 0.05 * 431)
        source = index - min(gap, 481)
        if source < 0 or self._is_candidate(source):
            return None
        return source

    def _original(self, index: int, draws: list[float], at: int) -> list[Any]:
        """A new RSVP, as [id, mtime, event, event ids, member, response, guests,
        with_venue, with_photo, with_time]."""
        event, event_id = self._event(draws[at + 3])
        member = self.world.group_member(
            event.group_index, int(draws[at + 4] * w.MEMBERS_PER_GROUP)
        )
        answer = draws[at + 5]
        guests = draws[at + 6]
        missing = self.quirks.missing_fields
        return [
            1_672_000_000 + 3 * index + (index * 7) % 3,
            self._mtime(index, draws, at),
            event,
            event_id,
            member,
            b"yes" if answer < 0.79 else b"no" if answer < 0.995 else b"waitlist",
            0 if guests < 0.86 else 1 if guests < 0.96 else 2,
            not (missing and draws[at + 7] < 0.136),
            not missing or self.world.member(member).photo_id is not None,
            not (missing and draws[at + 8] < 0.001),
        ]


_OPEN_EVENT = (
    b'%b,"status":"%b","mtime":%d,"event_url":%b,"yes_rsvp_count":%d,'
    b'"maybe_rsvp_count":%d,%b'
)


class OpenEventSource(GeneratedSource):
    """Events pushed again on every change: the same id with a newer mtime."""

    def _item(
        self, index: int, draws: list[float], at: int
    ) -> tuple[bytes, Any, int, tuple[str, ...]]:
        event, event_id = self._event(draws[at])
        missing = self.quirks.missing_fields
        escape = self._escape
        fragment = self.world.fragment
        with_duration = not missing or event.duration is not None
        with_venue = not (missing and draws[at + 4] < 0.10)
        head = fragment(
            "open_event_head",
            event.index,
            (with_duration, self.quirks.alphanumeric_ids),
            escape,
        )
        tail = fragment("open_event_tail", event.index, with_venue, escape)
        url = w.to_json(self.world.event_url(event), escape).encode()
        mtime = self._mtime(index, draws, at)
        line = _OPEN_EVENT % (
            head[:-1],
            b"cancelled" if draws[at + 1] < 0.03 else b"upcoming",
            mtime,
            url,
            int(draws[at + 2] * (event.rsvp_limit or 120)),
            int(draws[at + 3] * 6),
            tail[1:],
        )
        return line, event_id[0], mtime, event_id


_COMMENT = (
    b'{"id":%d,"comment":%b,"mtime":%d,"status":"%b","member":%b,"event":%b,"group":%b}'
)


class CommentSource(GeneratedSource):
    def _item(
        self, index: int, draws: list[float], at: int
    ) -> tuple[bytes, Any, int, tuple[str, ...]]:
        event, event_id = self._event(draws[at])
        member = self.world.group_member(
            event.group_index, int(draws[at + 1] * w.MEMBERS_PER_GROUP)
        )
        escape = self._escape
        fragment = self.world.fragment
        comment_id = 500_000_000 + 3 * index + (index * 5) % 3
        mtime = self._mtime(index, draws, at)
        with_photo = (
            not self.quirks.missing_fields
            or self.world.member(member).photo_id is not None
        )
        line = _COMMENT % (
            comment_id,
            fragment(
                "comment_text", int(draws[at + 2] * len(w.COMMENTS)), None, escape
            ),
            mtime,
            b"deleted" if draws[at + 3] < 0.02 else b"active",
            fragment("comment_member", member, with_photo, escape),
            fragment(
                "comment_event", event.index, self.quirks.alphanumeric_ids, escape
            ),
            fragment("comment_group", event.group_index, None, escape),
        )
        return line, comment_id, mtime, event_id


_PHOTO = (
    b'{"photo_id":%d,"photo_link":"%b","highres_link":"%b","thumb_link":"%b"%b,'
    b'"ctime":%d,"mtime":%d,"member":%b,"photo_album":{"photo_album_id":%d%b,'
    b'"group":%b}}'
)


class PhotoSource(GeneratedSource):
    def _item(
        self, index: int, draws: list[float], at: int
    ) -> tuple[bytes, Any, int, tuple[str, ...]]:
        event, event_id = self._event(draws[at])
        member = self.world.group_member(
            event.group_index, int(draws[at + 1] * w.MEMBERS_PER_GROUP)
        )
        missing = self.quirks.missing_fields
        escape = self._escape
        fragment = self.world.fragment
        photo_id = 480_000_000 + 5 * index + (index * 3) % 5
        hexa = b"%08x" % photo_id
        slash = b"\\/" if escape else b"/"
        path = slash.join(
            (
                b"https:",
                b"",
                b"secure.meetupstatic.com",
                b"photos",
                b"event",
                hexa[-1:],
                hexa[-2:-1],
                hexa[-3:-2],
                hexa[-4:-3],
            )
        )
        caption = (
            b""
            if missing and draws[at + 3] < 0.35
            else b',"caption":%b'
            % fragment(
                "caption_text", int(draws[at + 2] * len(w.CAPTIONS)), None, escape
            )
        )
        album_event = (
            b""
            if missing and draws[at + 4] < 0.10
            else b',"event":%b'
            % fragment(
                "photo_album_event", event.index, self.quirks.alphanumeric_ids, escape
            )
        )
        mtime = self._mtime(index, draws, at)
        ctime = mtime - (0 if draws[at + 5] < 0.8 else int(draws[at + 5] * w.DAY_MS))
        line = _PHOTO % (
            photo_id,
            b"%b%b600_%d.jpeg" % (path, slash, photo_id),
            b"%b%bhighres_%d.jpeg" % (path, slash, photo_id),
            b"%b%bthumb_%d.jpeg" % (path, slash, photo_id),
            caption,
            ctime,
            mtime,
            fragment("photo_member", member, None, escape),
            event.album_id,
            album_event,
            fragment("photo_group", event.group_index, None, escape),
        )
        return line, photo_id, mtime, event_id


class VenueUpdateSource(GeneratedSource):
    """open_venues without trickle: a venue now and then, with a new mtime."""

    DRAWS = 4

    def _item(
        self, index: int, draws: list[float], at: int
    ) -> tuple[bytes, Any, int, tuple[str, ...]]:
        venue = self.world.venue(int(draws[at] * w.VENUE_COUNT))
        mtime = self._mtime(index, draws, at)
        fragment = self.world.fragment("open_venue", venue.index, None, self._escape)
        return b'%b,"mtime":%d}' % (fragment[:-1], mtime), venue.id, mtime, ()


class VenueTableSource(ItemSource):
    """The whole venue table, as ?trickle pushes it, each venue with its mtime."""

    def __init__(self, world: w.World, quirks: Quirks) -> None:
        self.label = "open_venues"
        self.length = w.VENUE_COUNT
        self._world = world
        self._escape = quirks.escaped_slashes
        self._blocks = _BlockCache(self._make_block, size=w.VENUE_COUNT // 512 + 1)

    def block(self, number: int) -> Block:
        return self._blocks.get(number)

    def _make_block(self, number: int) -> Block:
        first = number * BLOCK_SIZE
        venues = [
            self._world.venue(index)
            for index in range(first, min(first + BLOCK_SIZE, w.VENUE_COUNT))
        ]
        lines = [
            b'%b,"mtime":%d}'
            % (
                self._world.fragment("open_venue", venue.index, None, self._escape)[
                    :-1
                ],
                venue.mtime,
            )
            for venue in venues
        ]
        return frame_block(
            first,
            lines,
            [venue.id for venue in venues],
            [venue.mtime for venue in venues],
        )


GENERATED_SOURCES: dict[str, type[GeneratedSource]] = {
    "rsvps": RsvpSource,
    "open_events": OpenEventSource,
    "event_comments": CommentSource,
    "photos": PhotoSource,
    "open_venues": VenueUpdateSource,
}


class ReplaySource(ItemSource):
    """Recorded items from a file (a JSON array, or one JSON object a line).

    NDJSON lines are sent byte for byte as recorded; the elements of an array are
    written compactly, with escaped slashes if that quirk is on.
    """

    def __init__(self, label: str, path: str | Path, quirks: Quirks) -> None:
        self.label = label
        self.path = Path(path)
        lines = _read_recorded_items(self.path, quirks.escaped_slashes)
        self.length = len(lines)
        id_field = ID_FIELDS[label]
        self._blocks: list[Block] = []
        for first in range(0, len(lines), BLOCK_SIZE):
            chunk = lines[first : first + BLOCK_SIZE]
            items = [json.loads(line) for line in chunk]
            self._blocks.append(
                frame_block(
                    first,
                    chunk,
                    [item.get(id_field) for item in items],
                    [_int_or_none(item.get("mtime")) for item in items],
                    [_event_ids(label, item) for item in items],
                )
            )

    def block(self, number: int) -> Block:
        return self._blocks[number]


def _read_recorded_items(path: Path, escape_slashes: bool) -> list[bytes]:
    text = path.read_bytes()
    if text.lstrip().startswith(b"["):
        items = json.loads(text)
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise ValueError(f"{path}: expected a JSON array of objects")
        return [w.to_json(item, escape_slashes).encode() for item in items]

    lines = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        try:
            item = json.loads(line)
        except ValueError as error:
            raise ValueError(f"{path}:{number}: not JSON ({error})") from None
        if not isinstance(item, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object")
        lines.append(line)
    return lines


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _event_ids(label: str, item: dict[str, Any]) -> tuple[str, ...]:
    if label == "photos":
        album = item.get("photo_album") or {}
        event = album.get("event") or {}
        event_id = event.get("id")
    else:
        event = item.get("event") or {}
        event_id = event.get("event_id") if isinstance(event, dict) else None
    return () if event_id is None else (str(event_id),)
