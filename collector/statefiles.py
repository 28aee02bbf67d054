"""Small files in the state folder: atomic JSON writes, the checkpoints and the
lock that keeps a second trigger off the same state folder."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def fsync_directory(directory: Path) -> None:
    """Make a rename or a new file in directory durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomically(path: Path, document: Any, durable: bool = True) -> None:
    """Replace path with document so that a reader sees the old or the new file,
    never a part of one, even after a crash. Safe to call from several threads:
    each writes its own temporary file."""
    temporary = path.with_name(
        f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    )
    data = json.dumps(document, indent=1, sort_keys=True).encode("utf-8")
    with open(temporary, "wb") as stream:
        stream.write(data)
        if durable:
            stream.flush()
            os.fsync(stream.fileno())

    os.replace(temporary, path)
    if durable:
        fsync_directory(path.parent)


class StateLockBusy(RuntimeError):
    """Another trigger already runs on this state folder."""


@contextlib.contextmanager
def state_folder_lock(state_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on state_dir for the life of the block; the kernel
    drops it if the process dies, so a killed trigger never blocks a restart."""
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / "trigger.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            raise StateLockBusy(
                f"another trigger is running on the state folder {state_dir}"
            ) from error
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


class CheckpointStore:
    """The largest mtime acknowledged per stream label, in checkpoints.json.

    Items with a smaller mtime may still sit unacknowledged in the outbox: they
    are resent from there, so resuming a stream from this checkpoint (less the
    safety margin) loses nothing. The file is written atomically, at most once
    per min_interval seconds while running and once more on close.
    """

    def __init__(
        self,
        path: Path,
        min_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = path
        self._min_interval = min_interval
        self._clock = clock
        self._lock = threading.Lock()
        # Writers take turns, so the newest snapshot is always written last.
        self._write_lock = threading.Lock()
        self._mtimes: dict[str, int] = self._read()
        self._dirty = False
        self._written_at = float("-inf")

    def mtime(self, label: str) -> int | None:
        with self._lock:
            return self._mtimes.get(label)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._mtimes)

    def acknowledge(self, label: str, mtime: int | None) -> None:
        """Record that every item of label up to mtime is stored or set aside.

        The first checkpoint of a label is written at once: until then a
        restart would have nothing to resume that stream from. Later ones may
        lag a little, which only means a few more replayed items.
        """
        if mtime is None:
            return

        with self._lock:
            first = label not in self._mtimes
            if mtime > self._mtimes.get(label, -1):
                self._mtimes[label] = mtime
                self._dirty = True
        if first:
            self.flush(force=True)

    def flush(self, force: bool = False) -> None:
        with self._write_lock:
            with self._lock:
                now = self._clock()
                if not self._dirty:
                    return
                if not force and now - self._written_at < self._min_interval:
                    return
                document = {
                    label: {"mtime": mtime} for label, mtime in self._mtimes.items()
                }
                self._dirty = False
                self._written_at = now

            try:
                write_json_atomically(self._path, document)
            except OSError:
                with self._lock:
                    self._dirty = True
                raise

    def _read(self) -> dict[str, int]:
        try:
            document = json.loads(self._path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            logger.warning(
                "ignoring unreadable checkpoints file %s (%s): streams start live",
                self._path,
                error,
            )
            return {}

        mtimes = {}
        for label, entry in document.items():
            mtime = entry.get("mtime") if isinstance(entry, dict) else None
            if isinstance(mtime, int) and not isinstance(mtime, bool):
                mtimes[label] = mtime
        return mtimes
