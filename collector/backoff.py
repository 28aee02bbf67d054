"""Waiting between attempts: truncated exponential backoff and Retry-After.

Google's recommendation, which the sender and the profile scheduler follow:
wait min(initial * 2**n + random(0, jitter), maximum) before retry n + 1, or
exactly what the server asked for in Retry-After.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Callable

import tenacity


class RetryLater(Exception):
    """An attempt failed in a way that a later attempt may not (408/429/5xx,
    network errors); retry_after is the server's own wait, in seconds."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def truncated_exponential(
    attempt: int,
    initial: float,
    maximum: float,
    jitter: float = 0.0,
    uniform: Callable[[], float] = random.random,
) -> float:
    """The wait after failed attempt number `attempt` (1 for the first failure)."""
    exponent = min(max(attempt - 1, 0), 64)
    return min(initial * 2**exponent + jitter * uniform(), maximum)


def parse_retry_after(
    value: str | None, now: Callable[[], float] = time.time
) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if value is None:
        return None

    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        seconds = None
    if seconds is not None:
        return max(seconds, 0.0) if math.isfinite(seconds) else None

    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment is None:
        return None
    return max(moment.timestamp() - now(), 0.0)


class RetryAfterOrBackoff(tenacity.wait.wait_base):
    """A tenacity wait: the Retry-After the failure carried (up to a cap), or
    truncated exponential backoff with jitter."""

    def __init__(
        self,
        initial: float,
        maximum: float,
        jitter: float,
        retry_after_maximum: float,
        uniform: Callable[[], float] = random.random,
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
        self.retry_after_maximum = retry_after_maximum
        self.uniform = uniform

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        failure = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(failure, RetryLater) and failure.retry_after is not None:
            return min(failure.retry_after, self.retry_after_maximum)

        return truncated_exponential(
            retry_state.attempt_number,
            self.initial,
            self.maximum,
            self.jitter,
            self.uniform,
        )


class ReconnectSchedule:
    """One backoff schedule of a stream reader (doubling up to a maximum); the
    reader keeps one per kind of fault and resets them all once data flows."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self.failures = 0

    def next_wait(self) -> float:
        self.failures += 1
        return truncated_exponential(self.failures, self.initial, self.maximum)

    def reset(self) -> None:
        self.failures = 0
