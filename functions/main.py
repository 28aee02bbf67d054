"""The four Cloud Functions of the meetup.com collector.

- save_stream_data (HTTP): stores stream items in Cloud Storage as
  `{label}/{item_id}_{mtime}.json`, create-only, so a replayed item is a no-op.
- save_member_data, save_group_data (HTTP): fetch profiles from the Meetup API and
  merge them into Firestore as documents `m{id}`.
- report_slack (Pub/Sub CloudEvent): turns an error LogEntry into a Slack message.

Deploy from this folder as it is (`--source=functions --entry-point=NAME`). With
LOCAL_DATA_DIR set, the same code keeps objects and documents as files instead
(stores.py), for running with no cloud at all.

Settings come from environment variables, read once per instance at cold start:
ALLOWED_BUCKETS, ALLOWED_COLLECTIONS (comma lists), MEETUP_API_URL, MEETUP_API_KEY,
SLACK_WEBHOOK_URL, GOOGLE_CLOUD_PROJECT, LOCAL_DATA_DIR, LOCAL_FSYNC,
MAX_BODY_BYTES, STORAGE_RETRY_SECONDS, REPORT_FOLD_SECONDS, REPORT_MAX_AGE_SECONDS.
"""

from __future__ import annotations

import base64
import datetime
import functools
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flask
import functions_framework
import requests
from cloudevents.http import CloudEvent

import meetup_api
import slack_report
import stores

logger = logging.getLogger(__name__)

# What the collector and these functions agree on. collector/contract.py holds the
# same facts on the VM side; tests/test_contract.py pins the two together.
ID_FIELDS = {
    "rsvps": "rsvp_id",
    "open_events": "id",
    "event_comments": "id",
    "photos": "photo_id",
    "open_venues": "id",
}
MTIME_FIELD = "mtime"
MAX_MEMBER_IDS = 10
MAX_GROUP_IDS = 200
NDJSON_TYPES = ("application/x-ndjson", "application/jsonl", "application/json-seq")
JSON_TYPES = ("application/json", "text/plain", "")

# Names that go into object paths and document ids: no "/", "..", NUL, whitespace
# or percent-escapes can pass these.
BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{1,220}[a-z0-9]")
COLLECTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,100}")
ITEM_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
PROFILE_ID = re.compile(r"[1-9][0-9]{0,17}")


@dataclass(frozen=True)
class Settings:
    allowed_buckets: frozenset[str]
    allowed_collections: frozenset[str]
    meetup_api_url: str
    meetup_api_key: str
    slack_webhook_url: str
    project: str | None
    local_data_dir: Path | None
    local_fsync: bool
    max_body_bytes: int
    report_fold_s: float
    report_max_age_s: float
    storage_retry_s: float

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Settings:
        def names(key: str) -> frozenset[str]:
            return frozenset(
                n.strip() for n in env.get(key, "").split(",") if n.strip()
            )

        local_dir = env.get("LOCAL_DATA_DIR", "").strip()
        return cls(
            allowed_buckets=names("ALLOWED_BUCKETS"),
            allowed_collections=names("ALLOWED_COLLECTIONS"),
            meetup_api_url=env.get("MEETUP_API_URL", "https://api.meetup.com"),
            meetup_api_key=env.get("MEETUP_API_KEY", ""),
            slack_webhook_url=env.get("SLACK_WEBHOOK_URL", ""),
            project=env.get("GOOGLE_CLOUD_PROJECT") or env.get("GCP_PROJECT"),
            local_data_dir=Path(local_dir) if local_dir else None,
            local_fsync=env.get("LOCAL_FSYNC", "").lower() in ("1", "true", "yes"),
            max_body_bytes=int(env.get("MAX_BODY_BYTES", 10 * 1024 * 1024)),
            report_fold_s=float(env.get("REPORT_FOLD_SECONDS", 300)),
            report_max_age_s=float(env.get("REPORT_MAX_AGE_SECONDS", 3600)),
            storage_retry_s=float(
                env.get("STORAGE_RETRY_SECONDS", stores.DEFAULT_RETRY_DEADLINE_S)
            ),
        )

    def missing_for(self, target: str) -> list[str]:
        """The settings a function cannot work without that are not set."""
        needs = {
            "save_stream_data": {"ALLOWED_BUCKETS": self.allowed_buckets},
            "save_member_data": {"ALLOWED_COLLECTIONS": self.allowed_collections},
            "save_group_data": {"ALLOWED_COLLECTIONS": self.allowed_collections},
            "report_slack": {"SLACK_WEBHOOK_URL": self.slack_webhook_url},
        }
        return [key for key, value in needs.get(target, {}).items() if not value]


