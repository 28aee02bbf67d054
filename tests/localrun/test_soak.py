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
