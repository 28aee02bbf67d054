"""Throughput and memory of the trigger, end to end, on this machine.

    .venv/bin/python bench/bench_collector.py [--items 1000000] [--naive-items 3000]

1. naive: one loop reads the rsvps stream and POSTs each item on its own to the
   local save_stream_data (a new connection per request), as earlier collectors
   did. Items per second.
2. trigger: trigger_gcf.py (a subprocess) reads the stand-in's rsvps stream at
   full speed (no rate) and sends it through its outbox, in chunks, to the same
   local functions. Items per second from start until every item served is
   acknowledged, and the trigger's resident memory (RSS) sampled every half
   second, with its peak (VmHWM) at the end.

The stand-in runs in this process; the functions run under functions-framework
on the local backend in a temporary folder (deleted at the end). Nothing here is
asserted: the figures are printed, and written as JSON with --json PATH.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from standin.server import (  # noqa: E402
    ApiConfig,
    StandIn,
    StandInConfig,
    StreamConfig,
)

TARGETS = ("save_stream_data", "save_member_data", "save_group_data")
BUCKET = "meetup-bench"
API_KEY = "bench-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def start_functions(data_dir: Path, api_url: str, logs: Path) -> dict[str, Any]:
    processes, urls = {}, {}
    env = {
        **os.environ,
        "LOCAL_DATA_DIR": str(data_dir),
        "MEETUP_API_URL": api_url,
        "MEETUP_API_KEY": API_KEY,
        "ALLOWED_BUCKETS": BUCKET,
        "ALLOWED_COLLECTIONS": "members,groups",
        "NO_GCE_CHECK": "true",
    }
    for target in TARGETS:
        port = free_port()
        with open(logs / f"{target}.log", "wb") as log:
            processes[target] = subprocess.Popen(
                [
                    str(ROOT / ".venv" / "bin" / "functions-framework"),
                    "--target",
                    target,
                    "--source",
                    str(ROOT / "functions" / "main.py"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        urls[target] = f"http://127.0.0.1:{port}"
        wait_for_port(port)
    return {"processes": processes, "urls": urls}


def stop_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in KiB."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0])
    return values


def run_naive(standin: StandIn, function_url: str, items: int) -> dict[str, Any]:
    """Read the stream and POST every item on its own."""
    started = time.monotonic()
    sent = 0
    with requests.get(f"{standin.url}/2/rsvps", stream=True, timeout=30) as stream:
        for line in stream.iter_lines():
            if not line:
                continue
            answer = requests.post(
                function_url,
                params={"label": "rsvps", "bucket": BUCKET},
                data=line + b"\n",
                headers={"Content-Type": "application/x-ndjson"},
                timeout=30,
            )
            answer.raise_for_status()
            sent += 1
            if sent >= items:
                break
    elapsed = time.monotonic() - started
    return {
        "items": sent,
        "seconds": round(elapsed, 2),
        "items_per_second": round(sent / elapsed, 1),
    }


def run_trigger(
    standin: StandIn, urls: dict[str, str], work: Path, items: int, profiles: bool
) -> dict[str, Any]:
    config = {
        "functions": urls,
        "bucket": BUCKET,
        "state_dir": str(work / "state"),
        "streams": {"rsvps": {"url": f"{standin.url}/2/rsvps"}},
        "profiles": {"enabled": profiles},
        "logging": {"level": "WARNING"},
        "status": {"interval_seconds": 0.5},
    }
    config_path = work / "bench-config.json"
    config_path.write_text(json.dumps(config))
    status_path = work / "state" / "status.json"

    started = time.monotonic()
    with open(work / "trigger.log", "wb") as log:
        trigger = subprocess.Popen(
            [sys.executable, "trigger_gcf.py", "--config", str(config_path)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    samples: list[tuple[float, int, int]] = []
    try:
        while True:
            time.sleep(0.5)
            if trigger.poll() is not None:
                raise RuntimeError(f"the trigger exited with {trigger.returncode}")
            rss = proc_status(trigger.pid)["VmRSS"]
            try:
                status = json.loads(status_path.read_text())
            except (FileNotFoundError, ValueError):
                continue
            sent = status.get("items_sent", 0)
            samples.append((round(time.monotonic() - started, 1), sent, rss))
            generated = standin.stats()["streams"]["rsvps"]["generated"]
            if generated >= items and status["outbox_items"] == 0 and sent >= items:
                break
        elapsed = time.monotonic() - started
        peak = proc_status(trigger.pid)["VmHWM"]
        trigger.send_signal(signal.SIGTERM)
        code = trigger.wait(timeout=60)
    finally:
        if trigger.poll() is None:
            trigger.kill()
            trigger.wait()

    served = standin.stats()["streams"]["rsvps"]["items_served"]
    checkpoints = [samples[len(samples) * k // 10] for k in range(1, 10)] + [
        samples[-1]
    ]
    return {
        "items_served": served,
        "items_sent": samples[-1][1],
        "seconds": round(elapsed, 1),
        "items_per_second": round(samples[-1][1] / elapsed, 1),
        "peak_rss_mib": round(peak / 1024, 1),
        "rss_mib_over_time": [
            {"seconds": t, "items_sent": n, "rss_mib": round(r / 1024, 1)}
            for t, n, r in checkpoints
        ],
        "exit_code": code,
        "profiles": json.loads(status_path.read_text()).get("profiles"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--naive-items", type=int, default=3000)
    parser.add_argument("--no-profiles", action="store_true")
    parser.add_argument("--work", help="keep the data here instead of a temp folder")
    parser.add_argument("--json", help="also write the figures to this file")
    arguments = parser.parse_args()

    work = Path(arguments.work or tempfile.mkdtemp(prefix="bench-collector-"))
    work.mkdir(parents=True, exist_ok=True)
    api_port = free_port()
    functions = start_functions(work / "data", f"http://127.0.0.1:{api_port}", work)
    results: dict[str, Any] = {"cpus": os.cpu_count()}
    try:
        naive_config = StandInConfig(
            seed=1,
            port=api_port,
            api_key=API_KEY,
            streams={"rsvps": StreamConfig(rate=None)},
        )
        with StandIn(naive_config) as standin:
            results["naive"] = run_naive(
                standin, functions["urls"]["save_stream_data"], arguments.naive_items
            )
        print("naive:", json.dumps(results["naive"]), flush=True)
        shutil.rmtree(work / "data" / "gcs", ignore_errors=True)

        trigger_config = StandInConfig(
            seed=2,
            port=api_port,
            api_key=API_KEY,
            streams={"rsvps": StreamConfig(rate=None, max_items=arguments.items)},
            api=ApiConfig(),
        )
        with StandIn(trigger_config) as standin:
            results["trigger"] = run_trigger(
                standin,
                functions["urls"],
                work,
                arguments.items,
                profiles=not arguments.no_profiles,
            )
        print("trigger:", json.dumps(results["trigger"], indent=1), flush=True)
    finally:
        for process in functions["processes"].values():
            stop_group(process)
        if not arguments.work:
            shutil.rmtree(work, ignore_errors=True)

    speedup = (
        results["trigger"]["items_per_second"] / results["naive"]["items_per_second"]
    )
    results["speedup"] = round(speedup, 1)
    print(f"speed-up of the trigger over the naive loop: x{speedup:.1f}")
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
