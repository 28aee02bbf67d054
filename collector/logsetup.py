"""Logging of the trigger: structured JSON lines on stdout, or Cloud Logging.

"stdout" writes one JSON object per record (severity, message, fields) through
google.cloud.logging's StructuredLogHandler: what the local runner reads, and
what a VM's logging agent forwards. "cloud" sends records to Cloud Logging
through CloudLoggingHandler. Either way a filter masks anything shaped like a
bearer token or an API key before a record leaves the process.
"""

from __future__ import annotations

import logging
import re
import sys

from collector.config import LoggingSettings

logger = logging.getLogger(__name__)

_SECRET_PATTERNS = (
    (re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1<redacted>"),
    (re.compile(r"([?&](?:key|sig|token|access_token)=)[^&\s\"']+"), r"\1<redacted>"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), "<jwt>"),
)


def redact(text: str) -> str:
    """text with bearer tokens, JWTs and key=... query values masked."""
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactSecrets(logging.Filter):
    """Masks secrets in the final message of every record (defence in depth:
    the code never logs one on purpose)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(
                logging.Formatter().formatException(record.exc_info)
            )
            record.exc_info = None
        return True


def configure_logging(settings: LoggingSettings) -> logging.Handler:
    """Send every record at settings.level or above to the chosen destination."""
    if settings.destination == "cloud":
        import google.cloud.logging
        from google.cloud.logging.handlers import CloudLoggingHandler

        client = google.cloud.logging.Client()
        handler: logging.Handler = CloudLoggingHandler(client, name=settings.log_name)
    else:
        from google.cloud.logging.handlers import StructuredLogHandler

        handler = StructuredLogHandler(stream=sys.stdout)

    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(settings.level)

    # Library chatter (one line per connection) only when debugging.
    for noisy in ("urllib3", "google.auth", "google.cloud"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    return handler
