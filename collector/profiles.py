"""Member and group profiles: ids out of the streams, into save_member_data and
save_group_data, paced by the Meetup API's rate limit.

Ids offered by the stream readers are de-duplicated in a small in-memory staging
set, then moved in batches into profiles.sqlite3 in the state folder:

- pending(kind, id, queued_at): the queue of ids to fetch, on disk, so it takes
  no memory however far the API limit leaves it behind, and survives restarts.
  It is capped at max_pending ids per kind: past that the oldest ids are dropped,
  with a WARNING and a counter (an id that comes back in the stream is queued
  again; keeping a queue that can never drain would only grow the disk).
- fetched(kind, id, fetched_at): ids stored (or found missing) within the
  time-to-live, so they are not asked for again; rows older than the TTL are
  deleted, and the table is capped at max_remembered rows (oldest first).

One profile request at a time. Every answer of the functions carries
X-RateLimit-Remaining and X-RateLimit-Reset copied from the Meetup API; a member
id costs one Meetup request and a group call costs one, so a member batch is
cut to what remains of the window, and when nothing remains the scheduler waits
for the reset. A 429 (Meetup throttled) brings back the ids not done and a
Retry-After, which is waited out.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from collector import contract
from collector.auth import AuthUnavailable
from collector.backoff import parse_retry_after, truncated_exponential
from collector.stats import Counters

logger = logging.getLogger(__name__)

MEMBER = "member"
GROUP = "group"
KINDS = (MEMBER, GROUP)
STAGING_LIMIT = 10_000

PROFILE_COUNTERS = (
    "members_queued",
    "groups_queued",
    "members_stored",
    "groups_stored",
    "members_not_found",
    "groups_not_found",
    "profile_calls",
    "profile_throttled",
    "profile_retries",
    "profiles_refused",
    "profiles_dropped",
)


class ProfileStore:
    """The pending queue and the time-to-live memory, in one SQLite file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS pending (
                kind TEXT NOT NULL, id INTEGER NOT NULL, queued_at REAL NOT NULL,
                PRIMARY KEY (kind, id));
            CREATE INDEX IF NOT EXISTS pending_by_age ON pending (kind, queued_at);
            CREATE TABLE IF NOT EXISTS fetched (
                kind TEXT NOT NULL, id INTEGER NOT NULL, fetched_at REAL NOT NULL,
                PRIMARY KEY (kind, id));
            CREATE INDEX IF NOT EXISTS fetched_by_age ON fetched (fetched_at);
            """
        )

    def enqueue(self, kind: str, ids: Iterable[int], now: float, ttl: float) -> int:
        """Queue the ids not pending and not fetched within ttl; how many were."""
        fresh_after = now - ttl
        rows = [(kind, id_, now, kind, id_, fresh_after) for id_ in ids]
        if not rows:
            return 0

        with self._lock, self._db:
            self._db.execute("BEGIN")
            cursor = self._db.executemany(
                "INSERT OR IGNORE INTO pending (kind, id, queued_at) "
                "SELECT ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM fetched "
                "WHERE kind = ? AND id = ? AND fetched_at > ?)",
                rows,
            )
            return cursor.rowcount

    def next_batch(self, kind: str, limit: int) -> list[int]:
        """The oldest pending ids of kind (they stay pending until marked)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM pending WHERE kind = ? ORDER BY queued_at, id LIMIT ?",
                (kind, limit),
            ).fetchall()
        return [row[0] for row in rows]

    def mark_fetched(self, kind: str, ids: Iterable[int], now: float) -> None:
        rows = [(kind, id_) for id_ in ids]
        if not rows:
            return

        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM pending WHERE kind = ? AND id = ?", rows)
            self._db.executemany(
                "INSERT OR REPLACE INTO fetched (kind, id, fetched_at) "
                "VALUES (?, ?, ?)",
                [(kind, id_, now) for kind, id_ in rows],
            )

    def pending_count(self, kind: str) -> int:
        with self._lock:
            return self._db.execute(
                "SELECT COUNT(*) FROM pending WHERE kind = ?", (kind,)
            ).fetchone()[0]

    def fetched_count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM fetched").fetchone()[0]

    def was_fetched(self, kind: str, id_: int) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM fetched WHERE kind = ? AND id = ?", (kind, id_)
            ).fetchone()
        return row is not None

    def trim(
        self, now: float, ttl: float, max_remembered: int, max_pending: int
    ) -> dict[str, int]:
        """Forget expired and surplus fetched ids; drop the oldest pending ids
        over max_pending. Returns the pending ids dropped, by kind."""
        dropped: dict[str, int] = {}
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM fetched WHERE fetched_at <= ?", (now - ttl,))
            surplus = (
                self._db.execute("SELECT COUNT(*) FROM fetched").fetchone()[0]
                - max_remembered
            )
            if surplus > 0:
                self._db.execute(
                    "DELETE FROM fetched WHERE rowid IN (SELECT rowid FROM fetched "
                    "ORDER BY fetched_at LIMIT ?)",
                    (surplus,),
                )

            for kind in KINDS:
                surplus = (
                    self._db.execute(
                        "SELECT COUNT(*) FROM pending WHERE kind = ?", (kind,)
                    ).fetchone()[0]
                    - max_pending
                )
                if surplus > 0:
                    self._db.execute(
                        "DELETE FROM pending WHERE kind = ? AND id IN (SELECT id "
                        "FROM pending WHERE kind = ? ORDER BY queued_at, id LIMIT ?)",
                        (kind, kind, surplus),
                    )
                    dropped[kind] = surplus
        return dropped

    def close(self) -> None:
        with self._lock:
            self._db.close()


