"""The collector: readers, outbox, sender and profile scheduler, wired together.

    collector = Collector(config)
    collector.start()
    collector.status()      # the counters of the status line, as a dict
    collector.stop()        # stop reading, send what is left (bounded), record

A housekeeping thread seals chunks that reached their age limit, fsyncs on the
configured interval, runs the watchdog, writes the checkpoints, and logs the
status line (and writes status.json) every status interval.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from collector import contract
from collector.auth import FunctionAuth, IdTokenCache
from collector.config import Config
from collector.items import StreamItem
from collector.outbox import ChunkLimits, Outbox
from collector.profiles import (
    GROUP,
    MEMBER,
    ProfileEndpoint,
    ProfilePolicy,
    ProfileScheduler,
    ProfileStore,
    RateLimitPacer,
)
from collector.reader import StreamReader, Watchdog
from collector.sender import ChunkSender, RetryPolicy, SenderPool, make_session
from collector.setaside import DeadLetters, MalformedLines
from collector.statefiles import (
    CheckpointStore,
    state_folder_lock,
    write_json_atomically,
)

logger = logging.getLogger(__name__)

HOUSEKEEPING_SECONDS = 0.1
READER_STOP_SECONDS = 2.0
PROFILE_STOP_SECONDS = 2.0


def build_sender(
    config: Config,
    dead_letters: DeadLetters,
    token_cache: IdTokenCache | None = None,
    sleep: Callable[[float], None] | None = None,
) -> ChunkSender:
    """The ChunkSender of a config (shared by the trigger and the dead-letter
    command)."""
    settings = config.sender
    auth = FunctionAuth(
        config.auth.mode,
        token_cache or IdTokenCache(config.auth.refresh_before_expiry_seconds),
    )
    url = config.functions.save_stream_data
    return ChunkSender(
        make_session(settings.max_in_flight),
        url,
        config.bucket,
        dead_letters,
        RetryPolicy(
            settings.retry_initial_seconds,
            settings.retry_maximum_seconds,
            settings.retry_jitter_seconds,
            settings.retry_after_maximum_seconds,
            settings.alert_after_attempts,
        ),
        timeout=(settings.connect_timeout_seconds, settings.request_timeout_seconds),
        auth=auth.for_url(url),
        sleep=sleep,
    )


class Collector:
    """The VM side of the collector, for one config."""

    def __init__(
        self,
        config: Config,
        token_cache: IdTokenCache | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._clock = clock
        state_dir = config.state_path
        state_dir.mkdir(parents=True, exist_ok=True)
        self._locks = contextlib.ExitStack()
        self._locks.enter_context(state_folder_lock(state_dir))

        try:
            self._build(state_dir, token_cache)
        except BaseException:
            self._locks.close()
            raise

    def _build(self, state_dir: Path, token_cache: IdTokenCache | None) -> None:
        config = self.config
        token_cache = token_cache or IdTokenCache(
            config.auth.refresh_before_expiry_seconds
        )
        self.checkpoints = CheckpointStore(state_dir / "checkpoints.json")
        self.dead_letters = DeadLetters(state_dir)
        self.malformed = MalformedLines(state_dir)

        streams = config.enabled_streams()
        outbox_dir = state_dir / "outbox"
        # A stream read in an earlier run may still have chunks to send.
        labels = list(streams) + [
            label
            for label in contract.STREAM_LABELS
            if label not in streams and (outbox_dir / label).is_dir()
        ]
        self.outbox = Outbox(
            outbox_dir,
            labels,
            ChunkLimits(
                config.chunks.max_items,
                config.chunks.max_bytes,
                config.chunks.max_age_seconds,
            ),
            config.outbox.fsync,
            config.outbox.fsync_interval_seconds,
        )

        self.sender = build_sender(config, self.dead_letters, token_cache)
        self.pool = SenderPool(
            self.outbox, self.sender, self.checkpoints, config.sender.max_in_flight
        )

        self.profiles: ProfileScheduler | None = None
        if config.profiles.enabled:
            self.profiles = self._build_profiles(state_dir, token_cache)

        self.readers = [
            StreamReader(
                label,
                stream.url,
                config.reader,
                self.outbox[label],
                self.malformed,
                on_items=self._offer_profiles,
                start_mtime=self._start_mtime(label),
            )
            for label, stream in streams.items()
        ]
        self.watchdog = Watchdog(self.readers, config.reader.idle_timeout_seconds)
        self._housekeeping_stop = threading.Event()
        self._housekeeper = threading.Thread(
            target=self._housekeep, name="housekeeping", daemon=True
        )
        self._started_at: float | None = None
        self._rate_base: tuple[float, dict[str, int]] | None = None
        self._status_at = 0.0
        self._stopped = False

    def _start_mtime(self, label: str) -> int | None:
        """Where a stream resumes on start: its checkpoint; without one (killed
        before its first acknowledgement), the newest item left in its outbox."""
        checkpoint = self.checkpoints.mtime(label)
        if checkpoint is not None:
            return checkpoint
        return self.outbox[label].recovered_max_mtime

    def _build_profiles(
        self, state_dir: Path, token_cache: IdTokenCache
    ) -> ProfileScheduler:
        config = self.config
        settings = config.profiles
        auth = FunctionAuth(config.auth.mode, token_cache)
        endpoints = {
            MEMBER: ProfileEndpoint(
                MEMBER,
                config.functions.save_member_data,
                config.collections.members,
                contract.MEMBER_ID_FIELD,
                settings.members_per_call,
                auth.for_url(config.functions.save_member_data),
            ),
            GROUP: ProfileEndpoint(
                GROUP,
                config.functions.save_group_data,
                config.collections.groups,
                contract.GROUP_ID_FIELD,
                settings.groups_per_call,
                auth.for_url(config.functions.save_group_data),
            ),
        }
        return ProfileScheduler(
            ProfileStore(state_dir / "profiles.sqlite3"),
            make_session(1),
            endpoints,
            RateLimitPacer(settings.pacing_margin_seconds),
            ProfilePolicy(
                ttl_seconds=settings.ttl_seconds,
                max_pending=settings.max_pending,
                max_remembered=settings.max_remembered,
                request_timeout=(
                    config.sender.connect_timeout_seconds,
                    settings.request_timeout_seconds,
                ),
                retry_initial_seconds=settings.retry_initial_seconds,
                retry_maximum_seconds=settings.retry_maximum_seconds,
                retry_jitter_seconds=settings.retry_jitter_seconds,
                unauthorized_retry_seconds=settings.unauthorized_retry_seconds,
            ),
        )

    # Lifecycle -------------------------------------------------------------

    def start(self) -> None:
        now = self._clock()
        self._started_at = now
        self._status_at = now
        self._rate_base = (now, self._items_by_label())
        self.pool.start()
        if self.profiles is not None:
            self.profiles.start()
        for reader in self.readers:
            reader.start()
        self._housekeeper.start()
        logger.info(
            "trigger started: streams %s, state folder %s",
            ", ".join(reader.label for reader in self.readers),
            self.config.state_dir,
        )

    def run(
        self, duration: float | None = None, stop: threading.Event | None = None
    ) -> None:
        """Start, wait for stop (or duration seconds), then stop gracefully."""
        stop = stop or threading.Event()
        self.start()
        try:
            stop.wait(duration)
        finally:
            self.stop()

    def stop(self) -> bool:
        """Stop reading, send what was read (for at most the shutdown timeout),
        record the checkpoints. True when the outbox was emptied."""
        if self._stopped:
            return True
        self._stopped = True
        logger.info("trigger stopping: no more reading, sending what is left")

        deadline = self._clock() + READER_STOP_SECONDS
        for reader in self.readers:
            reader.stop(timeout=0)
        for reader in self.readers:
            reader.stop(timeout=max(deadline - self._clock(), 0.0))

        self.outbox.seal_all()
        if self._started_at is not None:
            self.pool.drain(self.config.sender.shutdown_timeout_seconds)
        if self.profiles is not None:
            self.profiles.stop(timeout=PROFILE_STOP_SECONDS)

        self._housekeeping_stop.set()
        if self._housekeeper.is_alive():
            self._housekeeper.join()
        self.outbox.close()
        self.checkpoints.flush(force=True)
        status = self.status()
        self._write_status(status)
        # Whatever is still in the outbox was not sent: a drain cut short, or
        # items a reader added after it.
        drained = status["outbox_items"] == 0
        if drained:
            logger.info("trigger stopped: every item read was sent")
        else:
            logger.warning(
                "trigger stopped with %d items still in the outbox; they are sent "
                "on the next start",
                status["outbox_items"],
            )
        self._locks.close()
        return drained

    # Status ----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Every counter of the status line, as one JSON-ready dict."""
        now = self._clock()
        items = self._items_by_label()
        base_at, base_items = self._rate_base or (now, items)
        elapsed = now - base_at
        depth = self.outbox.depth_items()
        checkpoints = self.checkpoints.snapshot()

        streams = {}
        for reader in self.readers:
            counters = reader.counters.snapshot()
            label = reader.label
            rate = (items[label] - base_items.get(label, 0)) / elapsed if elapsed else 0
            streams[label] = {
                "items": counters["items"],
                "items_per_second": round(rate, 2),
                "connected": bool(counters["connected"]),
                "malformed": counters["malformed"],
                "reconnects": counters["reconnects"],
                "quiet_reconnects": counters["quiet_reconnects"],
                "network_errors": counters["network_errors"],
                "http_errors": counters["http_errors"],
                "idle_seconds": round(max(now - reader.last_item_at, 0.0), 1),
                "largest_mtime": reader.largest_mtime,
                "checkpoint_mtime": checkpoints.get(label),
                "outbox_items": depth.get(label, 0),
            }

        sender = self.pool.counters.snapshot()
        profiles = self.profiles.counters.snapshot() if self.profiles else {}
        return {
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "uptime_seconds": round(now - (self._started_at or now), 1),
            "streams": streams,
            "outbox_items": sum(depth.values()),
            "chunks_in_flight": self.pool.in_flight,
            "chunks_sent": sender.get("chunks_sent", 0),
            "items_sent": sender.get("items_sent", 0),
            "items_stored": sender.get("items_stored", 0),
            "items_already_stored": sender.get("items_already_stored", 0),
            "retries": sender.get("retries", 0),
            "splits": sender.get("splits", 0),
            "dead_letters": sender.get("dead_letters", 0),
            "malformed": sum(self.malformed.counts.values()),
            "profiles": profiles,
        }

    def _items_by_label(self) -> dict[str, int]:
        return {reader.label: reader.counters.get("items") for reader in self.readers}

    def _log_status(self) -> None:
        status = self.status()
        now = self._clock()
        self._rate_base = (now, self._items_by_label())

        rates = ", ".join(
            f"{label} {stream['items_per_second']:g}/s"
            for label, stream in status["streams"].items()
        )
        profiles = status["profiles"]
        logger.info(
            "status: %s | outbox %d items | in flight %d | sent %d | retries %d | "
            "dead letters %d | malformed %d | profiles queued %d members %d groups, "
            "stored %d members %d groups",
            rates,
            status["outbox_items"],
            status["chunks_in_flight"],
            status["items_sent"],
            status["retries"],
            status["dead_letters"],
            status["malformed"],
            profiles.get("members_queued", 0),
            profiles.get("groups_queued", 0),
            profiles.get("members_stored", 0),
            profiles.get("groups_stored", 0),
            extra={"json_fields": {"status": status}},
        )
        self._write_status(status)

    def _write_status(self, status: dict[str, Any]) -> None:
        if not self.config.status.write_file:
            return
        try:
            write_json_atomically(
                self.config.state_path / "status.json", status, durable=False
            )
        except OSError as error:
            logger.warning("could not write status.json: %s", error)

    # Housekeeping ------------------------------------------------------------

    def _housekeep(self) -> None:
        while not self._housekeeping_stop.wait(HOUSEKEEPING_SECONDS):
            try:
                now = self._clock()
                self.outbox.housekeeping(now)
                self.watchdog.check(now)
                self.checkpoints.flush()
                if now - self._status_at >= self.config.status.interval_seconds:
                    self._status_at = now
                    self._log_status()
            except Exception:
                logger.exception("housekeeping failed; going on")

    def _offer_profiles(self, items: list[StreamItem]) -> None:
        if self.profiles is None:
            return
        member_ids = [id_ for item in items for id_ in item.member_ids]
        group_ids = [id_ for item in items for id_ in item.group_ids]
        if member_ids or group_ids:
            self.profiles.offer(member_ids, group_ids)
