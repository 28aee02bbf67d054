"""Configuration of the stand-in: streams, profile API, Slack webhook, and faults.

Re-exported by standin.server, which is where callers import them from.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

LABELS = ("rsvps", "open_events", "event_comments", "photos", "open_venues")

# Where each stream keeps an item's unique id; every stream's change time is mtime.
ID_FIELDS = {
    "rsvps": "rsvp_id",
    "open_events": "id",
    "event_comments": "id",
    "photos": "photo_id",
    "open_venues": "id",
}

DEFAULT_RATE = 3.0  # items per second: about what the real streams sent

# The fault knobs of a stream: settable at start (StreamConfig) and at run time
# (StandIn.set_faults, POST /_standin/faults).
STREAM_FAULTS = (
    "drop_after",
    "drop_probability",
    "stall_after",
    "stall_seconds",
    "malformed_every",
    "truncate_after",
    "connect_503",
    "silent_every",
    "silent_seconds",
)
API_FAULTS = ("error_rate", "latency_ms")


@dataclass(frozen=True)
class Quirks:
    """The quirks of real stream traffic, each at about its measured rate."""

    duplicates: bool = True  # rsvps re-sent: mtime rounded, response changed, copy
    backwards_mtimes: bool = True  # an item's mtime below the one before it
    missing_fields: bool = True  # venue, member.photo, event.time, duration...
    alphanumeric_ids: bool = True  # recurring events have ids like "qxbmkdreuvwa"
    escaped_slashes: bool = True  # "/" written as "\/", as the real stream did

    @classmethod
    def none(cls) -> Quirks:
        return cls(False, False, False, False, False)

    @classmethod
    def parse(cls, text: str) -> Quirks:
        """Quirks from "all", "none", or a comma list of names (the others off)."""
        text = text.strip().lower()
        if text == "all":
            return cls()
        if text == "none":
            return cls.none()

        names = {name.strip() for name in text.split(",") if name.strip()}
        known = {quirk.name for quirk in fields(cls)}
        unknown = names - known
        if unknown:
            raise ValueError(
                f"unknown quirks {sorted(unknown)}; known: {sorted(known)}"
            )
        return cls(**{name: name in names for name in known})


@dataclass
class StreamConfig:
    """One stream: its pace, its source, its quirks and the faults it injects.

    rate is items per second (None: as fast as the reader takes them). max_items
    caps the new items the stream generates (None: endless); backlog is how many
    items already exist, with past mtimes, when the stand-in starts (for
    since_count and since_mtime). replay_file serves recorded items instead of
    generated ones. The fault knobs (see STREAM_FAULTS) can also be changed while
    running.
    """

    rate: float | None = DEFAULT_RATE
    max_items: int | None = None
    backlog: int = 0
    quirks: Quirks | bool = True
    replay_file: str | Path | None = None
    trickle_pause_s: float = 0.0  # open_venues: pause between batches of 512

    # faults, per connection unless said otherwise
    drop_after: int | None = None  # end the connection cleanly after N items
    drop_probability: float = 0.0  # chance, after each item, to end it
    stall_after: int | None = None  # after N items send nothing for a while...
    stall_seconds: float = 0.0  # ...this long, keeping the socket open
    malformed_every: int | None = None  # after every N items, one broken line
    truncate_after: int | None = None  # after N items, half a chunk, then close
    connect_503: int = 0  # answer the next N connects with 503 (stream-wide)
    silent_every: int | None = None  # stream-wide: after every N new items...
    silent_seconds: float = 0.0  # ...generate nothing for this long

    def __post_init__(self) -> None:
        if self.quirks is True:
            self.quirks = Quirks()
        elif self.quirks is False:
            self.quirks = Quirks.none()
        if self.rate is not None and not (self.rate > 0 and math.isfinite(self.rate)):
            raise ValueError(f"rate must be a positive number or None, not {self.rate}")
        if self.max_items is not None and self.max_items < 0:
            raise ValueError("max_items must be >= 0")
        if self.backlog < 0:
            raise ValueError("backlog must be >= 0")
        for knob in STREAM_FAULTS:
            check_fault(knob, getattr(self, knob))

    def faults(self) -> dict[str, Any]:
        return {knob: getattr(self, knob) for knob in STREAM_FAULTS}


def check_fault(knob: str, value: Any) -> None:
    """Raise ValueError unless value suits the fault knob."""
    if knob in ("drop_probability", "error_rate"):
        if not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
            raise ValueError(f"{knob} must be a number from 0 to 1, not {value!r}")
    elif knob in ("stall_seconds", "silent_seconds", "latency_ms"):
        if not isinstance(value, int | float) or value < 0 or not math.isfinite(value):
            raise ValueError(f"{knob} must be a number >= 0, not {value!r}")
    elif knob == "connect_503":
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{knob} must be an integer >= 0, not {value!r}")
    elif knob in STREAM_FAULTS:
        valid = value is None or (
            isinstance(value, int) and not isinstance(value, bool) and value > 0
        )
        if not valid:
            raise ValueError(f"{knob} must be an integer > 0 or null, not {value!r}")
    else:
        raise ValueError(f"unknown fault {knob!r}")


@dataclass
class ApiConfig:
    """The profile API: its rate limit per key, how it throttles, its faults.

    Over `limit` requests in a window of `window_seconds` a key is throttled: 429,
    or with throttle_style "400" the v2 answer 400 {"problem": "Client
    throttled", ...}. A key that gets more than `block_after` throttled answers
    in one window is blocked for `block_seconds` (None: never blocked). clock and
    sleep are for tests (default time.monotonic and time.sleep).
    """

    limit: int = 30
    window_seconds: float = 10.0
    throttle_style: str = "429"
    block_after: int | None = 10
    block_seconds: float = 3600.0
    error_rate: float = 0.0  # share of answers that are 500 or 503
    latency_ms: float = 0.0  # added to every answer
    clock: Callable[[], float] | None = field(default=None, repr=False)
    sleep: Callable[[float], None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.throttle_style not in ("429", "400"):
            raise ValueError('throttle_style must be "429" or "400"')
        if self.limit < 1 or self.window_seconds <= 0:
            raise ValueError("limit must be >= 1 and window_seconds > 0")
        for knob in API_FAULTS:
            check_fault(knob, getattr(self, knob))


@dataclass
class SlackConfig:
    """The Slack webhook: where messages are recorded, and how fast it takes them.

    A token bucket: `burst` messages at once, refilled at `rate_per_second`; a
    message beyond that gets 429 with Retry-After. clock is for tests.
    """

    log_file: str | Path | None = None
    rate_per_second: float = 1.0
    burst: int = 3
    clock: Callable[[], float] | None = field(default=None, repr=False)


@dataclass
class StandInConfig:
    """Everything the stand-in serves. Streams not named get StreamConfig()."""

    seed: int = 0
    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port
    api_key: str = "standin-key"
    streams: dict[str, StreamConfig] = field(default_factory=dict)
    api: ApiConfig = field(default_factory=ApiConfig)
    slack: SlackConfig = field(default_factory=SlackConfig)
    max_connections_per_client: int = 10
    epoch_ms: int | None = None  # mtime of the first new item; None: start time

    def __post_init__(self) -> None:
        unknown = set(self.streams) - set(LABELS)
        if unknown:
            raise ValueError(f"unknown stream labels {sorted(unknown)}")
