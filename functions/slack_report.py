"""Error reports for Slack: a Cloud Logging LogEntry becomes one Slack message.

Identical reports within a window are folded into one, and posts keep to Slack's
pace for incoming webhooks (about one message a second; 429 with Retry-After).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests
import tenacity

logger = logging.getLogger(__name__)

MIN_POST_INTERVAL_S = 1.0
# A Retry-After longer than this is not waited out inside the function: it raises
# and lets Pub/Sub deliver the event again later.
MAX_INLINE_WAIT_S = 10.0
POST_ATTEMPTS = 4
POST_TIMEOUT_S = (5.0, 10.0)
MESSAGE_TEXT_LIMIT = 2_500

SEVERITY_COLOURS = {
    "DEFAULT": "#9e9e9e",
    "DEBUG": "#9e9e9e",
    "INFO": "#2e7d32",
    "NOTICE": "#2e7d32",
    "WARNING": "#f9a825",
    "ERROR": "#d32f2f",
    "CRITICAL": "#8e0000",
    "ALERT": "#8e0000",
    "EMERGENCY": "#4a0000",
}

# Fields of a jsonPayload that say where and what; shown in this order.
CONTEXT_FIELDS = (
    "stream_label",
    "label",
    "bucket",
    "collection",
    "item_ids",
    "member_ids",
    "group_ids",
    "status",
    "attempts",
    "reason",
)


class SlackUnavailable(RuntimeError):
    """Slack could not take the message now; the event should be delivered again."""


@dataclass(frozen=True)
class Report:
    """What one LogEntry says, reduced to what a person needs to act."""

    severity: str
    source: str
    message: str
    timestamp: str
    log_name: str
    context: dict[str, Any] = field(default_factory=dict)

    @property
    def fingerprint(self) -> tuple[str, str, str]:
        return (self.severity, self.source, self.message)


def parse_log_entry(entry: Any) -> Report:
    """A Report from a LogEntry as a log sink publishes it; ValueError if it is not
    one."""
    if not isinstance(entry, dict):
        raise ValueError("a LogEntry is a JSON object")

    payload = entry.get("jsonPayload")
    if isinstance(payload, dict):
        message = str(payload.get("message", "")) or json.dumps(payload)[:200]
        context = {k: payload[k] for k in CONTEXT_FIELDS if k in payload}
    elif isinstance(entry.get("textPayload"), str):
        message, context = entry["textPayload"], {}
    elif isinstance(entry.get("protoPayload"), dict):
        message = str(entry["protoPayload"].get("status", {}).get("message", ""))
        context = {}
    else:
        raise ValueError("the LogEntry has no jsonPayload, textPayload or protoPayload")

    resource = entry.get("resource") if isinstance(entry.get("resource"), dict) else {}
    return Report(
        severity=str(entry.get("severity", "DEFAULT")).upper(),
        source=describe_source(resource, entry.get("labels")),
        message=message.strip() or "(empty message)",
        timestamp=str(entry.get("timestamp", "")),
        log_name=str(entry.get("logName", "")),
        context=context,
    )


def describe_source(resource: dict[str, Any], labels: Any) -> str:
    """Where the entry comes from, e.g. "cloud_run_revision save-stream-data"."""
    resource_labels = resource.get("labels") or {}
    name = (
        resource_labels.get("function_name")
        or resource_labels.get("service_name")
        or resource_labels.get("instance_id")
        or (labels or {}).get("component")
        or ""
    )
    return " ".join(part for part in (resource.get("type", ""), name) if part) or "?"


def slack_message(report: Report, repeated: int = 1) -> dict[str, Any]:
    """The Slack webhook body for a report that occurred `repeated` times."""
    text = report.message
    if len(text) > MESSAGE_TEXT_LIMIT:
        text = text[:MESSAGE_TEXT_LIMIT] + " …"
    title = f"{report.severity} in {report.source}"
    if repeated > 1:
        title += f" (repeated {repeated} times)"

    fields = [{"title": "When", "value": report.timestamp or "?", "short": True}]
    fields += [
        {"title": key, "value": json.dumps(value)[:200], "short": True}
        for key, value in report.context.items()
    ]
    return {
        "text": f"{title}: {text.splitlines()[0][:150]}",
        "attachments": [
            {
                "color": SEVERITY_COLOURS.get(report.severity, "#d32f2f"),
                "title": title,
                "text": text,
                "fields": fields,
                "footer": report.log_name,
            }
        ],
    }


@dataclass
class _Fold:
    first_posted: float
    suppressed: int = 0


class SlackReporter:
    """Posts reports to one webhook, folding repeats and keeping Slack's pace.

    State lives in memory: report_slack is deployed with one instance at most, so
    one reporter sees every report.
    """

    def __init__(
        self,
        webhook_url: str,
        session: requests.Session,
        fold_window_s: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._webhook_url = webhook_url
        self._session = session
        self._fold_window_s = fold_window_s
        self._clock = clock
        self._sleep = sleep
        self._folds: dict[tuple[str, str, str], _Fold] = {}
        self._next_post_at = 0.0
        self._lock = threading.Lock()

    def report(self, report: Report) -> bool:
        """Post the report, or fold it into an earlier one; True if posted."""
        with self._lock:
            now = self._clock()
            self._flush_expired(now, keep=report.fingerprint)

            fold = self._folds.get(report.fingerprint)
            if fold is not None and now - fold.first_posted < self._fold_window_s:
                fold.suppressed += 1
                logger.info(
                    "folded a repeated %s report from %s",
                    report.severity,
                    report.source,
                )
                return False

            repeated = 1 + (fold.suppressed if fold else 0)
            self._post(slack_message(report, repeated))
            self._folds[report.fingerprint] = _Fold(first_posted=self._clock())
            return True

    def _flush_expired(self, now: float, keep: tuple[str, str, str]) -> None:
        # Windows that closed with repeats nobody has heard of yet: drop them from
        # memory. TODO: their tally is posted only when the same report comes again
        # (then as "repeated N times"); a timer would need an always-on instance.
        for fingerprint, fold in list(self._folds.items()):
            if fingerprint != keep and now - fold.first_posted >= self._fold_window_s:
                if fold.suppressed:
                    logger.info(
                        "%d repeats of a report were folded and not posted",
                        fold.suppressed,
                    )
                del self._folds[fingerprint]

    def _post(self, message: dict[str, Any]) -> None:
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(_RetryPost),
            wait=_wait_for_slack,
            stop=tenacity.stop_after_attempt(POST_ATTEMPTS),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            retrying(self._post_once, message)
        except _RetryPost as error:
            raise SlackUnavailable(str(error)) from None

    def _post_once(self, message: dict[str, Any]) -> None:
        wait = self._next_post_at - self._clock()
        if wait > 0:
            self._sleep(wait)
        self._next_post_at = self._clock() + MIN_POST_INTERVAL_S

        try:
            response = self._session.post(
                self._webhook_url, json=message, timeout=POST_TIMEOUT_S
            )
        except requests.RequestException as error:
            # The webhook URL is a secret and requests repeats it in messages.
            raise _RetryPost(f"{type(error).__name__} posting to Slack") from None

        if response.status_code == 429:
            retry_after = _retry_after_s(response)
            if retry_after > MAX_INLINE_WAIT_S:
                raise SlackUnavailable(
                    f"Slack asks to wait {retry_after:.0f} s; leaving it to Pub/Sub"
                )
            self._next_post_at = self._clock() + retry_after
            raise _RetryPost("Slack answered 429")
        if response.status_code >= 500 or response.status_code == 408:
            raise _RetryPost(f"Slack answered {response.status_code}")
        if response.status_code >= 400:
            # A webhook that refuses the message (404 no_service, 400 invalid
            # payload) will refuse it again: say so and let the event go.
            logger.warning(
                "Slack refused the message with %d: %s",
                response.status_code,
                response.text[:200],
            )


class _RetryPost(Exception):
    pass


def _wait_for_slack(retry_state: tenacity.RetryCallState) -> float:
    # The pacing in _post_once already waits out a Retry-After; between other
    # failures, truncated exponential backoff: 1, 2, 4 s.
    return min(2.0 ** (retry_state.attempt_number - 1), MAX_INLINE_WAIT_S)


def _retry_after_s(response: requests.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "1")))
    except ValueError:
        return 1.0
