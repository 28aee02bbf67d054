"""A local log sink: what Cloud Logging and its sinks do for the deployed system.

Every component writes structured JSON lines to stdout (and tracebacks to
stderr). The sink reads each child process's output, keeps it in a log file per
component, and routes entries of severity ERROR and above, in the LogEntry shape a
log sink produces, to an archive (as the error-log bucket keeps them) and to
report_slack (as the sink's Pub/Sub topic delivers them). Like the deployed sink,
it excludes report_slack's own entries, so that its failures never feed it.
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import requests

logger = logging.getLogger(__name__)

SEVERITIES = (
    "DEFAULT",
    "DEBUG",
    "INFO",
    "NOTICE",
    "WARNING",
    "ERROR",
    "CRITICAL",
    "ALERT",
    "EMERGENCY",
)
ROUTED_FROM = SEVERITIES.index("ERROR")
EXCLUDED_COMPONENTS = frozenset({"report_slack"})
PROJECT = "local"

Deliver = Callable[[dict[str, Any]], None]


def severity_rank(severity: object) -> int:
    text = str(severity).upper()
    return SEVERITIES.index(text) if text in SEVERITIES else 0


def resource_of(component: str) -> dict[str, Any]:
    """The monitored resource Cloud Logging would name for the component."""
    if component == "trigger":
        return {"type": "gce_instance", "labels": {"instance_id": "trigger"}}
    return {
        "type": "cloud_run_revision",
        "labels": {"service_name": component.replace("_", "-"), "location": "local"},
    }


def log_entry(component: str, record: dict[str, Any] | str) -> dict[str, Any]:
    """A LogEntry, as a log sink exports it, for one structured line or one text."""
    now = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
    entry: dict[str, Any] = {
        "insertId": uuid.uuid4().hex[:16],
        "logName": f"projects/{PROJECT}/logs/{component}",
        "resource": resource_of(component),
        "timestamp": now,
        "receiveTimestamp": now,
    }
    if isinstance(record, str):
        entry["severity"] = "ERROR"
        entry["textPayload"] = record
        return entry

    entry["severity"] = str(record.get("severity", "DEFAULT")).upper()
    entry["jsonPayload"] = {
        key: value
        for key, value in record.items()
        if key != "severity"
        and not key.startswith("logging.googleapis.com/")
        and key != "httpRequest"
    }
    location = record.get("logging.googleapis.com/sourceLocation")
    if location:
        entry["sourceLocation"] = location
    return entry


def push_body(entry: dict[str, Any], subscription: str) -> dict[str, Any]:
    """The body of a Pub/Sub push request that carries the entry."""
    return {
        "message": {
            "data": base64.b64encode(json.dumps(entry).encode()).decode(),
            "messageId": entry["insertId"],
            "publishTime": entry["timestamp"],
            "attributes": {"logging.googleapis.com/timestamp": entry["timestamp"]},
        },
        "subscription": subscription,
    }


def push_to(report_slack_url: str) -> Deliver:
    """Deliver entries as Pub/Sub push requests to a served report_slack."""
    session = requests.Session()
    topic_path = f"projects/{PROJECT}/topics/error-reports"
    url = report_slack_url.rstrip("/") + "/" + topic_path

    def deliver(entry: dict[str, Any]) -> None:
        body = push_body(entry, f"projects/{PROJECT}/subscriptions/error-reports-push")
        # Pub/Sub push retries a failed delivery; locally, a few tries suffice.
        for _ in range(3):
            try:
                if session.post(url, json=body, timeout=30).ok:
                    return
            except requests.RequestException as error:
                logger.warning("report_slack is unreachable: %s", type(error).__name__)
        logger.warning("gave up delivering an error report to report_slack")

    return deliver


def archive_to(folder: Path) -> Deliver:
    """Keep entries as the error-log bucket does: one file per log and hour."""
    lock = threading.Lock()

    def archive(entry: dict[str, Any]) -> None:
        moment = entry["timestamp"]
        log_name = entry["logName"].rsplit("/", 1)[-1]
        path = (
            folder
            / log_name
            / moment[:4]
            / moment[5:7]
            / moment[8:10]
            / f"{moment[11:13]}:00:00.json"
        )
        with lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as file:
                file.write(json.dumps(entry) + "\n")

    return archive


class LogSink:
    """Reads child processes' output and routes their ERROR entries."""

    def __init__(self, logs_dir: Path, routes: list[Deliver]) -> None:
        self.logs_dir = logs_dir
        self.routed = 0
        self.errors_by_component: dict[str, int] = {}
        self._routes = routes
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._readers: dict[str, list[threading.Thread]] = {}
        self._lock = threading.Lock()
        self._router = threading.Thread(target=self._route, name="log-router")
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self._router.start()

    def attach(self, component: str, output: IO[bytes], stderr: bool = False) -> None:
        """Read the output of one component until it closes."""
        reader = threading.Thread(
            target=self._read,
            args=(component, output, stderr),
            name=f"log-{component}",
            daemon=True,
        )
        self._readers.setdefault(component, []).append(reader)
        reader.start()

    def drain(self, components: list[str], timeout_s: float = 30.0) -> None:
        """Once the components' processes have ended: read the rest of their
        output and deliver every entry routed so far."""
        deadline = time.monotonic() + timeout_s
        for component in components:
            for reader in self._readers.get(component, []):
                reader.join(timeout=max(0.0, deadline - time.monotonic()))
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self, timeout_s: float = 30.0) -> None:
        """Deliver what is left, then stop routing."""
        self.drain(list(self._readers), timeout_s)
        self._queue.put(None)
        self._router.join(timeout=timeout_s)

    def _read(self, component: str, output: IO[bytes], stderr: bool) -> None:
        traceback_lines: list[str] = []
        with (self.logs_dir / f"{component}.log").open("ab") as log_file:
            for raw in iter(output.readline, b""):
                log_file.write(raw)
                log_file.flush()
                line = raw.decode("utf-8", "replace").rstrip("\n")

                # A Python traceback on stderr is one error, not one per line.
                if traceback_lines or line.startswith("Traceback "):
                    traceback_lines.append(line)
                    if line and not line[0].isspace() and len(traceback_lines) > 1:
                        self._submit(component, "\n".join(traceback_lines))
                        traceback_lines = []
                    continue
                if stderr:
                    continue

                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if (
                    isinstance(record, dict)
                    and severity_rank(record.get("severity")) >= ROUTED_FROM
                ):
                    self._submit(component, record)

    def _submit(self, component: str, record: dict[str, Any] | str) -> None:
        with self._lock:
            self.errors_by_component[component] = (
                self.errors_by_component.get(component, 0) + 1
            )
        if component in EXCLUDED_COMPONENTS:
            return
        self._queue.put(log_entry(component, record))

    def _route(self) -> None:
        while (entry := self._queue.get()) is not None:
            for route in self._routes:
                try:
                    route(entry)
                except Exception:
                    logger.exception("a log route failed")
            with self._lock:
                self.routed += 1
            self._queue.task_done()
