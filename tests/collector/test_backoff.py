"""Backoff waits, exactly: truncated exponential with jitter, and Retry-After."""

from __future__ import annotations

import email.utils

import pytest

from collector.backoff import (
    ReconnectSchedule,
    parse_retry_after,
    truncated_exponential,
)


def test_truncated_exponential_doubles_adds_jitter_and_stops_at_the_maximum() -> None:
    waits = [
        truncated_exponential(attempt, 1.0, 32.0, jitter=1.0, uniform=lambda: 0.25)
        for attempt in range(1, 9)
    ]

    assert waits == [1.25, 2.25, 4.25, 8.25, 16.25, 32.0, 32.0, 32.0]


def test_a_huge_attempt_number_does_not_overflow() -> None:
    assert truncated_exponential(10_000, 1.0, 60.0) == 60.0


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        (" 2.5 ", 2.5),
        ("-3", 0.0),
        (None, None),
        ("soon", None),
        ("nan", None),
    ],
)
def test_retry_after_in_seconds(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds


def test_retry_after_as_an_http_date() -> None:
    now = 1_700_000_000.0
    header = email.utils.formatdate(now + 30, usegmt=True)

    assert parse_retry_after(header, now=lambda: now) == 30.0


def test_reconnect_schedule_doubles_and_resets() -> None:
    schedule = ReconnectSchedule(5.0, 20.0)

    first = [schedule.next_wait() for _ in range(4)]
    schedule.reset()

    assert first == [5.0, 10.0, 20.0, 20.0]
    assert schedule.next_wait() == 5.0
