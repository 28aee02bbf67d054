"""What the collector and the Cloud Functions agree on, written down once here.

The functions keep their own copy of these facts (functions/ imports nothing from
here, and this package imports nothing from there); tests/collector pins both
sides against each other through real requests.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Stream labels, in the order the status line lists them.
STREAM_LABELS: tuple[str, ...] = (
    "rsvps",
    "open_events",
    "event_comments",
    "photos",
    "open_venues",
)

# The field that names an item, by stream; every stream keeps its change time in
# "mtime" (milliseconds since the epoch).
ITEM_ID_FIELDS: Mapping[str, str] = {
    "rsvps": "rsvp_id",
    "open_events": "id",
    "event_comments": "id",
    "photos": "photo_id",
    "open_venues": "id",
}
MTIME_FIELD = "mtime"

# Where member and group ids live in an item, as a path of keys, by stream.
MEMBER_ID_PATHS: Mapping[str, tuple[str, ...]] = {
    "rsvps": ("member", "member_id"),
    "event_comments": ("member", "member_id"),
    "photos": ("member", "member_id"),
}
GROUP_ID_PATHS: Mapping[str, tuple[str, ...]] = {
    "rsvps": ("group", "group_id"),
    "open_events": ("group", "id"),
    "event_comments": ("group", "id"),
    "photos": ("photo_album", "group", "id"),
}

# The public stream URLs of stream.meetup.com; open_venues must keep its bare
# "trickle" flag on every reconnect.
DEFAULT_STREAM_URLS: Mapping[str, str] = {
    "rsvps": "http://stream.meetup.com/2/rsvps",
    "open_events": "http://stream.meetup.com/2/open_events",
    "event_comments": "http://stream.meetup.com/2/event_comments",
    "photos": "http://stream.meetup.com/2/photos",
    "open_venues": "http://stream.meetup.com/2/open_venues?trickle",
}
SINCE_MTIME_PARAM = "since_mtime"
SINCE_COUNT_PARAM = "since_count"

# save_stream_data: POST {url}?label=L&bucket=B with one raw item per line.
STREAM_LABEL_PARAM = "label"
STREAM_BUCKET_PARAM = "bucket"
STREAM_CONTENT_TYPE = "application/x-ndjson"
STREAM_BODY_LIMIT_BYTES = 10 * 1024 * 1024
STREAM_REJECTED_FIELD = "rejected"

# save_member_data / save_group_data: POST {url}?collection=C with a JSON body
# {"member_id": [...]} or {"group_id": [...]}.
PROFILE_COLLECTION_PARAM = "collection"
MEMBER_ID_FIELD = "member_id"
GROUP_ID_FIELD = "group_id"
MAX_MEMBER_IDS_PER_CALL = 10
MAX_GROUP_IDS_PER_CALL = 200
PROFILE_STORED_FIELD = "stored"
PROFILE_NOT_FOUND_FIELD = "not_found"
PROFILE_REMAINING_FIELD = "remaining"
PROFILE_RETRY_AFTER_FIELD = "retry_after"
PROFILE_ERROR_CODE_FIELD = "code"
MEETUP_UNAUTHORIZED_CODE = "meetup_unauthorized"  # 502: keep the ids, retry later
MEETUP_REJECTED_CODE = "meetup_rejected"  # 502: Meetup refused the request for good
RATE_LIMIT_REMAINING_HEADER = "X-RateLimit-Remaining"
RATE_LIMIT_RESET_HEADER = "X-RateLimit-Reset"

# How an answer's status is handled by the collector.
STATUS_TOO_LARGE = 413
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


def is_retryable_status(status: int) -> bool:
    """408, 429 and every 5xx mean "try again later"; the work is not refused."""
    return status in RETRYABLE_STATUSES or 500 <= status <= 599


def is_refused_status(status: int) -> bool:
    """Every other 4xx but 413 refuses the request for good."""
    return (
        400 <= status <= 499
        and status != STATUS_TOO_LARGE
        and not is_retryable_status(status)
    )


def nested_value(item: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """The value at path in item, or None where any step is missing."""
    value: Any = item
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value
