"""A real HTTP server on 127.0.0.1 that answers from a script, for tests that need
exact statuses in an exact order (a Meetup API that fails twice, a Slack webhook
that answers 429). It records every request it receives.
"""

from __future__ import annotations

import threading
from collections import deque

from tests.stub_server import Received, StubServer
from tests.stub_server import Reply as Answer

__all__ = ["Answer", "Received", "ScriptedServer"]


class ScriptedServer(StubServer):
    """Answers each path from its queue of Answers, then with the default."""

    def __init__(self, default: Answer | None = None) -> None:
        self.default = default or Answer(200, {})
        self._scripts: dict[str, deque[Answer]] = {}
        self._script_lock = threading.Lock()
        super().__init__(self._next_answer)

    def script(self, path: str, *answers: Answer) -> None:
        with self._script_lock:
            self._scripts.setdefault(path, deque()).extend(answers)

    def _next_answer(self, received: Received) -> Answer:
        with self._script_lock:
            queue = self._scripts.get(received.path)
            return queue.popleft() if queue else self.default
