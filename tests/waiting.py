"""Waiting on a condition with a bound, instead of sleeping for a guessed time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

POLL_INTERVAL_S = 0.02


def wait_until(
    condition: Callable[[], T], timeout_s: float = 10.0, what: str = ""
) -> T:
    """Poll condition until it returns something true, and return that; fail the
    test with AssertionError when timeout_s passes first."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"not true within {timeout_s:g} s: {what or condition!r}"
            )
        time.sleep(POLL_INTERVAL_S)