@dataclass
class RateLimitPacer:
    """What the Meetup API's rate-limit headers allow next.

    remaining is the number of Meetup requests left in the current window, as of
    the last answer; reset_at the moment (clock seconds) the window resets, plus
    a safety margin. When the window is over, or nothing is known, the next call
    is a probe of one request, whose answer tells the new window's budget.
    """

    margin_seconds: float = 1.0
    remaining: int | None = None
    reset_at: float | None = None

    def update(self, headers: Mapping[str, str], now: float) -> None:
        remaining = _number(headers.get(contract.RATE_LIMIT_REMAINING_HEADER))
        reset = _number(headers.get(contract.RATE_LIMIT_RESET_HEADER))
        if remaining is None or reset is None:
            return
        self.remaining = max(int(remaining), 0)
        self.reset_at = now + max(reset, 0.0) + self.margin_seconds

    def throttled(self, retry_after: float, now: float) -> None:
        """Meetup said "throttled": nothing more until retry_after has passed."""
        self.remaining = 0
        self.reset_at = max(self.reset_at or now, now + retry_after)

    def wait_seconds(self, now: float) -> float:
        """How long to wait before the next call may go."""
        if self.remaining == 0 and self.reset_at is not None and now < self.reset_at:
            return self.reset_at - now
        return 0.0

    def budget(self, now: float) -> int:
        """How many Meetup requests the next call may make."""
        if self.remaining is None or self.reset_at is None or now >= self.reset_at:
            return 1
        return self.remaining

    def spend(self, requests_made: int) -> None:
        """Count a call's requests until its answer brings the true figure."""
        if self.remaining is not None:
            self.remaining = max(self.remaining - requests_made, 0)


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


@dataclass(frozen=True)
class ProfileEndpoint:
    kind: str
    url: str
    collection: str
    id_field: str
    per_call: int
    auth: requests.auth.AuthBase | None = None


@dataclass(frozen=True)
class ProfilePolicy:
    ttl_seconds: float = 86_400.0
    max_pending: int = 100_000
    max_remembered: int = 1_000_000
    request_timeout: tuple[float, float] = (10.0, 120.0)
    retry_initial_seconds: float = 1.0
    retry_maximum_seconds: float = 64.0
    retry_jitter_seconds: float = 1.0
    unauthorized_retry_seconds: float = 600.0
    trim_interval_seconds: float = 5.0