class BadRequest(Exception):
    """The request is wrong; answered with its status and this message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Stdout:
    """Whatever sys.stdout is at the time of each write (test runners swap it)."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


def _setup_logging() -> None:
    # Cloud Functions reads one JSON object per stdout line as a structured entry
    # with a severity. Set up once per process, even when tests load this module
    # several times.
    root = logging.getLogger()
    if not any(getattr(h, "_meetup_collector", False) for h in root.handlers):
        from google.cloud.logging.handlers import StructuredLogHandler

        handler = StructuredLogHandler(stream=_Stdout())
        handler._meetup_collector = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.setLevel(logging.INFO)
    # urllib3 logs request lines, query strings and so the Meetup key, at DEBUG.
    logging.getLogger("urllib3").setLevel(logging.WARNING)


_setup_logging()
SETTINGS = Settings.from_env(dict(os.environ))

# Fail fast at cold start: a function deployed without what it needs says so in
# its first log line instead of failing every request.
_missing = SETTINGS.missing_for(os.environ.get("FUNCTION_TARGET", ""))
if _missing:
    logger.critical("missing settings: %s", ", ".join(_missing))
    raise RuntimeError(f"set {', '.join(_missing)} for this function")


# Clients are made once per instance and reused by every request it serves, so a
# request pays for no connection set-up. They are made on first use, so a function
# builds only the clients it needs.
@functools.cache
def object_store() -> stores.ObjectStore:
    if SETTINGS.local_data_dir:
        return stores.LocalObjectStore(SETTINGS.local_data_dir, SETTINGS.local_fsync)
    return stores.GcsObjectStore(SETTINGS.project, SETTINGS.storage_retry_s)


@functools.cache
def document_store() -> stores.DocumentStore:
    if SETTINGS.local_data_dir:
        return stores.LocalDocumentStore(SETTINGS.local_data_dir)
    return stores.FirestoreDocumentStore(SETTINGS.project)


@functools.cache
def http_session() -> requests.Session:
    return requests.Session()


@functools.cache
def slack_reporter() -> slack_report.SlackReporter:
    return slack_report.SlackReporter(
        SETTINGS.slack_webhook_url, http_session(), SETTINGS.report_fold_s
    )


def _answer(status: int, body: dict[str, Any], **headers: str) -> flask.Response:
    response = flask.make_response(flask.jsonify(body), status)
    for name, value in headers.items():
        response.headers[name.replace("_", "-")] = value
    return response


def _handles_bad_requests(function):
    @functools.wraps(function)
    def wrapper(request: flask.Request) -> flask.Response:
        try:
            return function(request)
        except BadRequest as error:
            logger.warning(
                "%s refused a request with %d: %s",
                function.__name__,
                error.status,
                error,
            )
            return _answer(error.status, {"error": str(error)})

    return wrapper


# ---------------------------------------------------------------- save_stream_data


@dataclass
class StreamItem:
    index: int
    raw: bytes
    object_name: str


@functions_framework.http
@_handles_bad_requests
def save_stream_data(request: flask.Request) -> flask.Response:
    """Store a chunk of stream items, each as `{label}/{item_id}_{mtime}.json`."""
    _require_post(request)
    label = _stream_label(request.args.get("label"))
    bucket = _allowed_name(
        request.args.get("bucket"), "bucket", BUCKET_NAME, SETTINGS.allowed_buckets
    )
    body = _read_body(request)
    received_ms = int(time.time() * 1000)

    items, rejected = [], []
    for index, raw in enumerate(_split_items(body, request.mimetype)):
        try:
            items.append(_stream_item(index, raw, label, received_ms))
        except ValueError as reason:
            rejected.append({"index": index, "reason": str(reason)})

    stored, already_stored, failures = _store_items(bucket, items)
    counts = {
        "label": label,
        "stored": stored,
        "already_stored": already_stored,
        "rejected": rejected,
    }
    if rejected:
        logger.error(
            "rejected %d of %d %s items: %s",
            len(rejected),
            len(items) + len(rejected),
            label,
            "; ".join(f"#{r['index']}: {r['reason']}" for r in rejected[:5]),
            extra={"json_fields": {"label": label, "bucket": bucket}},
        )
    if failures:
        logger.warning(
            "could not store %d of %d %s items, the caller will retry: %s",
            len(failures),
            len(items),
            label,
            failures[0],
            extra={"json_fields": {"label": label, "bucket": bucket}},
        )
        return _answer(503, {"error": "storage unavailable", **counts}, Retry_After="1")

    logger.info(
        "stored %d %s items (%d already stored, %d rejected)",
        stored,
        label,
        already_stored,
        len(rejected),
    )
    return _answer(200, counts)


