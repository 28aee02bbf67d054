"""python -m standin: run the stand-ins (streams, profile API, Slack) on one port.

Logs one JSON object a line on stdout, as every process of the project does;
the INFO line "stand-in ready at URL; ..." carries every URL served ("urls") and
the API key accepted ("api_key"), for a person or a program to read.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from standin.config import (
    API_FAULTS,
    DEFAULT_RATE,
    LABELS,
    STREAM_FAULTS,
    ApiConfig,
    Quirks,
    SlackConfig,
    StandInConfig,
    StreamConfig,
    check_fault,
)
from standin.server import StandIn

logger = logging.getLogger("standin")

DEFAULT_PORT = 8765

DESCRIPTION = """\
Local stand-ins for stream.meetup.com (five chunked JSON streams), api.meetup.com
(REST v2 /2/members and /2/groups) and a Slack incoming webhook, on one port.
By default every stream sends a few items a second, endlessly, from a world
seeded by --seed, and no fault is injected. Stop it with Ctrl-C or SIGTERM.
"""

EPILOG = f"""\
Per-stream flags take LABEL=VALUE for one stream or a bare VALUE for all of them,
and may be repeated; labels: {", ".join(LABELS)}.

Stream faults (--fault [LABEL:]KNOB=VALUE; no LABEL: every stream):
  drop_after=N         end each connection cleanly after N items
  drop_probability=P   after each item, end the connection with probability P
  stall_after=N        after N items send nothing for stall_seconds, socket open
  stall_seconds=S      how long a stall lasts
  malformed_every=N    after every N items, send one line of broken JSON
  truncate_after=N     after N items, send half a chunk and close
  connect_503=N        answer the next N connects with 503
  silent_every=N       after every N new items the stream generates nothing...
  silent_seconds=S     ...for S seconds
API faults (--fault api:KNOB=VALUE): error_rate=P (share of 500/503 answers),
latency_ms=MS (added to every answer). Faults can also be changed while running:
POST {{"rsvps": {{"drop_after": 50}}}} to /_standin/faults.

