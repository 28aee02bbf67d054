"""The Meetup REST v2 profile API: /2/members and /2/groups, rate limited per key.

Answers have the v2 envelope {"results": [...], "meta": {...}}, and meta.url
repeats the request URL, key included, as the real API did: nothing here logs
a request URL or an answer. Every answer carries X-RateLimit-Limit, -Remaining
and -Reset (seconds until the key's window resets).

Rate limiting is a fixed window per key, starting with the key's first request:
`limit` requests are served per window; beyond that the answer is a throttle
(429, or v2's 400 "Client throttled"). A key that is throttled more than
`block_after` times in one window is blocked for `block_seconds`, as Meetup
blocked clients that ignored its headers. By construction no request is served
beyond the limit; the stats show the most requests served in any window.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode

from standin.config import ApiConfig
from standin.world import World

logger = logging.getLogger(__name__)

MAX_PAGE = 200

THROTTLED_V2 = {
    "problem": "Client throttled",
    "code": "throttled",
    "details": "Credentials have been throttled",
}
BLOCKED_V2 = {
    "problem": "Client throttled",
    "code": "throttled",
    "details": (
        "Credentials have been throttled more than the allowed times in one hour"
    ),
}
UNAUTHORIZED = {
    "problem": "You are not authorized to make that request",
    "code": "not_authorized",
    "details": "Invalid or missing API key",
}


@dataclass
class Verdict:
    """The rate limiter's answer for one request."""

    allowed: bool
    remaining: int
    reset_seconds: int
    blocked: bool = False


@dataclass
class _KeyState:
    window_start: float
    count: int = 0
    throttled_in_window: int = 0
    blocked_until: float = 0.0
    requests: int = 0
    throttled: int = 0
    blocks: int = 0
    max_in_window: int = 0