def _stream_label(label: str | None) -> str:
    if not label:
        raise BadRequest(400, f"label is missing: one of {', '.join(ID_FIELDS)}")
    if label not in ID_FIELDS:
        raise BadRequest(
            400, f"unknown label {label[:40]!r}: one of {', '.join(ID_FIELDS)}"
        )
    return label


def _split_items(body: bytes, mimetype: str) -> Iterator[bytes]:
    """The raw JSON text of each item of the body, exactly as received."""
    if mimetype in NDJSON_TYPES:
        for line in body.split(b"\n"):
            line = line.strip(b"\r\t ")
            if line:
                yield line
        return

    text = _decode(body)
    stripped = text.strip()
    if stripped.startswith("{"):
        yield stripped.encode()
    elif stripped.startswith("["):
        yield from (raw.encode() for raw in _array_elements(stripped))
    else:
        raise BadRequest(400, "the body must be a JSON object or an array of objects")


def _array_elements(text: str) -> Iterator[str]:
    # Walk the array with raw_decode so each element's text is kept exactly as
    # sent, escaped slashes and all, instead of being parsed and re-serialized.
    decoder = json.JSONDecoder()
    elements, position = [], _skip_space(text, 1)
    while text[position : position + 1] != "]":
        try:
            _, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            raise BadRequest(400, f"the body is not valid JSON: {error}") from None
        elements.append(text[position:end])

        position = _skip_space(text, end)
        if text[position : position + 1] == ",":
            position = _skip_space(text, position + 1)
        elif text[position : position + 1] != "]":
            raise BadRequest(400, f"the body is not valid JSON at character {position}")
    if text[position + 1 :].strip():
        raise BadRequest(400, "the body has data after the JSON array")
    return iter(elements)


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def _stream_item(index: int, raw: bytes, label: str, received_ms: int) -> StreamItem:
    try:
        item = json.loads(raw)
    except ValueError:
        raise ValueError("not valid JSON") from None
    if not isinstance(item, dict):
        raise ValueError("not a JSON object")

    id_field = ID_FIELDS[label]
    item_id = item.get(id_field)
    if item_id is None:
        raise ValueError(f"no {id_field}")
    if isinstance(item_id, bool) or not isinstance(item_id, int | str):
        raise ValueError(f"{id_field} is not a number or a string")
    if not ITEM_ID.fullmatch(str(item_id)):
        raise ValueError(f"{id_field} has characters an object name cannot hold")

    mtime = item.get(MTIME_FIELD)
    if mtime is None:
        mtime = received_ms
    elif isinstance(mtime, bool) or not isinstance(mtime, int) or mtime < 0:
        raise ValueError(f"{MTIME_FIELD} is not a time in milliseconds")
    return StreamItem(index, raw, f"{label}/{item_id}_{mtime}.json")


def _store_items(bucket: str, items: list[StreamItem]) -> tuple[int, int, list[str]]:
    """Create every item: (stored, already stored, failures)."""
    results = object_store().create_all(
        bucket, [(item.object_name, item.raw) for item in items]
    )

    stored = already_stored = 0
    failures: list[str] = []
    for item, result in zip(items, results, strict=True):
        if isinstance(result, stores.StoreUnavailable):
            failures.append(f"{item.object_name}: {result}")
        elif result:
            stored += 1
        else:
            already_stored += 1
    return stored, already_stored, failures


# ------------------------------------------------ save_member_data, save_group_data


@functions_framework.http
@_handles_bad_requests
def save_member_data(request: flask.Request) -> flask.Response:
    """Fetch member profiles (one Meetup call each) and merge them into Firestore."""
    return _save_profiles(request, "member_id", MAX_MEMBER_IDS)


@functions_framework.http
@_handles_bad_requests
def save_group_data(request: flask.Request) -> flask.Response:
    """Fetch group profiles (many per Meetup call) and merge them into Firestore."""
    return _save_profiles(request, "group_id", MAX_GROUP_IDS)