class ProfileScheduler:
    """Collects ids from the readers and asks the functions to store them."""

    def __init__(
        self,
        store: ProfileStore,
        session: requests.Session,
        endpoints: Mapping[str, ProfileEndpoint],
        pacer: RateLimitPacer,
        policy: ProfilePolicy = ProfilePolicy(),
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        uniform: Callable[[], float] | None = None,
        counters: Counters | None = None,
    ) -> None:
        self._store = store
        self._session = session
        self._endpoints = endpoints
        self._pacer = pacer
        self._policy = policy
        self._clock = clock
        self._wall_clock = wall_clock
        self._uniform = uniform
        self.counters = counters if counters is not None else Counters(PROFILE_COUNTERS)
        self._staging: dict[str, set[int]] = {kind: set() for kind in KINDS}
        self._staging_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._not_before = float("-inf")
        self._failures = 0
        self._turn = 0
        self._trimmed_at = float("-inf")
        self._refresh_queued_counts()

    def offer(self, member_ids: Iterable[int], group_ids: Iterable[int]) -> None:
        """Ids seen in a stream item (called by the readers; cheap)."""
        full = False
        with self._staging_lock:
            self._staging[MEMBER].update(member_ids)
            self._staging[GROUP].update(group_ids)
            full = any(len(ids) >= STAGING_LIMIT for ids in self._staging.values())
        if full:
            self.flush_staging()

    def flush_staging(self) -> None:
        """Move the staged ids into the pending queue on disk."""
        with self._flush_lock:
            with self._staging_lock:
                staged = self._staging
                self._staging = {kind: set() for kind in KINDS}

            now = self._wall_clock()
            for kind, ids in staged.items():
                if ids:
                    self._store.enqueue(kind, ids, now, self._policy.ttl_seconds)
            self._trim_if_due()
            self._refresh_queued_counts()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="profiles", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the call in progress (waiting up to timeout seconds for
        it); staged ids are moved to disk, to be fetched on the next start."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.flush_staging()
        if self._thread is None or not self._thread.is_alive():
            self._store.close()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                wait = self.step()
            except Exception:
                logger.exception("profile scheduler step failed; going on")
                wait = 1.0
            if wait <= 0:
                continue

            # Wake several times a second to move staged ids to disk.
            self._stopping.wait(min(wait, 0.25))

    def step(self) -> float:
        """Flush the staged ids and make at most one call; the seconds to wait
        before the next step (inf: nothing pending)."""
        self.flush_staging()

        now = self._clock()
        if now < self._not_before:
            return self._not_before - now
        paced_wait = self._pacer.wait_seconds(now)
        if paced_wait > 0:
            return paced_wait

        for offset in range(len(KINDS)):
            kind = KINDS[(self._turn + offset) % len(KINDS)]
            endpoint = self._endpoints.get(kind)
            if endpoint is None:
                continue

            limit = endpoint.per_call
            if kind == MEMBER:
                limit = min(limit, self._pacer.budget(now))
            batch = self._store.next_batch(kind, limit)
            if batch:
                self._turn = (self._turn + offset + 1) % len(KINDS)
                self._call(endpoint, batch)
                return 0.0
        return float("inf")

    def _call(self, endpoint: ProfileEndpoint, ids: list[int]) -> None:
        self.counters.add("profile_calls")
        self._pacer.spend(len(ids) if endpoint.kind == MEMBER else 1)
        try:
            response = self._session.post(
                endpoint.url,
                params={contract.PROFILE_COLLECTION_PARAM: endpoint.collection},
                json={endpoint.id_field: ids},
                timeout=self._policy.request_timeout,
                auth=endpoint.auth,
            )
        except (requests.RequestException, AuthUnavailable) as error:
            self._retry_later(endpoint, ids, f"network error: {error!r}")
            return

        now = self._clock()
        with response:
            document = _json_document(response)
        self._pacer.update(response.headers, now)
        status = response.status_code

        if 200 <= status <= 299:
            self._failures = 0
            self._take_answer(endpoint, ids, document)
            return

        if status == 429:
            self._failures = 0
            self._take_throttled(endpoint, ids, document, response.headers, now)
            return

        if document.get(contract.PROFILE_ERROR_CODE_FIELD) == (
            contract.MEETUP_UNAUTHORIZED_CODE
        ):
            self._not_before = now + self._policy.unauthorized_retry_seconds
            logger.error(
                "%s: the Meetup API refuses the functions' API key; %d %s ids "
                "kept, trying again in %.0f s",
                endpoint.url,
                len(ids),
                endpoint.kind,
                self._policy.unauthorized_retry_seconds,
            )
            return

        rejected = (
            document.get(contract.PROFILE_ERROR_CODE_FIELD)
            == contract.MEETUP_REJECTED_CODE
        )
        if contract.is_retryable_status(status) and not rejected:
            self._retry_later(endpoint, ids, f"HTTP {status}", response.headers)
            return

        self._failures = 0
        self._store.mark_fetched(endpoint.kind, ids, self._wall_clock())
        self.counters.add("profiles_refused", len(ids))
        logger.error(
            "%s refused %d %s ids for good (HTTP %d: %s): %s",
            endpoint.url,
            len(ids),
            endpoint.kind,
            status,
            document.get("error", ""),
            ids[:20],
        )

    def _take_answer(
        self, endpoint: ProfileEndpoint, ids: list[int], document: dict[str, Any]
    ) -> None:
        stored = _ids(document.get(contract.PROFILE_STORED_FIELD))
        not_found = _ids(document.get(contract.PROFILE_NOT_FOUND_FIELD))
        unanswered = [id_ for id_ in ids if id_ not in stored and id_ not in not_found]
        self._store.mark_fetched(endpoint.kind, ids, self._wall_clock())
        self.counters.add(f"{endpoint.kind}s_stored", len(stored))
        self.counters.add(f"{endpoint.kind}s_not_found", len(not_found))
        if not_found:
            logger.info(
                "%d %s ids no longer exist on Meetup: %s",
                len(not_found),
                endpoint.kind,
                sorted(not_found)[:20],
            )
        if unanswered:
            logger.warning(
                "%s answered 200 without mentioning %d %s ids; not asking again "
                "within the time-to-live: %s",
                endpoint.url,
                len(unanswered),
                endpoint.kind,
                unanswered[:20],
            )

    def _take_throttled(
        self,
        endpoint: ProfileEndpoint,
        ids: list[int],
        document: dict[str, Any],
        headers: Mapping[str, str],
        now: float,
    ) -> None:
        stored = _ids(document.get(contract.PROFILE_STORED_FIELD))
        not_found = _ids(document.get(contract.PROFILE_NOT_FOUND_FIELD))
        done = [id_ for id_ in ids if id_ in stored or id_ in not_found]
        self._store.mark_fetched(endpoint.kind, done, self._wall_clock())
        self.counters.add(f"{endpoint.kind}s_stored", len(stored & set(ids)))
        self.counters.add(f"{endpoint.kind}s_not_found", len(not_found & set(ids)))
        self.counters.add("profile_throttled")

        retry_after = parse_retry_after(headers.get("Retry-After"))
        if retry_after is None:
            retry_after = _number(str(document.get(contract.PROFILE_RETRY_AFTER_FIELD)))
        if retry_after is None:
            retry_after = self._policy.retry_maximum_seconds
        self._pacer.throttled(retry_after, now)
        logger.warning(
            "the Meetup API throttled %s: %d of %d %s ids stored, the rest wait %.1f s",
            endpoint.url,
            len(done),
            len(ids),
            endpoint.kind,
            retry_after,
        )

    def _retry_later(
        self,
        endpoint: ProfileEndpoint,
        ids: list[int],
        reason: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._failures += 1
        self.counters.add("profile_retries")
        retry_after = parse_retry_after((headers or {}).get("Retry-After"))
        wait = (
            retry_after
            if retry_after is not None
            else truncated_exponential(
                self._failures,
                self._policy.retry_initial_seconds,
                self._policy.retry_maximum_seconds,
                self._policy.retry_jitter_seconds,
                **({"uniform": self._uniform} if self._uniform else {}),
            )
        )
        self._not_before = self._clock() + wait
        logger.warning(
            "%s failed for %d %s ids (%s); attempt %d, retrying in %.2f s",
            endpoint.url,
            len(ids),
            endpoint.kind,
            reason,
            self._failures,
            wait,
        )

    def _trim_if_due(self) -> None:
        now = self._clock()
        if now - self._trimmed_at < self._policy.trim_interval_seconds:
            return

        self._trimmed_at = now
        dropped = self._store.trim(
            self._wall_clock(),
            self._policy.ttl_seconds,
            self._policy.max_remembered,
            self._policy.max_pending,
        )
        for kind, count in dropped.items():
            self.counters.add("profiles_dropped", count)
            logger.warning(
                "the %s queue is over %d ids: dropped the %d oldest",
                kind,
                self._policy.max_pending,
                count,
            )

    def _refresh_queued_counts(self) -> None:
        for kind in KINDS:
            self.counters.set(f"{kind}s_queued", self._store.pending_count(kind))


def _ids(value: Any) -> set[int]:
    if not isinstance(value, list):
        return set()
    return {id_ for id_ in value if isinstance(id_, int) and not isinstance(id_, bool)}


def _json_document(response: requests.Response) -> dict[str, Any]:
    try:
        document = response.json()
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}