Other endpoints: GET /_standin/stats, GET /_standin/served/LABEL (NDJSON of
the distinct item versions written to any client), GET /_standin/faults.
"""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _configure_logging(args.log_level)
    try:
        config = _config(args)
    except ValueError as error:
        logger.critical("bad arguments: %s", error)
        return 2

    stopping = threading.Event()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signal_number, lambda *_: stopping.set())

    standin = StandIn(config)
    try:
        standin.start()
    except OSError as error:
        logger.critical("cannot listen on %s:%d: %s", config.host, config.port, error)
        return 1

    urls = standin.urls()
    logger.info(
        "stand-in ready at %s; API key %s",
        standin.url,
        config.api_key,
        extra={
            "json_fields": {"url": standin.url, "urls": urls, "api_key": config.api_key}
        },
    )
    while not stopping.wait(0.5):
        pass

    logger.info("stopping on a signal")
    standin.stop()
    stats = standin.stats()
    served = {label: s["items_served"] for label, s in stats["streams"].items()}
    logger.info("served %s", served, extra={"json_fields": {"stats": stats}})
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m standin",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    server = parser.add_argument_group("server")
    server.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default %(default)s)"
    )
    server.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help="port to listen on; 0 takes any free port (default %(default)s)",
    )
    server.add_argument(
        "--max-connections",
        type=int,
        default=10,
        metavar="N",
        help="open stream connections allowed per client address; the next one "
        "gets 429 (default %(default)s, as meetup.com)",
    )
    server.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="least severity logged (default %(default)s)",
    )

    streams = parser.add_argument_group("streams")
    streams.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the generated world: the same seed gives the same items "
        "(default %(default)s)",
    )
    streams.add_argument(
        "--epoch-ms",
        type=int,
        metavar="MS",
        help="mtime of the first new item, in ms since the epoch; with the seed it "
        "makes items identical from run to run (default: the start time)",
    )
    streams.add_argument(
        "--rate",
        action="append",
        default=[],
        metavar="[LABEL=]R",
        help=f"items per second, or 'max' for as fast as the reader takes them "
        f"(default {DEFAULT_RATE:g} for every stream)",
    )
    streams.add_argument(
        "--max-items",
        action="append",
        default=[],
        metavar="[LABEL=]N",
        help="new items a stream generates before it goes quiet, or 'none' "
        "(default none: endless)",
    )
    streams.add_argument(
        "--backlog",
        action="append",
        default=[],
        metavar="[LABEL=]N",
        help="items that already exist, with past mtimes, when the stand-in starts, "
        "for since_count and since_mtime (default 0)",
    )
    streams.add_argument(
        "--quirks",
        action="append",
        default=[],
        metavar="[LABEL=]SPEC",
        help="real-traffic quirks: 'all' (default), 'none', or a comma list of "
        "duplicates, backwards_mtimes, missing_fields, alphanumeric_ids, "
        "escaped_slashes",
    )
    streams.add_argument(
        "--replay",
        action="append",
        default=[],
        metavar="LABEL=FILE",
        help="serve LABEL from a file of recorded items (JSON array or NDJSON), in "
        "file order, at the stream's rate",
    )
    streams.add_argument(
        "--trickle-pause",
        type=float,
        default=0.0,
        metavar="S",
        help="open_venues?trickle: seconds between batches of 512 venues "
        "(default %(default)s)",
    )
    streams.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="[LABEL:]KNOB=VALUE",
        help="inject a fault from the start; see the list below",
    )

    api = parser.add_argument_group("profile API")
    api.add_argument(
        "--api-key",
        default="standin-key",
        help="the one API key accepted; others get 401 (default %(default)s)",
    )
    api.add_argument(
        "--rate-limit",
        type=int,
        default=30,
        metavar="N",
        help="requests per window per key (default %(default)s)",
    )
    api.add_argument(
        "--rate-window",
        type=float,
        default=10.0,
        metavar="S",
        help="length of a rate-limit window in seconds (default %(default)s)",
    )
    api.add_argument(
        "--throttle-style",
        choices=("429", "400"),
        default="429",
        help="answer over the limit: 429, or v2's 400 'Client throttled' "
        "(default %(default)s)",
    )
    api.add_argument(
        "--block-after",
        default="10",
        metavar="N",
        help="throttled answers in one window after which the key is blocked, or "
        "'none' (default %(default)s)",
    )
    api.add_argument(
        "--block-seconds",
        type=float,
        default=3600.0,
        metavar="S",
        help="how long a block lasts (default %(default)s)",
    )
    api.add_argument(
        "--api-error-rate",
        type=float,
        default=0.0,
        metavar="P",
        help="share of API answers that are 500 or 503 (default %(default)s)",
    )
    api.add_argument(
        "--api-latency-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="latency added to every API answer (default %(default)s)",
    )

    slack = parser.add_argument_group("Slack webhook (POST /slack/webhook)")
    slack.add_argument(
        "--slack-log",
        metavar="FILE",
        help="append each accepted message to FILE as a JSON line (default: keep "
        "them in memory only)",
    )
    slack.add_argument(
        "--slack-rate",
        type=float,
        default=1.0,
        metavar="PER_S",
        help="messages per second accepted before 429 (default %(default)s)",
    )
    slack.add_argument(
        "--slack-burst",
        type=int,
        default=3,
        metavar="N",
        help="messages accepted at once before the rate applies (default %(default)s)",
    )
    return parser


def _config(args: argparse.Namespace) -> StandInConfig:
    streams: dict[str, dict[str, Any]] = {label: {} for label in LABELS}

    def per_stream(values: list[str], key: str, parse: Callable[[str], Any]) -> None:
        for value in values:
            labels, raw = _split_label(value, "=")
            for label in labels:
                streams[label][key] = parse(raw)

    per_stream(args.rate, "rate", _rate)
    per_stream(args.max_items, "max_items", _optional_int)
    per_stream(args.backlog, "backlog", int)
    per_stream(args.quirks, "quirks", Quirks.parse)
    for value in args.replay:
        labels, path = _split_label(value, "=")
        if len(labels) != 1:
            raise ValueError(f"--replay needs LABEL=FILE, not {value!r}")
        streams[labels[0]]["replay_file"] = path
    streams["open_venues"]["trickle_pause_s"] = args.trickle_pause

    api_faults: dict[str, Any] = {
        "error_rate": args.api_error_rate,
        "latency_ms": args.api_latency_ms,
    }
    for value in args.fault:
        target, assignment = value.split(":", 1) if ":" in value else ("", value)
        knob, _, raw = assignment.partition("=")
        knob = knob.strip()
        parsed = _fault_value(raw)
        check_fault(knob, parsed)
        if target == "api":
            if knob not in API_FAULTS:
                raise ValueError(f"the API has no fault {knob!r}")
            api_faults[knob] = parsed
            continue
        if knob not in STREAM_FAULTS:
            raise ValueError(f"streams have no fault {knob!r}")
        for label in _labels(target):
            streams[label][knob] = parsed

    return StandInConfig(
        seed=args.seed,
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        streams={label: StreamConfig(**values) for label, values in streams.items()},
        api=ApiConfig(
            limit=args.rate_limit,
            window_seconds=args.rate_window,
            throttle_style=args.throttle_style,
            block_after=_optional_int(args.block_after),
            block_seconds=args.block_seconds,
            **api_faults,
        ),
        slack=SlackConfig(
            log_file=args.slack_log,
            rate_per_second=args.slack_rate,
            burst=args.slack_burst,
        ),
        max_connections_per_client=args.max_connections,
        epoch_ms=args.epoch_ms,
    )


def _labels(text: str) -> tuple[str, ...]:
    if not text:
        return LABELS
    if text not in LABELS:
        raise ValueError(f"unknown stream {text!r}; streams: {', '.join(LABELS)}")
    return (text,)


def _split_label(value: str, separator: str) -> tuple[tuple[str, ...], str]:
    """Which streams a flag value is for: "rsvps=5" is for rsvps, "5" for all."""
    label, found, raw = value.partition(separator)
    if found and label in LABELS:
        return (label,), raw
    if found and label and not label.replace(".", "").isdigit():
        raise ValueError(f"unknown stream {label!r}; streams: {', '.join(LABELS)}")
    return LABELS, value


def _rate(text: str) -> float | None:
    return None if text.strip().lower() in ("max", "none") else float(text)


def _optional_int(text: str) -> int | None:
    return None if text.strip().lower() == "none" else int(text)


def _fault_value(text: str) -> Any:
    text = text.strip()
    if text.lower() in ("none", "null", ""):
        return None
    try:
        return json.loads(text)
    except ValueError:
        raise ValueError(f"fault value {text!r} is not a number") from None


def _configure_logging(level: str) -> None:
    from google.cloud.logging.handlers import StructuredLogHandler

    handler = StructuredLogHandler(stream=sys.stdout)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The handler logs its own diagnostic line through this logger, with itself
    # attached: without this the line would come out twice (once via root).
    logging.getLogger(StructuredLogHandler.__module__).propagate = False


if __name__ == "__main__":
    sys.exit(main())
