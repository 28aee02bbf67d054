"""The Meetup REST v2 profile API: members one per call, groups many per call.

The API wants its key in the query string and echoes the whole request URL, key
included, in `meta.url`; so neither a request URL nor a raw response is ever
logged, and every error message that leaves this module has the key removed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import requests
import tenacity

logger = logging.getLogger(__name__)

# Truncated exponential backoff with jitter for 5xx and network errors: about
# 1, 2, 4 s (plus up to 1 s of jitter), at most 8 s a wait, 4 attempts in all, so
# that a call ends well inside a function's timeout. Throttling is not retried
# here: the caller is told when to come back instead.
ATTEMPTS = 4
BACKOFF_INITIAL_S = 1.0
BACKOFF_MAX_S = 8.0
JITTER_S = 1.0
REQUEST_TIMEOUT_S = (5.0, 20.0)

# Meetup v2 pages hold at most 200 results, so one groups call asks for 200 ids.
GROUPS_PER_CALL = 200


class MeetupError(Exception):
    """Base of the errors below; messages never contain the API key."""


class MeetupUnauthorized(MeetupError):
    """401: the key is missing or wrong; a configuration error, not retried."""


class MeetupThrottled(MeetupError):
    """429, or 400 with code "throttled": come back after retry_after seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class MeetupRejected(MeetupError):
    """Another 4xx: the request itself is wrong; retrying cannot help."""


class MeetupUnavailable(MeetupError):
    """5xx or a network error, still failing after every retry."""


class _Retryable(MeetupError):
    """A 5xx or network error of one attempt."""


@dataclass
class RateLimit:
    """What the last answer said of the key's rate limit (None: not told)."""

    limit: int | None = None
    remaining: int | None = None
    reset_s: float | None = None

    @classmethod
    def from_headers(
        cls, headers: requests.structures.CaseInsensitiveDict
    ) -> RateLimit:
        return cls(
            limit=_int_or_none(headers.get("X-RateLimit-Limit")),
            remaining=_int_or_none(headers.get("X-RateLimit-Remaining")),
            reset_s=_float_or_none(headers.get("X-RateLimit-Reset")),
        )

    @property
    def exhausted(self) -> bool:
        return self.remaining is not None and self.remaining <= 0


class MeetupClient:
    """Fetches member and group profiles, with backoff, honouring the rate limit.

    One client serves one request of a function: it remembers the rate limit the
    last answer announced and stops (MeetupThrottled) rather than spend a call the
    key no longer has.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        session: requests.Session,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._session = session
        self._sleep = sleep
        self.rate_limit = RateLimit()

    def member(self, member_id: int) -> dict[str, Any] | None:
        """The member's profile, or None if Meetup does not know the id."""
        results = self._get("/2/members", {"member_id": str(member_id)})
        return next((r for r in results if r.get("id") == member_id), None)

    def groups(self, group_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """Profiles by id of the groups Meetup knows, in as few calls as it allows."""
        wanted = list(group_ids)
        found: dict[int, dict[str, Any]] = {}
        for start in range(0, len(wanted), GROUPS_PER_CALL):
            batch = wanted[start : start + GROUPS_PER_CALL]
            results = self._get(
                "/2/groups",
                {"group_id": ",".join(map(str, batch)), "page": str(len(batch))},
            )
            found.update({r["id"]: r for r in results if r.get("id") in batch})
        return found

    def _get(self, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
        if self.rate_limit.exhausted:
            raise MeetupThrottled(
                "the rate limit is used up", self.rate_limit.reset_s or 1.0
            )

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(_Retryable),
            wait=tenacity.wait_exponential_jitter(
                multiplier=BACKOFF_INITIAL_S, max=BACKOFF_MAX_S, jitter=JITTER_S
            ),
            stop=tenacity.stop_after_attempt(ATTEMPTS),
            sleep=self._sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            return retrying(self._get_once, path, params)
        except _Retryable as error:
            raise MeetupUnavailable(
                f"{path} failed {ATTEMPTS} times, last: {error}"
            ) from None

    def _get_once(self, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
        try:
            response = self._session.get(
                self._base_url + path,
                params={**params, "key": self._api_key},
                timeout=REQUEST_TIMEOUT_S,
            )
        except requests.RequestException as error:
            # requests puts the full URL, key included, in its messages: keep only
            # the kind of error.
            raise _Retryable(f"{type(error).__name__} calling {path}") from None

        self.rate_limit = RateLimit.from_headers(response.headers)
        status = response.status_code
        if status == 200:
            return _results(response, path)
        if status == 401:
            raise MeetupUnauthorized(f"{path} answered 401: the API key is rejected")
        if status == 429 or (status == 400 and _is_throttled(response)):
            raise MeetupThrottled(
                f"{path} answered {status}: throttled", self._retry_after(response)
            )
        if status == 408 or status >= 500:
            raise _Retryable(f"{path} answered {status}")
        raise MeetupRejected(f"{path} answered {status}")

    def _retry_after(self, response: requests.Response) -> float:
        header = _float_or_none(response.headers.get("Retry-After"))
        if header is not None:
            return header
        return self.rate_limit.reset_s or BACKOFF_MAX_S

    def _log_retry(self, retry_state: tenacity.RetryCallState) -> None:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        logger.warning(
            "Meetup API attempt %d failed (%s); retrying in %.1f s",
            retry_state.attempt_number,
            error,
            retry_state.next_action.sleep if retry_state.next_action else 0.0,
        )


def _results(response: requests.Response, path: str) -> list[dict[str, Any]]:
    try:
        body = response.json()
    except ValueError:
        raise _Retryable(f"{path} answered 200 with a body that is not JSON") from None

    results = body.get("results") if isinstance(body, dict) else None
    if not isinstance(results, list):
        raise _Retryable(f"{path} answered 200 without a results list")
    return [r for r in results if isinstance(r, dict)]


def _is_throttled(response: requests.Response) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False

    if not isinstance(body, dict):
        return False
    if body.get("code") == "throttled":
        return True
    errors = body.get("errors")
    return isinstance(errors, list) and any(
        isinstance(e, dict) and e.get("code") == "throttled" for e in errors
    )


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _float_or_none(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
