"""A one-minute soak: the whole local system under random faults loses nothing and
never exceeds the Meetup API's limit (bench/soak.py runs it for longer)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import soak


@pytest.mark.slow
def test_a_minute_of_chaos_loses_nothing(tmp_path: Path):
    args = soak.parse_args(
        ["--duration", "60", "--rate", "10", "--fault-every", "2.5", "--seed", "7"]
    )

    report = soak.run_soak(args, tmp_path)

    assert report.missing == 0, "\n".join(report.lines())
    assert report.served > 2_000
    assert report.stored == report.served
    assert not report.api_limit_exceeded
    assert report.api_max_requests_in_window <= report.api_limit
    # The seed makes the faults strike in the same order each run: most kinds.
    assert len(report.faults) >= 6, report.faults
    assert report.faults.get("kill_trigger", 0) >= 1
    assert report.trigger_starts == 1 + report.faults["kill_trigger"]
    assert report.members_stored > 0 and report.groups_stored > 0


def test_rates_are_given_for_every_stream_or_one_stream():
    args = soak.parse_args(["--rate", "5", "--rate", "rsvps=50"])

    assert args.rates == {
        "rsvps": 50.0,
        "open_events": 5.0,
        "event_comments": 5.0,
        "photos": 5.0,
        "open_venues": 5.0,
    }
    assert soak.parse_args([]).rates["photos"] == 20.0


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("rsvp=5", "'rsvp' is not one of rsvps"),
        ("rsvps=fast", "'fast' is not a number"),
        ("0", "a rate must be above 0"),
    ],
)
def test_a_bad_rate_is_refused_with_its_reason(value: str, reason: str, capsys):
    with pytest.raises(SystemExit) as exit_info:
        soak.parse_args(["--rate", value])

    assert exit_info.value.code == 2
    assert reason in capsys.readouterr().err