def _save_profiles(
    request: flask.Request, id_name: str, max_ids: int
) -> flask.Response:
    _require_post(request)
    if "api_key" in request.args or "key" in request.args:
        raise BadRequest(400, "never send an API key in the URL; use the JSON body")
    body = _json_body(request)
    collection = _allowed_name(
        request.args.get("collection", body.get("collection")),
        "collection",
        COLLECTION_NAME,
        SETTINGS.allowed_collections,
    )
    ids = _profile_ids(request.args.get(id_name, body.get(id_name)), id_name, max_ids)
    api_key = body.get("api_key") or SETTINGS.meetup_api_key
    if not isinstance(api_key, str) or not api_key:
        logger.error("no Meetup API key: set MEETUP_API_KEY")
        return _answer(500, {"error": "no Meetup API key is configured"})

    client = meetup_api.MeetupClient(SETTINGS.meetup_api_url, api_key, http_session())
    stored: list[int] = []
    not_found: list[int] = []
    try:
        if id_name == "member_id":
            for member_id in ids:
                profile = client.member(member_id)
                if profile is None:
                    not_found.append(member_id)
                else:
                    _merge_profiles(collection, {member_id: profile})
                    stored.append(member_id)
        else:
            profiles = client.groups(ids)
            not_found = [i for i in ids if i not in profiles]
            _merge_profiles(collection, profiles)
            stored = [i for i in ids if i in profiles]
    except meetup_api.MeetupThrottled as error:
        return _profiles_throttled(client, collection, ids, stored, not_found, error)
    except meetup_api.MeetupUnauthorized as error:
        logger.error(
            "%s; fix MEETUP_API_KEY",
            error,
            extra={"json_fields": {"collection": collection, id_name + "s": ids}},
        )
        return _answer(
            502,
            {"error": "the Meetup API rejected the key", "code": "meetup_unauthorized"},
        )
    except meetup_api.MeetupRejected as error:
        logger.error("%s", error, extra={"json_fields": {id_name + "s": ids}})
        return _answer(502, {"error": str(error), "code": "meetup_rejected"})
    except (meetup_api.MeetupUnavailable, stores.StoreUnavailable) as error:
        logger.warning("%s; the caller will retry", error)
        return _answer(
            503,
            {"error": str(error), "stored": stored},
            Retry_After="5",
            **_rate_limit_headers(client),
        )

    if not_found:
        logger.warning(
            "Meetup does not know %d of %d %ss: %s",
            len(not_found),
            len(ids),
            id_name,
            not_found[:20],
            extra={"json_fields": {"collection": collection}},
        )
    logger.info("stored %d profiles in %s", len(stored), collection)
    return _answer(
        200, {"stored": stored, "not_found": not_found}, **_rate_limit_headers(client)
    )


def _profiles_throttled(
    client: meetup_api.MeetupClient,
    collection: str,
    ids: list[int],
    stored: list[int],
    not_found: list[int],
    error: meetup_api.MeetupThrottled,
) -> flask.Response:
    done = set(stored) | set(not_found)
    remaining = [i for i in ids if i not in done]
    retry_after = max(1, round(error.retry_after))
    logger.warning(
        "Meetup throttled after %d of %d profiles; asked the caller to come back in"
        " %d s",
        len(done),
        len(ids),
        retry_after,
        extra={"json_fields": {"collection": collection}},
    )
    return _answer(
        429,
        {
            "error": "the Meetup API is throttling this key",
            "stored": stored,
            "not_found": not_found,
            "remaining": remaining,
            "retry_after": retry_after,
        },
        Retry_After=str(retry_after),
        **_rate_limit_headers(client),
    )


def _merge_profiles(collection: str, profiles: dict[int, dict[str, Any]]) -> None:
    if not profiles:
        return
    fetched_at = datetime.datetime.now(datetime.UTC)
    document_store().merge(
        collection,
        {
            f"m{i}": {**profile, "fetched_at": fetched_at}
            for i, profile in profiles.items()
        },
    )


def _rate_limit_headers(client: meetup_api.MeetupClient) -> dict[str, str]:
    limit = client.rate_limit
    headers = {}
    if limit.remaining is not None:
        headers["X_RateLimit_Remaining"] = str(limit.remaining)
    if limit.reset_s is not None:
        headers["X_RateLimit_Reset"] = f"{limit.reset_s:g}"
    return headers


