"""Work set aside in the state folder instead of lost: dead letters (items the
function refused for good) and malformed stream lines.

dead_letters.ndjson holds one JSON object per refused item:
    {"entry": "<id>", "label": ..., "status": 400, "reason": ..., "at": ...,
     "mtime": ..., "raw": "<the item's raw JSON text>"}
The running trigger appends to it and `trigger_gcf.py dead-letters resend` takes
entries out once they are stored; both hold an flock on dead_letters.lock, so
they may run at the same time.

malformed.ndjson holds one JSON object per line that was not an item, and is
rotated to malformed.ndjson.1 when it grows past its size limit.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import fcntl
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collector.outbox import OutboxRecord

logger = logging.getLogger(__name__)

MALFORMED_LOGS_PER_MINUTE = 10


def _utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class DeadLetter:
    entry: str
    label: str
    status: int | None
    reason: str
    at: str
    mtime: int | None
    raw: bytes

    def to_json(self) -> str:
        return json.dumps(
            {
                "entry": self.entry,
                "label": self.label,
                "status": self.status,
                "reason": self.reason,
                "at": self.at,
                "mtime": self.mtime,
                "raw": self.raw.decode("utf-8", errors="surrogateescape"),
            }
        )

    @classmethod
    def from_json(cls, line: str) -> DeadLetter:
        document = json.loads(line)
        return cls(
            entry=document["entry"],
            label=document["label"],
            status=document.get("status"),
            reason=document.get("reason", ""),
            at=document.get("at", ""),
            mtime=document.get("mtime"),
            raw=document["raw"].encode("utf-8", errors="surrogateescape"),
        )

    @property
    def record(self) -> OutboxRecord:
        return OutboxRecord(self.mtime, self.raw)


class DeadLetters:
    """The dead-letter file of a state folder."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / "dead_letters.ndjson"
        self._lock_path = state_dir / "dead_letters.lock"
        self._thread_lock = threading.Lock()
        self.added = 0

    def add(
        self,
        label: str,
        records: list[OutboxRecord],
        status: int | None,
        reasons: list[str] | str,
    ) -> None:
        """Set records aside; reasons is one per record, or one for all."""
        if not records:
            return

        if isinstance(reasons, str):
            reasons = [reasons] * len(records)
        at = _utc_now()
        lines = [
            DeadLetter(
                uuid.uuid4().hex, label, status, reason, at, record.mtime, record.raw
            ).to_json()
            + "\n"
            for record, reason in zip(records, reasons, strict=True)
        ]
        with self._locked():
            with open(self.path, "a", encoding="utf-8") as stream:
                stream.writelines(lines)
                stream.flush()
                os.fsync(stream.fileno())
            self.added += len(records)

        logger.error(
            "set aside %d %s items as dead letters (status %s): %s",
            len(records),
            label,
            status,
            reasons[0] if len(set(reasons)) == 1 else "; ".join(reasons[:5]),
            extra={
                "json_fields": {
                    "label": label,
                    "status": status,
                    "dead_letters": len(records),
                    "dead_letter_file": str(self.path),
                }
            },
        )

    def entries(self, label: str | None = None) -> Iterator[DeadLetter]:
        """Every dead letter (of label), read as a stream, oldest first."""
        if not self.path.exists():
            return

        with open(self.path, encoding="utf-8") as stream:
            for line_number, line in enumerate(stream, start=1):
                if not line.strip():
                    continue
                try:
                    letter = DeadLetter.from_json(line)
                except (ValueError, KeyError) as error:
                    logger.warning(
                        "%s line %d is not a dead letter (%s); left as it is",
                        self.path,
                        line_number,
                        error,
                    )
                    continue
                if label is None or letter.label == label:
                    yield letter

    def remove(self, entries: set[str]) -> int:
        """Delete the dead letters with these entry ids; how many were found."""
        if not entries:
            return 0

        removed = 0
        with self._locked():
            if not self.path.exists():
                return 0
            temporary = self.path.with_name(self.path.name + ".tmp")
            with (
                open(self.path, encoding="utf-8") as source,
                open(temporary, "w", encoding="utf-8") as target,
            ):
                for line in source:
                    if _entry_of(line) in entries:
                        removed += 1
                        continue
                    target.write(line)
                target.flush()
                os.fsync(target.fileno())
            os.replace(temporary, self.path)
        return removed

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)


def _entry_of(line: str) -> str | None:
    try:
        return json.loads(line).get("entry")
    except (ValueError, AttributeError):
        return None


class MalformedLines:
    """Stream lines that are not items, kept in malformed.ndjson (bounded size).

    Every line is counted and kept; the log gets a WARNING for the first
    MALFORMED_LOGS_PER_MINUTE of each minute per label, so that a stream of
    garbage cannot flood it.
    """

    def __init__(
        self,
        state_dir: Path,
        max_bytes: int = 64 * 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / "malformed.ndjson"
        self._max_bytes = max_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()
        self._logged: dict[str, tuple[float, int]] = {}

    def add(
        self, label: str, line: bytes, reason: str, size: int | None = None
    ) -> None:
        entry: dict[str, Any] = {
            "label": label,
            "at": _utc_now(),
            "reason": reason,
            "bytes": len(line) if size is None else size,
            "line": line.decode("utf-8", errors="backslashreplace"),
        }
        text = json.dumps(entry, ensure_ascii=False) + "\n"
        with self._lock:
            self.counts[label] += 1
            self._rotate_if_full()
            with open(self.path, "a", encoding="utf-8") as stream:
                stream.write(text)
            should_log = self._should_log(label)

        if should_log:
            logger.warning(
                "malformed line on %s (%s, %d bytes) kept in %s",
                label,
                reason,
                entry["bytes"],
                self.path,
                extra={"json_fields": {"label": label, "reason": reason}},
            )

    def _rotate_if_full(self) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size >= self._max_bytes:
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))

    def _should_log(self, label: str) -> bool:
        now = self._clock()
        window_start, logged = self._logged.get(label, (now, 0))
        if now - window_start >= 60:
            window_start, logged = now, 0
        self._logged[label] = (window_start, logged + 1)
        return logged < MALFORMED_LOGS_PER_MINUTE
