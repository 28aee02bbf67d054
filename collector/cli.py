"""The command line of trigger_gcf.py."""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from collector import contract
from collector.app import Collector, build_sender
from collector.config import Config, ConfigError, load_config
from collector.logsetup import configure_logging
from collector.sender import ChunkAbandoned
from collector.setaside import DeadLetters
from collector.statefiles import StateLockBusy

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2

DESCRIPTION = """\
Reads the meetup.com streams and sends every item, in chunks, to the
save_stream_data Cloud Function; member and group ids found in the items go to
save_member_data and save_group_data, paced by the Meetup API's rate limit.

Every item is written to an outbox in the state folder before it is sent, so a
crash, a kill or a function outage loses nothing: on the next start what was not
acknowledged is sent again and each stream resumes from its checkpoint.
"""

EPILOG = """\
commands:
  run (the default)      read and send until SIGINT/SIGTERM (or --duration);
                         then stop reading, send what is left within
                         sender.shutdown_timeout_seconds, record the
                         checkpoints and exit 0
  check-config           load and check the config, print it, exit
  status                 print the last status.json of the state folder
  dead-letters list      list the items the function refused for good
                         [--label LABEL] [--json]
  dead-letters resend    send them again (those refused again stay)
                         [--label LABEL] [--timeout SECONDS]

exit status: 0 done (also after SIGINT/SIGTERM), 1 failed, 2 bad config or
arguments.

examples:
  python trigger_gcf.py --config config.json
  python trigger_gcf.py --config config.json --streams rsvps,photos --duration 600
  python trigger_gcf.py --config config.json dead-letters list --label rsvps
  python trigger_gcf.py --config config.json dead-letters resend
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trigger_gcf.py",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        required=True,
        metavar="PATH",
        help="the JSON config file (see config.example.json; every key is "
        "documented there)",
    )
    parser.add_argument(
        "--duration",
        type=_positive_seconds,
        metavar="SECONDS",
        help="stop after this many seconds, as on SIGTERM (default: run until stopped)",
    )
    parser.add_argument(
        "--streams",
        type=_stream_labels,
        metavar="LABELS",
        help="comma-separated streams to read, out of those configured (default: "
        f"every enabled stream); labels: {', '.join(contract.STREAM_LABELS)}",
    )
    parser.add_argument(
        "--log-level",
        choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
        help="override logging.level of the config",
    )

    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("run", help="read and send (the default)")
    commands.add_parser("check-config", help="check the config and print it")
    commands.add_parser("status", help="print the state folder's status.json")

    dead_letters = commands.add_parser(
        "dead-letters", help="list or resend items the function refused"
    )
    actions = dead_letters.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    listing = actions.add_parser("list", help="list the dead letters")
    listing.add_argument("--label", choices=contract.STREAM_LABELS)
    listing.add_argument(
        "--json", action="store_true", help="print each dead letter as JSON"
    )
    resend = actions.add_parser("resend", help="send the dead letters again")
    resend.add_argument("--label", choices=contract.STREAM_LABELS)
    resend.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=300.0,
        metavar="SECONDS",
        help="give up retrying after this long; what is left stays (default 300)",
    )
    return parser


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _stream_labels(text: str) -> list[str]:
    labels = [label.strip() for label in text.split(",") if label.strip()]
    unknown = [label for label in labels if label not in contract.STREAM_LABELS]
    if unknown or not labels:
        raise argparse.ArgumentTypeError(
            f"unknown streams {', '.join(unknown) or '(none given)'}; labels are "
            f"{', '.join(contract.STREAM_LABELS)}"
        )
    return labels


def main(argv: Sequence[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    try:
        config = load_config(arguments.config)
        if arguments.streams:
            config = config.with_streams(arguments.streams)
    except ConfigError as error:
        print(f"trigger_gcf.py: config error: {error}", file=sys.stderr)
        return EXIT_CONFIG

    if arguments.log_level:
        config = dataclasses.replace(
            config,
            logging=dataclasses.replace(config.logging, level=arguments.log_level),
        )

    command = arguments.command or "run"
    if command == "check-config":
        print(json.dumps(_describe_config(config), indent=2))
        return EXIT_OK
    if command == "status":
        return _print_status(config)

    try:
        configure_logging(config.logging)
    except Exception as error:
        print(
            f"trigger_gcf.py: cannot set up logging to {config.logging.destination}: "
            f"{type(error).__name__}: {error}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if command == "dead-letters":
        if arguments.action == "list":
            return list_dead_letters(config, arguments.label, arguments.json)
        return resend_dead_letters(config, arguments.label, arguments.timeout)
    return run_trigger(config, arguments.duration)


def run_trigger(config: Config, duration: float | None) -> int:
    stop = threading.Event()

    def on_signal(signal_number: int, frame: Any) -> None:
        if stop.is_set():
            logger.info("already stopping (signal %d)", signal_number)
            return
        logger.info("received %s: stopping", signal.Signals(signal_number).name)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    try:
        collector = Collector(config)
    except StateLockBusy as error:
        logger.critical("%s", error)
        return EXIT_FAILED
    except OSError as error:
        logger.critical("cannot use the state folder %s: %s", config.state_dir, error)
        return EXIT_FAILED

    try:
        collector.run(duration=duration, stop=stop)
    except Exception:
        logger.critical("the trigger failed", exc_info=True)
        return EXIT_FAILED
    return EXIT_OK


def list_dead_letters(config: Config, label: str | None, as_json: bool) -> int:
    dead_letters = DeadLetters(config.state_path)
    by_label: collections.Counter[str] = collections.Counter()
    for letter in dead_letters.entries(label):
        by_label[letter.label] += 1
        if as_json:
            print(letter.to_json())
            continue
        print(
            f"{letter.entry}  {letter.label:<14} {letter.at}  "
            f"status={letter.status}  id={_item_id(letter.label, letter.raw)}  "
            f"{letter.reason}"
        )

    if not as_json:
        total = sum(by_label.values())
        detail = ", ".join(
            f"{name}: {count}" for name, count in sorted(by_label.items())
        )
        print(f"{total} dead letters" + (f" ({detail})" if detail else ""))
        print(f"file: {dead_letters.path}")
    return EXIT_OK


def resend_dead_letters(config: Config, label: str | None, timeout: float) -> int:
    dead_letters = DeadLetters(config.state_path)
    letters = list(dead_letters.entries(label))
    sender = build_sender(config, dead_letters)
    timer = threading.Timer(timeout, sender.abandon.set)
    timer.daemon = True
    timer.start()

    resent: set[str] = set()
    abandoned = False
    try:
        for chunk in _chunks(letters, config.chunks.max_items, config.chunks.max_bytes):
            try:
                sender.send(chunk[0].label, [letter.record for letter in chunk])
            except ChunkAbandoned as error:
                logger.warning("resend stopped: %s", error)
                abandoned = True
                break
            resent.update(letter.entry for letter in chunk)
    finally:
        timer.cancel()
        dead_letters.remove(resent)

    refused_again = sender.counters.get("dead_letters")
    print(
        f"resent {len(resent)} of {len(letters)} dead letters; "
        f"{refused_again} refused again (kept as new dead letters)"
        + (
            f"; {len(letters) - len(resent)} left after the timeout"
            if abandoned
            else ""
        )
    )
    return EXIT_FAILED if abandoned else EXIT_OK


def _chunks(letters: list, max_items: int, max_bytes: int) -> list[list]:
    chunks: list[list] = []
    by_label: dict[str, list] = collections.defaultdict(list)
    for letter in letters:
        by_label[letter.label].append(letter)

    for same_label in by_label.values():
        chunk: list = []
        size = 0
        for letter in same_label:
            if chunk and (
                len(chunk) >= max_items or size + len(letter.raw) + 1 > max_bytes
            ):
                chunks.append(chunk)
                chunk, size = [], 0
            chunk.append(letter)
            size += len(letter.raw) + 1
        if chunk:
            chunks.append(chunk)
    return chunks


def _item_id(label: str, raw: bytes) -> Any:
    try:
        return json.loads(raw).get(contract.ITEM_ID_FIELDS[label])
    except (ValueError, AttributeError):
        return None


def _print_status(config: Config) -> int:
    path = config.state_path / "status.json"
    try:
        print(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        print(f"no status yet: {path} does not exist", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _describe_config(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)
