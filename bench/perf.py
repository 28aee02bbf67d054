"""Performance against the limits: one command, one table, every figure measured in
the same run on this machine.

    .venv/bin/python -m bench.perf [--items 1000000] [--limit-items 200000]
                                   [--naive-items 3000] [--profile-items 20000]
                                   [--json PATH]

1. The physical limits here: how fast one reader can read and parse the stand-in's
   rsvps stream, and how fast this machine creates the same files in a tight loop
   (before and after the end-to-end run, as file systems of virtual machines
   drift).
2. End to end: items/s from the stand-in at full speed through trigger_gcf.py and
   save_stream_data (local backend) to stored files, as a ratio to each limit; the
   trigger's resident memory along the way and its peak; the CPU time of each
   process, to show where the time goes.
3. The naive way: one POST per item, a new connection each, as the original
   system did; and the ratio of the two.
4. save_stream_data's latency per chunk of 500 items, and of 1,000 (the trigger's
   default), p50 and p99.
5. Cost per 1,000 items: function invocations and storage writes (from the end to
   end run), and Meetup API calls for RSVPs, where members repeat.

The stand-in runs as a process of its own, so that it never competes with the
reader or the trigger for the same interpreter. Nothing is asserted: the figures
are printed, with the targets beside them, and written as JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from bench.bench_functions import measure as measure_chunks
from standin import cloud
from standin.functions import ServedFunction, serve_function
from standin.localrun import BUCKET, COLLECTIONS, ROOT, trigger_config

API_KEY = "perf-key"


@dataclass
class StandInProcess:
    process: subprocess.Popen
    url: str

    def stats(self) -> dict[str, Any]:
        return requests.get(self.url + "/_standin/stats", timeout=30).json()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_standin(*flags: str) -> StandInProcess:
    port = cloud.free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "standin",
            "--port",
            str(port),
            "--api-key",
            API_KEY,
            "--log-level",
            "WARNING",
            *flags,
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    standin = StandInProcess(process, f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            standin.stats()
            return standin
        except requests.RequestException:
            time.sleep(0.1)
    standin.stop()
    raise RuntimeError("the stand-in did not start")


def stream_lines(url: str) -> Iterator[bytes]:
    with requests.get(url, stream=True, timeout=(5, 10)) as answer:
        answer.raise_for_status()
        try:
            yield from (line for line in answer.iter_lines(65536) if line)
        except requests.RequestException:
            return  # the stream went quiet after its last item: done


# -- 1. the physical limits -----------------------------------------------------


def read_limit(items: int) -> tuple[float, list[bytes]]:
    """Items/s one reader reads and parses; and the items, to write them again."""
    standin = start_standin("--rate", "rsvps=max", "--max-items", f"rsvps={items}")
    kept: list[bytes] = []
    try:
        started = time.perf_counter()
        for line in stream_lines(standin.url + "/2/rsvps"):
            json.loads(line)
            kept.append(line)
            if len(kept) == items:
                break
        elapsed = time.perf_counter() - started
    finally:
        standin.stop()
    return len(kept) / elapsed, kept


def file_limit(items: list[bytes], folder: Path) -> float:
    """Files/s this machine creates, one per item, in a tight loop."""
    names = []
    for line in items:
        item = json.loads(line)
        names.append(f"{item['rsvp_id']}_{item['mtime']}.json")
    folder.mkdir(parents=True)

    started = time.perf_counter()
    for name, line in zip(names, items, strict=True):
        try:
            with open(folder / name, "xb") as file:
                file.write(line)
        except FileExistsError:
            pass  # a re-sent RSVP: the same object
    return len(items) / (time.perf_counter() - started)


# -- 2. end to end ----------------------------------------------------------------


@dataclass
class EndToEnd:
    items_per_s: float
    stored: int
    chunks_sent: int
    items_sent: int
    profile_calls: int
    api_requests: int
    rss_mb_at: dict[str, float]
    peak_rss_mb: float
    cpu_s: dict[str, float]


def end_to_end(
    items: int, scratch: Path, functions: dict[str, ServedFunction], profiles: bool
) -> EndToEnd:
    """The trigger reads `items` RSVPs at full speed and stores them all."""
    standin = start_standin(
        "--rate",
        "rsvps=max",
        "--max-items",
        f"rsvps={items}",
        "--rate-limit",
        "1000000",
    )
    for function in functions.values():
        function.stop()
    env = function_env(scratch / "data", standin.url)
    for target, function in list(functions.items()):
        functions[target] = serve_function(target, env, port=function.port)

    config = trigger_config(
        standin.url, {t: f.url for t, f in functions.items()}, scratch / "state"
    )
    config["streams"] = {"rsvps": config["streams"]["rsvps"]}
    config["profiles"]["enabled"] = profiles
    config["status"]["interval_seconds"] = 1.0
    scratch.mkdir(parents=True, exist_ok=True)
    config_path = scratch / "config.json"
    config_path.write_text(json.dumps(config))
    stored_dir = scratch / "data" / "gcs" / BUCKET / "rsvps"

    trigger = subprocess.Popen(
        [sys.executable, str(ROOT / "trigger_gcf.py"), "--config", str(config_path)],
        cwd=ROOT,
        env={**os.environ, "NO_GCE_CHECK": "true"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    process_groups = {
        "trigger": trigger.pid,
        "save_stream_data": functions["save_stream_data"].process.pid,
        "stand-in": standin.process.pid,
    }
    cpu_before = {name: _cpu_seconds(group) for name, group in process_groups.items()}
    started = time.perf_counter()
    rss_at: dict[str, float] = {}
    last_count, last_growth = 0, started
    try:
        while True:
            time.sleep(0.5)
            count = _count(stored_dir)
            rss = _rss_mb(trigger.pid, "VmRSS")
            for share in (0.1, 0.5, 0.9):
                key = f"{share:.0%}"
                if key not in rss_at and count >= share * items:
                    rss_at[key] = rss
            if count > last_count:
                last_count, last_growth = count, time.perf_counter()
            done = standin.stats()["streams"]["rsvps"]["generated"] >= items
            if done and time.perf_counter() - last_growth > 3.0:
                break
            if trigger.poll() is not None:
                raise RuntimeError(f"the trigger exited with {trigger.returncode}")
        if profiles:
            _wait_for_profiles(scratch / "state" / "status.json")

        peak = _rss_mb(trigger.pid, "VmHWM")
        cpu = {
            name: _cpu_seconds(group) - cpu_before[name]
            for name, group in process_groups.items()
        }
        status = json.loads((scratch / "state" / "status.json").read_text())
        api = standin.stats()["api"]
    finally:
        os.killpg(trigger.pid, signal.SIGTERM)
        trigger.wait(timeout=60)
        standin.stop()

    return EndToEnd(
        items_per_s=last_count / (last_growth - started),
        stored=last_count,
        chunks_sent=status.get("chunks_sent", 0),
        items_sent=status.get("items_sent", 0),
        profile_calls=status.get("profiles", {}).get("profile_calls", 0),
        api_requests=api.get("requests", 0),
        rss_mb_at=rss_at,
        peak_rss_mb=peak,
        cpu_s=cpu,
    )


def _wait_for_profiles(status_path: Path, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        profiles = json.loads(status_path.read_text()).get("profiles", {})
        if not profiles.get("members_queued") and not profiles.get("groups_queued"):
            return
        time.sleep(1.0)


def _count(folder: Path) -> int:
    try:
        return sum(1 for _ in os.scandir(folder))
    except FileNotFoundError:
        return 0


def _cpu_seconds(group: int) -> float:
    """User and system CPU seconds of the live processes of a process group (the
    stand-in is a single process: its id is matched too)."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # the process ended
        fields = text.rsplit(")", 1)[1].split()  # after "pid (command)"
        if int(fields[2]) == group or int(stat.parent.name) == group:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int, field: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


