"""Stream bytes to items: line splitting and the few fields the collector needs.

An item's raw bytes are kept exactly as they arrived (only the line end is cut
off); the collector parses each line once, for its id, its mtime and the member
and group ids it carries, and never re-serialises it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from collector import contract


class MalformedItem(ValueError):
    """A line that is not a stream item; the message says why."""


@dataclass(frozen=True, slots=True)
class StreamItem:
    label: str
    raw: bytes
    item_id: Any
    mtime: int | None
    member_ids: tuple[int, ...]
    group_ids: tuple[int, ...]


class LineSplitter:
    """Cuts a byte stream into lines, whatever the network chunk boundaries.

    A line longer than max_line_bytes is not buffered whole: its first bytes go to
    on_oversized and the rest is skipped up to the next newline, so one runaway
    line cannot grow memory.
    """

    def __init__(
        self,
        max_line_bytes: int,
        on_oversized: Callable[[bytes, int], None] | None = None,
    ) -> None:
        self._max_line_bytes = max_line_bytes
        self._on_oversized = on_oversized
        self._partial = bytearray()
        self._skipping = False
        self._skipped_bytes = 0

    def feed(self, data: bytes) -> list[bytes]:
        """Complete, non-blank lines in data (plus what was left over before)."""
        lines: list[bytes] = []
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            self._take_piece(data[start:end], lines, line_ends=True)
            start = end + 1

        self._take_piece(data[start:], lines, line_ends=False)
        return lines

    def reset(self) -> None:
        """Forget a partial line (after the connection it came from broke)."""
        self._partial.clear()
        self._skipping = False
        self._skipped_bytes = 0

    @property
    def pending_bytes(self) -> int:
        return len(self._partial)

    def _take_piece(self, piece: bytes, lines: list[bytes], line_ends: bool) -> None:
        if self._skipping:
            self._skipped_bytes += len(piece)
            if line_ends:
                self._report_oversized()
            return

        if len(self._partial) + len(piece) > self._max_line_bytes:
            room = self._max_line_bytes - len(self._partial)
            self._partial.extend(piece[:room])
            self._skipping = True
            self._skipped_bytes = len(piece) - room
            if line_ends:
                self._report_oversized()
            return

        if not line_ends:
            self._partial.extend(piece)
            return

        if self._partial:
            self._partial.extend(piece)
            line = bytes(self._partial)
            self._partial.clear()
        else:
            line = piece
        line = line.rstrip(b"\r")
        if line.strip():
            lines.append(line)

    def _report_oversized(self) -> None:
        prefix = bytes(self._partial)
        size = len(prefix) + self._skipped_bytes
        self.reset()
        if self._on_oversized is not None:
            self._on_oversized(prefix, size)


def parse_item(label: str, raw: bytes) -> StreamItem:
    """The item in one line of stream label; MalformedItem if it is not one."""
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as error:
        raise MalformedItem(f"not JSON: {error}") from error

    if not isinstance(document, dict):
        raise MalformedItem(f"not a JSON object but {type(document).__name__}")

    id_field = contract.ITEM_ID_FIELDS[label]
    item_id = document.get(id_field)
    if item_id is None or isinstance(item_id, bool | dict | list | float):
        raise MalformedItem(f"no usable {id_field!r}")

    mtime = document.get(contract.MTIME_FIELD)
    if not isinstance(mtime, int) or isinstance(mtime, bool) or mtime < 0:
        mtime = None

    return StreamItem(
        label=label,
        raw=raw,
        item_id=item_id,
        mtime=mtime,
        member_ids=_profile_ids(document, contract.MEMBER_ID_PATHS.get(label)),
        group_ids=_profile_ids(document, contract.GROUP_ID_PATHS.get(label)),
    )


def _profile_ids(document: dict[str, Any], path: tuple[str, ...] | None) -> tuple:
    if path is None:
        return ()

    value = contract.nested_value(document, path)
    if isinstance(value, bool):
        return ()
    if isinstance(value, int) and value > 0:
        return (value,)
    if isinstance(value, str) and value.isdigit() and int(value) > 0:
        return (int(value),)
    return ()
