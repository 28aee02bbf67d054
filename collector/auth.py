"""How the trigger proves who it is to the functions.

"none": no Authorization header (the local functions, or public ones).
"google_id_token": an identity token for each function URL (its audience),
fetched with google.oauth2.id_token.fetch_id_token from the VM's metadata
server or the service account in GOOGLE_APPLICATION_CREDENTIALS, cached until
shortly before it expires. Tokens are never logged.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable

import requests

logger = logging.getLogger(__name__)

# A token whose expiry cannot be read is used this long, then fetched again.
UNKNOWN_LIFETIME_SECONDS = 300.0

TokenFetcher = Callable[[str], str]


class AuthUnavailable(RuntimeError):
    """No identity token could be had right now; worth retrying later."""


def _fetch_google_id_token(audience: str) -> str:
    import google.auth.exceptions
    import google.auth.transport.requests
    import google.oauth2.id_token

    try:
        return google.oauth2.id_token.fetch_id_token(
            google.auth.transport.requests.Request(), audience
        )
    except google.auth.exceptions.GoogleAuthError as error:
        # The message of these errors names the failure, never the token.
        raise AuthUnavailable(f"no identity token for {audience}: {error}") from error


def token_expiry(token: str) -> float | None:
    """The "exp" claim of a JWT (seconds since the epoch), read without checking
    the signature; None if the token is not a readable JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None

    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError):
        return None
    expiry = claims.get("exp") if isinstance(claims, dict) else None
    return float(expiry) if isinstance(expiry, int | float) else None


class IdTokenCache:
    """Identity tokens by audience, fetched again refresh_before seconds before
    they expire."""

    def __init__(
        self,
        refresh_before: float = 300.0,
        fetch: TokenFetcher = _fetch_google_id_token,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._refresh_before = refresh_before
        self._fetch = fetch
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[str, float]] = {}
        self.fetches = 0

    def token(self, audience: str) -> str:
        with self._lock:
            now = self._clock()
            cached = self._tokens.get(audience)
            if cached is not None and now < cached[1] - self._refresh_before:
                return cached[0]

            token = self._fetch(audience)
            self.fetches += 1
            expiry = token_expiry(token)
            if expiry is None:
                expiry = now + UNKNOWN_LIFETIME_SECONDS + self._refresh_before
            self._tokens[audience] = (token, expiry)
            logger.debug(
                "fetched an identity token for %s, valid for %.0f s",
                audience,
                expiry - now,
            )
            return token


class IdTokenAuth(requests.auth.AuthBase):
    """Adds "Authorization: Bearer <identity token>" for one function URL."""

    def __init__(self, audience: str, cache: IdTokenCache) -> None:
        self.audience = audience
        self._cache = cache

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._cache.token(self.audience)}"
        return request

    def __repr__(self) -> str:
        return f"IdTokenAuth(audience={self.audience!r})"


def audience_of(function_url: str) -> str:
    """A function URL without query or fragment: the audience of its tokens."""
    parts = urllib.parse.urlsplit(function_url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


class FunctionAuth:
    """Builds the requests auth object for each function URL, by config mode."""

    def __init__(self, mode: str, cache: IdTokenCache | None = None) -> None:
        if mode not in ("none", "google_id_token"):
            raise ValueError(f"unknown auth mode {mode!r}")
        self.mode = mode
        self._cache = cache if cache is not None else IdTokenCache()

    def for_url(self, function_url: str) -> requests.auth.AuthBase | None:
        if self.mode == "none":
            return None
        return IdTokenAuth(audience_of(function_url), self._cache)