def _profile_ids(value: Any, id_name: str, max_ids: int) -> list[int]:
    if value is None or value == "" or value == []:
        raise BadRequest(400, f"{id_name} is missing")
    if isinstance(value, str):
        candidates: list[Any] = value.split(",")
    elif isinstance(value, list):
        candidates = value
    else:
        candidates = [value]

    ids: list[int] = []
    for candidate in candidates:
        text = candidate.strip() if isinstance(candidate, str) else candidate
        if isinstance(text, bool) or not PROFILE_ID.fullmatch(str(text)):
            raise BadRequest(
                400, f"{id_name} {str(candidate)[:40]!r} is not a positive integer"
            )
        if int(text) not in ids:
            ids.append(int(text))
    if len(ids) > max_ids:
        raise BadRequest(400, f"at most {max_ids} {id_name}s per call, got {len(ids)}")
    return ids


# ------------------------------------------------------------------ report_slack


@functions_framework.cloud_event
def report_slack(cloud_event: CloudEvent) -> None:
    """Post the error LogEntry carried by a Pub/Sub message to Slack.

    A message that is not a LogEntry is logged and acknowledged: delivering it
    again would not help. When Slack cannot take the message, this raises so that
    Pub/Sub delivers the event again, unless the event is older than
    REPORT_MAX_AGE_SECONDS, which ends the retries.

    This function must never feed itself: its own failures would come back through
    the error sink as new events, and fail again. Three guards prevent that: it
    logs at WARNING at most (a failure to post is signalled by raising, which the
    platform logs under this function's name); the log sink that feeds its topic
    excludes this function's entries (deploy/); and it drops any entry that comes
    from itself.
    """
    age_s = _event_age_s(cloud_event)
    if age_s is not None and age_s > SETTINGS.report_max_age_s:
        logger.warning("dropped an error report %.0f s old, too old to post", age_s)
        return

    try:
        entry = json.loads(base64.b64decode(cloud_event.data["message"]["data"]))
        report = slack_report.parse_log_entry(entry)
    except (KeyError, TypeError, ValueError) as error:
        logger.warning("acknowledged a message that is not a LogEntry: %s", error)
        return

    if _is_own_entry(report):
        logger.info("ignored an entry of report_slack itself")
        return

    try:
        slack_reporter().report(report)
    except slack_report.SlackUnavailable as error:
        logger.warning("Slack is unavailable, Pub/Sub will retry: %s", error)
        raise


def _event_age_s(cloud_event: CloudEvent) -> float | None:
    published = cloud_event.get("time")
    if not published:
        return None
    try:
        moment = datetime.datetime.fromisoformat(published.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (datetime.datetime.now(datetime.UTC) - moment).total_seconds()


def _is_own_entry(report: slack_report.Report) -> bool:
    names = {"report_slack", "report-slack", os.environ.get("K_SERVICE", "")}
    return any(name and report.source.endswith(" " + name) for name in names)


# ---------------------------------------------------------------- request checks


def _require_post(request: flask.Request) -> None:
    if request.method != "POST":
        raise BadRequest(405, f"use POST, not {request.method}")


def _read_limited(request: flask.Request) -> bytes:
    limit = SETTINGS.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise BadRequest(413, f"the body is over {limit} bytes")
    body = request.stream.read(limit + 1)
    if len(body) > limit:
        raise BadRequest(413, f"the body is over {limit} bytes")
    return body


def _read_body(request: flask.Request) -> bytes:
    body = _read_limited(request)
    if not body.strip():
        raise BadRequest(400, "the body is empty")

    if request.mimetype not in NDJSON_TYPES + JSON_TYPES:
        raise BadRequest(
            415,
            f"content type {request.mimetype!r}: send application/json or "
            "application/x-ndjson",
        )
    return body


def _json_body(request: flask.Request) -> dict[str, Any]:
    """The JSON object of a profile request; {} for an empty body."""
    body = _read_limited(request)
    if not body.strip():
        return {}

    try:
        value = json.loads(_decode(body))
    except ValueError:
        raise BadRequest(400, "the body is not valid JSON") from None
    if not isinstance(value, dict):
        raise BadRequest(400, "the body must be a JSON object")
    return value


def _decode(body: bytes) -> str:
    try:
        return body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadRequest(400, "the body is not UTF-8") from None


def _allowed_name(
    value: Any, what: str, pattern: re.Pattern[str], allowed: frozenset[str]
) -> str:
    if value is None or value == "":
        raise BadRequest(400, f"{what} is missing")
    if not isinstance(value, str) or not pattern.fullmatch(value) or ".." in value:
        raise BadRequest(400, f"{what} {str(value)[:80]!r} is not a valid name")
    if value not in allowed:
        raise BadRequest(403, f"{what} {value!r} is not allowed")
    return value
