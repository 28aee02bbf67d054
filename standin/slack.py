"""A Slack incoming webhook: records each message, and paces its callers.

Slack takes about one message a second and tolerates short bursts; beyond that it
answers 429 with Retry-After (seconds). Here that is a token bucket of `burst`
messages refilled at `rate_per_second`. Each accepted message is appended to the
log file as one JSON line {"received_ms": ..., "message": {...}} and kept in
memory. Bodies that are not a JSON object with "text", "attachments" or "blocks"
get 400, as Slack's invalid_payload / no_text.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

from standin.config import SlackConfig

logger = logging.getLogger(__name__)

MAX_KEPT_MESSAGES = 10_000


class SlackWebhook:
    def __init__(self, config: SlackConfig) -> None:
        self.config = config
        self._clock = config.clock or time.monotonic
        self._log_path = Path(config.log_file) if config.log_file else None
        self._tokens = float(config.burst)
        self._refilled_at = self._clock()
        self._lock = threading.Lock()
        self.messages: list[dict[str, Any]] = []
        self.accepted = 0
        self.rate_limited = 0
        self.bad_requests = 0
        if self._log_path is not None:
            self._log_path.parent.mkdir(parents=True, exist_ok=True)

    def handle(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        """One POST: (status, headers, body) as Slack would answer."""
        try:
            message = json.loads(body)
        except ValueError:
            return self._bad("invalid_payload")
        if not isinstance(message, dict):
            return self._bad("invalid_payload")
        if not any(message.get(name) for name in ("text", "attachments", "blocks")):
            return self._bad("no_text")

        with self._lock:
            wait = self._take_token()
            if wait > 0:
                self.rate_limited += 1
                retry_after = max(1, math.ceil(wait))
                logger.info("Slack webhook: 429, retry after %d s", retry_after)
                return (
                    429,
                    {"Retry-After": str(retry_after), "Content-Type": "text/plain"},
                    b"rate_limited",
                )

            record = {"received_ms": int(time.time() * 1000), "message": message}
            self.accepted += 1
            self.messages.append(record)
            del self.messages[:-MAX_KEPT_MESSAGES]
            if self._log_path is not None:
                with self._log_path.open("a", encoding="utf-8") as log_file:
                    log_file.write(json.dumps(record, ensure_ascii=False) + "\n")
        return 200, {"Content-Type": "text/plain"}, b"ok"

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "messages": self.accepted,
                "rate_limited": self.rate_limited,
                "bad_requests": self.bad_requests,
                "log_file": str(self._log_path) if self._log_path else None,
            }

    def recorded(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.messages)

    def _take_token(self) -> float:
        """Take a token if there is one (0.0); else seconds until there is one."""
        now = self._clock()
        rate = self.config.rate_per_second
        self._tokens = min(
            float(self.config.burst), self._tokens + (now - self._refilled_at) * rate
        )
        self._refilled_at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / rate

    def _bad(self, reason: str) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            self.bad_requests += 1
        return 400, {"Content-Type": "text/plain"}, reason.encode()
