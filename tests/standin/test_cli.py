"""python -m standin: its flags, its banner, and a clean stop on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from standin.__main__ import _config, _parser
from tests.standin.helpers import RawStream

ROOT = Path(__file__).resolve().parents[2]


def _parse(*argv):
    return _config(_parser().parse_args(list(argv)))


def test_help_explains_every_flag():
    parser = _parser()
    help_text = parser.format_help()

    for action in parser._actions:
        for option in action.option_strings:
            assert option in help_text
        if action.option_strings and action.dest != "help":
            assert action.help, f"{action.option_strings} has no help"
    for knob in ("drop_after", "stall_seconds", "connect_503", "silent_every"):
        assert knob in help_text


def test_defaults_are_a_few_items_a_second_and_no_faults():
    config = _parse()

    assert (config.host, config.port, config.api_key) == (
        "127.0.0.1",
        8765,
        "standin-key",
    )
    assert {stream.rate for stream in config.streams.values()} == {3.0}
    assert all(
        value in (None, 0, 0.0)
        for stream in config.streams.values()
        for value in stream.faults().values()
    )
    assert (config.api.limit, config.api.window_seconds) == (30, 10.0)


def test_per_stream_flags_and_faults():
    config = _parse(
        "--rate",
        "10",
        "--rate",
        "rsvps=max",
        "--max-items",
        "photos=7",
        "--quirks",
        "open_events=none",
        "--fault",
        "rsvps:drop_after=50",
        "--fault",
        "stall_seconds=2.5",
        "--fault",
        "api:error_rate=0.1",
        "--block-after",
        "none",
        "--throttle-style",
        "400",
    )

    streams = config.streams
    assert streams["rsvps"].rate is None and streams["photos"].rate == 10.0
    assert streams["photos"].max_items == 7 and streams["rsvps"].max_items is None
    assert not streams["open_events"].quirks.duplicates
    assert streams["rsvps"].drop_after == 50 and streams["photos"].drop_after is None
    assert {s.stall_seconds for s in streams.values()} == {2.5}
    assert config.api.error_rate == 0.1
    assert config.api.block_after is None
    assert config.api.throttle_style == "400"


@pytest.mark.parametrize(
    "argv",
    [
        ("--rate", "nowhere=3"),
        ("--fault", "rsvps:drop_soon=1"),
        ("--fault", "api:drop_after=1"),
        ("--fault", "rsvps:drop_after=-2"),
        ("--replay", "rsvps"),
    ],
)
def test_bad_flags_are_refused(argv):
    with pytest.raises(ValueError):
        _parse(*argv)


def test_it_runs_prints_its_urls_and_stops_on_sigterm(tmp_path):
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "standin",
            "--port",
            "0",
            "--api-key",
            "cli-key",
            "--fault",
            "photos:connect_503=1",
            "--slack-log",
            str(tmp_path / "slack.jsonl"),
        ],
        cwd=tmp_path,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        banner = {}
        for _ in range(5):
            banner = json.loads(process.stdout.readline())
            if "urls" in banner:
                break
        assert banner["severity"] == "INFO"
        assert banner["message"].startswith("stand-in ready at http://127.0.0.1:")
        assert banner["api_key"] == "cli-key"
        urls = banner["urls"]
        assert urls["open_venues"].endswith("/2/open_venues?trickle")
        port = int(banner["url"].rsplit(":", 1)[1])

        with urllib.request.urlopen(urls["stats"], timeout=5) as answer:
            assert json.load(answer)["streams"]["rsvps"]["rate"] == 3.0
        with RawStream(port, "/2/photos") as refused:
            assert refused.status == 503

        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    assert process.returncode == 0, errors