# -- 3. naive ---------------------------------------------------------------------


def naive(items: list[bytes], url: str) -> float:
    """One POST per item, a new connection for each, as the original did."""
    started = time.perf_counter()
    for line in items:
        answer = requests.post(
            url,
            params={"label": "rsvps", "bucket": BUCKET},
            data=line,
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
        answer.raise_for_status()
    return len(items) / (time.perf_counter() - started)


def function_env(data_dir: Path, standin_url: str) -> dict[str, str]:
    return {
        "LOCAL_DATA_DIR": str(data_dir),
        "ALLOWED_BUCKETS": BUCKET,
        "ALLOWED_COLLECTIONS": ",".join(COLLECTIONS.values()),
        "MEETUP_API_URL": standin_url,
        "MEETUP_API_KEY": API_KEY,
    }


# -- the table --------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.perf", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--items", type=int, default=1_000_000, help="end to end")
    parser.add_argument("--limit-items", type=int, default=200_000)
    parser.add_argument("--naive-items", type=int, default=3_000)
    parser.add_argument("--profile-items", type=int, default=20_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="perf-") as scratch_name:
        scratch = Path(scratch_name)
        print("1/5 the physical limits ...", flush=True)
        results["read_limit"], items = read_limit(args.limit_items)
        file_limits = [file_limit(items, scratch / "tight-loop-before")]

        functions = {
            target: serve_function(
                target, function_env(scratch / "naive", "http://127.0.0.1:9")
            )
            for target in ("save_stream_data", "save_member_data", "save_group_data")
        }
        try:
            print("2/5 naive and per chunk ...", flush=True)
            results["naive"] = naive(
                items[: args.naive_items], functions["save_stream_data"].url
            )
            for size, count in ((500, 40), (1000, 20)):
                chunks = measure_chunks(
                    functions["save_stream_data"].url,
                    count,
                    size,
                    BUCKET,
                    first_id=size * 1_000_000,
                )
                results[f"chunk_{size}_p50_ms"] = chunks["p50_ms"]
                results[f"chunk_{size}_p99_ms"] = chunks["p99_ms"]

            print(f"3/5 end to end, {args.items:,} items ...", flush=True)
            e2e = end_to_end(args.items, scratch / "e2e", functions, profiles=False)
            results["end_to_end"] = e2e.__dict__

            print(f"4/5 profiles, {args.profile_items:,} RSVPs ...", flush=True)
            with_profiles = end_to_end(
                args.profile_items, scratch / "profiles", functions, profiles=True
            )
            results["profiles"] = with_profiles.__dict__
        finally:
            for function in functions.values():
                function.stop()

        # File creation on a virtual machine can drift by several times within
        # minutes: the limit is measured before and after the end-to-end run, and
        # the run is compared with their mean.
        file_limits.append(file_limit(items, scratch / "tight-loop-after"))
        results["file_limits"] = file_limits
        results["file_limit"] = sum(file_limits) / len(file_limits)

    print("5/5 done\n")
    print("\n".join(table(results)))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def table(results: dict[str, Any]) -> list[str]:
    e2e, profiles = results["end_to_end"], results["profiles"]
    slower_limit = min(results["read_limit"], results["file_limit"])
    e2e_rate = e2e["items_per_s"]
    # Per 1,000 items read from the stream; a re-sent RSVP is an item too.
    invocations = 1000 * e2e["chunks_sent"] / max(1, e2e["items_sent"])
    invocations_with_profiles = (
        1000
        * (profiles["chunks_sent"] + profiles["profile_calls"])
        / max(1, profiles["items_sent"])
    )
    cpu_ms = ", ".join(
        f"{name} {1000 * seconds / max(1, e2e['items_sent']) * 1000:.0f} ms"
        for name, seconds in e2e["cpu_s"].items()
    )
    memory = ", ".join(f"{k} {v:.0f} MB" for k, v in e2e["rss_mb_at"].items())

    def row(what: str, value: str, note: str = "") -> str:
        return f"{what:46}{value:>22}   {note}"

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    return [
        row("what", "measured", "target, ratio"),
        row(
            "read and parse the stream (one reader)", f"{results['read_limit']:,.0f}/s"
        ),
        row(
            "create the same files (tight loop)",
            f"{results['file_limit']:,.0f}/s",
            "mean of before and after the end-to-end run: "
            + ", ".join(f"{rate:,.0f}/s" for rate in results["file_limits"]),
        ),
        row(
            "end to end: stand-in > trigger > stored",
            f"{e2e_rate:,.0f}/s",
            f"{e2e_rate / results['read_limit']:.0%} of reading, "
            f"{e2e_rate / results['file_limit']:.0%} of files "
            f"(>= 50% of the slower: {verdict(e2e_rate >= slower_limit / 2)})",
        ),
        row(
            "naive: one POST per item",
            f"{results['naive']:,.0f}/s",
            f"end to end is {e2e_rate / results['naive']:.0f}x "
            f"(>= 20x: {verdict(e2e_rate >= 20 * results['naive'])})",
        ),
        *(
            row(
                f"save_stream_data, {size:,}-item chunk",
                f"p50 {results[f'chunk_{size}_p50_ms']:.0f} ms",
                f"p99 {results[f'chunk_{size}_p99_ms']:.0f} ms",
            )
            for size in (500, 1000)
        ),
        row(
            "function invocations per 1,000 items",
            f"{invocations:.2f}",
            f"(<= 2: {verdict(invocations <= 2)}); with profiles "
            f"{invocations_with_profiles:.1f}",
        ),
        row("CPU time per 1,000 items, end to end", "", cpu_ms),
        row(
            "storage writes per 1,000 items stored",
            f"{1000 * e2e['items_sent'] / max(1, e2e['stored']):,.0f}",
            "create attempts, replays included",
        ),
        row(
            "Meetup API calls per 1,000 RSVPs",
            f"{1000 * profiles['api_requests'] / max(1, profiles['stored']):,.0f}",
            f"over {profiles['stored']:,} RSVPs",
        ),
        row(
            f"trigger peak memory, {e2e['items_sent']:,} items",
            f"{e2e['peak_rss_mb']:.0f} MB",
            f"(< 150 MB: {verdict(e2e['peak_rss_mb'] < 150)}); along the way {memory}",
        ),
    ]


if __name__ == "__main__":
    sys.exit(main())
