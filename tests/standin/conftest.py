from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from standin.server import StandIn, StandInConfig
from tests.standin.helpers import EPOCH_MS


@pytest.fixture
def start_standin() -> Iterator[Callable[..., StandIn]]:
    """Start a stand-in with StandInConfig(**kwargs); stopped after the test."""
    started: list[StandIn] = []

    def start(**kwargs: Any) -> StandIn:
        kwargs.setdefault("epoch_ms", EPOCH_MS)
        standin = StandIn(StandInConfig(**kwargs)).start()
        started.append(standin)
        return standin

    yield start
    for standin in started:
        standin.stop()