class RateLimiter:
    """A fixed window of `limit` requests per `window_seconds`, per key."""

    def __init__(
        self,
        limit: int,
        window_seconds: float,
        block_after: int | None,
        block_seconds: float,
        clock: Any = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window_seconds = window_seconds
        self.block_after = block_after
        self.block_seconds = block_seconds
        self._clock = clock
        self._keys: dict[str, _KeyState] = {}
        self._lock = threading.Lock()
        self.limit_exceeded = 0  # requests served beyond the limit: stays 0

    def check(self, key: str) -> Verdict:
        """Count one request of `key`; whether it may be served."""
        with self._lock:
            now = self._clock()
            state = self._keys.get(key)
            if state is None:
                state = self._keys[key] = _KeyState(window_start=now)
            state.requests += 1

            if now < state.blocked_until:
                state.throttled += 1
                return Verdict(False, 0, _ceil(state.blocked_until - now), True)

            if now >= state.window_start + self.window_seconds:
                state.window_start = now
                state.count = 0
                state.throttled_in_window = 0
            reset = _ceil(state.window_start + self.window_seconds - now)

            if state.count >= self.limit:
                state.throttled += 1
                state.throttled_in_window += 1
                if (
                    self.block_after is not None
                    and state.throttled_in_window > self.block_after
                ):
                    state.blocked_until = now + self.block_seconds
                    state.blocks += 1
                    return Verdict(False, 0, _ceil(self.block_seconds), True)
                return Verdict(False, 0, reset)

            state.count += 1
            state.max_in_window = max(state.max_in_window, state.count)
            if state.count > self.limit:
                self.limit_exceeded += 1
            return Verdict(True, self.limit - state.count, reset)

    def fresh(self) -> Verdict:
        """What a key that has not been used yet would be told."""
        return Verdict(True, self.limit, _ceil(self.window_seconds))

    def stats(self) -> dict[str, Any]:
        with self._lock:
            now = self._clock()
            keys = {
                _key_name(key): {
                    "requests": state.requests,
                    "throttled": state.throttled,
                    "blocks": state.blocks,
                    "blocked_for_s": max(0.0, round(state.blocked_until - now, 3)),
                    "max_requests_in_window": state.max_in_window,
                }
                for key, state in self._keys.items()
            }
            return {
                "limit": self.limit,
                "window_seconds": self.window_seconds,
                "max_requests_in_window": max(
                    (state.max_in_window for state in self._keys.values()), default=0
                ),
                "limit_exceeded": self.limit_exceeded,
                "keys": keys,
            }


@dataclass
class ApiAnswer:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _ApiCounters:
    requests: int = 0
    ok: int = 0
    empty_results: int = 0
    unauthorized: int = 0
    throttled: int = 0
    blocked: int = 0
    bad_requests: int = 0
    errors_injected: int = 0


class ProfileApi:
    """Answers GET /2/members and GET /2/groups from the world."""

    def __init__(self, world: World, api_key: str, config: ApiConfig) -> None:
        self._world = world
        self._api_key = api_key
        self.config = config
        self._sleep = config.sleep or time.sleep
        self.limiter = RateLimiter(
            config.limit,
            config.window_seconds,
            config.block_after,
            config.block_seconds,
            config.clock or time.monotonic,
        )
        self._rng = random.Random(f"{world.seed}/api")
        self._counters = _ApiCounters()
        self._lock = threading.Lock()

    def handle(
        self, path: str, query: str, authorization: str | None, base_url: str
    ) -> ApiAnswer:
        """One request; base_url is "http://host:port" as the client addressed it."""
        self._count("requests")
        if self.config.latency_ms > 0:
            self._sleep(self.config.latency_ms / 1000.0)

        params = parse_qs(query, keep_blank_values=True)
        key = _first(params, "key")
        if key is None and authorization and authorization.startswith("Bearer "):
            key = authorization[len("Bearer ") :].strip()
        if key != self._api_key:
            self._count("unauthorized")
            return self._answer(401, UNAUTHORIZED, self.limiter.fresh())

        verdict = self.limiter.check(key)
        if not verdict.allowed:
            return self._throttled(verdict)

        status = self._injected_error()
        if status is not None:
            self._count("errors_injected")
            body = {
                "problem": "Internal Server Error",
                "code": "server_error",
                "details": "An injected fault of the stand-in",
            }
            return self._answer(status, body, verdict)

        url = f"{base_url}{path}" + (f"?{query}" if query else "")
        try:
            if path == "/2/members":
                results = self._members(params)
                meta = _meta("Members", url, base_url)
                meta.update(total_count=len(results))
            elif path == "/2/groups":
                results, page_meta = self._groups(params, url)
                meta = _meta("Groups", url, base_url)
                meta.update(page_meta)
            else:
                self._count("bad_requests")
                body = {"problem": "Not found", "code": "not_found", "details": path}
                return self._answer(404, body, verdict)
        except ValueError as error:
            self._count("bad_requests")
            body = {
                "problem": "Bad request",
                "code": "bad_request",
                "details": str(error),
            }
            return self._answer(400, body, verdict)

        self._count("ok")
        if not results:
            self._count("empty_results")
        meta["count"] = len(results)
        return self._answer(200, {"results": results, "meta": meta}, verdict)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            counters = dict(vars(self._counters))
        return {**counters, **self.limiter.stats()}

    def _members(self, params: dict[str, list[str]]) -> list[dict[str, Any]]:
        raw = _first(params, "member_id")
        if raw is None:
            raise ValueError("member_id is required")
        try:
            member_id = int(raw)
        except ValueError:
            raise ValueError("member_id takes one integer id") from None
        profile = self._world.member_profile(member_id)
        return [] if profile is None else [profile]

    def _groups(
        self, params: dict[str, list[str]], url: str
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        raw = _first(params, "group_id")
        if raw is None:
            raise ValueError("group_id is required")
        try:
            group_ids = [int(part) for part in raw.split(",") if part.strip()]
            page = int(_first(params, "page") or MAX_PAGE)
            offset = int(_first(params, "offset") or 0)
        except ValueError:
            raise ValueError(
                "group_id takes integer ids separated by commas; page and offset "
                "take integers"
            ) from None
        if not 1 <= page <= MAX_PAGE or offset < 0:
            raise ValueError(f"page must be 1 to {MAX_PAGE} and offset >= 0")

        profiles = [self._world.group_profile(group_id) for group_id in group_ids]
        found = [profile for profile in profiles if profile is not None]
        more = (offset + 1) * page < len(found)
        page_meta = {
            "total_count": len(found),
            "next": _with_param(url, "offset", offset + 1) if more else "",
        }
        return found[offset * page : (offset + 1) * page], page_meta

    def _throttled(self, verdict: Verdict) -> ApiAnswer:
        self._count("blocked" if verdict.blocked else "throttled")
        if self.config.throttle_style == "400":
            body: dict[str, Any] = BLOCKED_V2 if verdict.blocked else THROTTLED_V2
            return self._answer(400, body, verdict)
        message = (BLOCKED_V2 if verdict.blocked else THROTTLED_V2)["details"]
        body = {"errors": [{"code": "throttled", "message": message}]}
        return self._answer(429, body, verdict)

    def _injected_error(self) -> int | None:
        """500 or 503 for a share error_rate of the answers; None otherwise."""
        rate = self.config.error_rate
        if rate <= 0.0:
            return None
        with self._lock:
            if self._rng.random() >= rate:
                return None
            return self._rng.choice((500, 503))

    def _answer(self, status: int, body: dict[str, Any], verdict: Verdict) -> ApiAnswer:
        return ApiAnswer(
            status,
            json.dumps(body, ensure_ascii=False).encode(),
            {
                "Content-Type": "application/json;charset=utf-8",
                "X-RateLimit-Limit": str(self.limiter.limit),
                "X-RateLimit-Remaining": str(verdict.remaining),
                "X-RateLimit-Reset": str(verdict.reset_seconds),
            },
        )

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self._counters, name, getattr(self._counters, name) + 1)


def _meta(method: str, url: str, base_url: str) -> dict[str, Any]:
    path = "/2/members" if method == "Members" else "/2/groups"
    return {
        "next": "",
        "method": method,
        "link": f"{base_url}{path}",
        "title": f"Meetup {method} v2",
        "url": url,
        "id": "",
        "updated": int(time.time() * 1000),
        "description": f"The stand-in's {method.lower()}",
        "lat": "",
        "lon": "",
    }


def _first(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    return values[0] if values else None


def _with_param(url: str, name: str, value: Any) -> str:
    base, _, query = url.partition("?")
    params = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
    params[name] = str(value)
    return f"{base}?{urlencode(params, safe=',')}"


def _ceil(seconds: float) -> int:
    return max(0, math.ceil(seconds - 1e-9))


def _key_name(key: str) -> str:
    """How stats name a key without showing it."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:10]
