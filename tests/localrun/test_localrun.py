"""The README's first command: the whole system runs, shows data flowing, stops
cleanly on its own or on Ctrl-C, leaves no process behind, and sums up correctly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from standin import collected
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


def start_local_run(data_dir: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "standin.localrun",
            "--data-dir",
            str(data_dir),
            "--rate",
            "40",
            *args,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def processes_mentioning(text: str) -> list[int]:
    """Processes whose command line or environment names text (the data folder
    of a run names every process of that run)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            seen = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
        except OSError:
            continue
        if text.encode() in seen:
            found.append(int(proc.name))
    return found


def finish(run: subprocess.Popen, timeout_s: float = 120) -> str:
    try:
        output, _ = run.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        run.kill()
        output, _ = run.communicate()
        pytest.fail(f"the local run did not end:\n{output}")
    return output


@pytest.mark.slow
def test_a_timed_run_collects_everything_and_ends_by_itself(tmp_path: Path):
    data_dir = tmp_path / "data"

    output = finish(start_local_run(data_dir, "--duration", "8"))

    assert "summary" in output, output
    summary = json.loads((data_dir / "summary.json").read_text())
    assert summary["trigger_exit_status"] == 0
    for label, stream in summary["streams"].items():
        assert stream["stored"] > 0, (label, output)
        assert stream["lost"] == 0, (label, output)
    assert summary["members_stored"] > 0
    assert summary["groups_stored"] > 0

    counts = collected.count_objects(data_dir)
    assert counts == {k: s["stored"] for k, s in summary["streams"].items()}
    assert f"rsvps {counts['rsvps']}" in output
    assert processes_mentioning(str(data_dir)) == []


@pytest.mark.slow
def test_ctrl_c_stops_everything_cleanly(tmp_path: Path):
    data_dir = tmp_path / "data"
    run = start_local_run(data_dir)
    status = data_dir / "state" / "status.json"

    def items_stored() -> int:
        try:
            return json.loads(status.read_text()).get("items_stored", 0)
        except (OSError, ValueError):
            return 0

    try:
        wait_until(items_stored, timeout_s=60, what="the trigger stores items")
    finally:
        run.send_signal(signal.SIGINT)
    output = finish(run)

    assert run.returncode == 0, output
    summary = json.loads((data_dir / "summary.json").read_text())
    assert all(s["lost"] == 0 for s in summary["streams"].values()), output
    assert processes_mentioning(str(data_dir)) == []


def test_the_read_back_command_lists_counts_and_shows(tmp_path: Path, capsys):
    bucket = tmp_path / "gcs" / collected.DEFAULT_BUCKET
    (bucket / "rsvps").mkdir(parents=True)
    (bucket / "rsvps" / "7_9.json").write_text('{"rsvp_id": 7, "mtime": 9}')
    (tmp_path / "firestore" / "members").mkdir(parents=True)
    (tmp_path / "firestore" / "members" / "m5.json").write_text('{"id": 5}')
    (tmp_path / "alerts.jsonl").write_text(
        json.dumps({"received_ms": 1, "message": {"text": "ERROR in trigger"}}) + "\n"
    )

    def run(*args: str) -> str:
        assert collected.main(["--data-dir", str(tmp_path), *args]) == 0
        return capsys.readouterr().out

    counts = run("counts")
    assert "rsvps" in counts and "1 objects" in counts
    assert "members" in counts and "1 documents" in counts
    assert run("list", "rsvps") == "rsvps/7_9.json\n"
    assert json.loads(run("object", "rsvps/7_9.json")) == {"rsvp_id": 7, "mtime": 9}
    assert json.loads(run("doc", "members", "m5")) == {"id": 5}
    assert run("alerts") == "ERROR in trigger\n"


def test_the_read_back_command_refuses_paths_out_of_the_data(tmp_path: Path):
    (tmp_path / "gcs" / collected.DEFAULT_BUCKET).mkdir(parents=True)
    (tmp_path / "secret.json").write_text("{}")

    with pytest.raises(SystemExit) as exit_info:
        collected.main(["--data-dir", str(tmp_path), "object", "../../secret.json"])

    assert exit_info.value.code == 2


@pytest.mark.slow
@pytest.mark.emulator
def test_the_emulator_run_takes_the_cloud_code_paths(
    tmp_path: Path, fake_gcs_session, firestore_session, pubsub_session
):
    # The session fixtures prove the emulators are installed (or skip, with the
    # reason); the run starts its own.
    data_dir = tmp_path / "data"

    output = finish(start_local_run(data_dir, "--emulators", "--duration", "8"))

    summary = json.loads((data_dir / "summary.json").read_text())
    assert summary["trigger_exit_status"] == 0, output
    assert all(s["stored"] > 0 for s in summary["streams"].values()), output
    assert all(s["lost"] == 0 for s in summary["streams"].values()), output
    assert summary["members_stored"] > 0
    # The objects went to fake-gcs-server, not to local files.
    assert not (data_dir / "gcs").exists()
    assert processes_mentioning(str(data_dir)) == []


def test_items_left_in_the_outbox_are_named_as_the_function_would_store_them(
    tmp_path: Path,
):
    from collector.outbox import ChunkLimits, Outbox, OutboxRecord
    from standin import localrun

    box = Outbox(
        tmp_path / "state" / "outbox",
        ["rsvps", "photos"],
        ChunkLimits(max_items=2, max_bytes=1 << 20, max_age_seconds=60),
        fsync="never",
    )
    box.append(
        "rsvps",
        [
            OutboxRecord(1_500_000_000_000 + n, b'{"rsvp_id": %d}' % n)
            for n in range(3)  # two segments: one full, one sealed on close
        ],
    )
    box.append("photos", [OutboxRecord(None, b'{"photo_id": 9}')])
    box.close()

    assert localrun._outbox_names(tmp_path / "state", "rsvps") == {
        "0_1500000000000.json",
        "1_1500000000001.json",
        "2_1500000000002.json",
    }
    # Without an mtime the function names an item by the time it receives it.
    assert localrun._outbox_names(tmp_path / "state", "photos") == set()
    assert localrun._outbox_names(tmp_path / "state", "open_events") == set()
