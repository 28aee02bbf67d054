"""Soak with chaos: the whole local system under random faults, then a count of
what was served against what was stored.

    .venv/bin/python -m bench.soak --duration 600 [--rate 20] [--rate rsvps=50]
                                   [--fault-every 4]

The stand-in serves each stream at its --rate items/s for --duration seconds, then
goes quiet. Meanwhile, every --fault-every seconds on average, one fault strikes
at random: a stream drops, stalls or refuses connections; a function restarts;
save_stream_data answers a burst of 503s; another client uses up the Meetup key's
rate limit; the Meetup API fails a share of calls; the trigger is killed with
SIGKILL and started again. When the streams are done, the faults stop and the
trigger gets time to catch up; then it is stopped and everything is counted:
distinct items served, stored, missing (must be 0), duplicates absorbed, profile
ids seen and stored, whether the Meetup limit was ever exceeded (must be no), and
the trigger's peak and final memory. The exit status is 0 only if nothing is
missing and the limit held.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import requests

from bench.chaos_proxy import ChaosProxy
from collector import contract
from standin import logsink
from standin.functions import ServedFunction, serve_function
from standin.localrun import BUCKET, COLLECTIONS, LABELS, ROOT, trigger_config
from standin.server import ApiConfig, SlackConfig, StandIn, StandInConfig, StreamConfig

API_KEY = "soak-key"
CATCH_UP_TIMEOUT_S = 300.0


@dataclass
class Report:
    duration_s: float
    faults: dict[str, int] = field(default_factory=dict)
    served: int = 0
    stored: int = 0
    missing: int = 0
    duplicates_absorbed: int = 0
    member_ids_seen: int = 0
    members_stored: int = 0
    group_ids_seen: int = 0
    groups_stored: int = 0
    api_limit: int = 0
    api_max_requests_in_window: int = 0
    api_limit_exceeded: bool = False
    api_throttled_answers: int = 0
    trigger_starts: int = 0
    trigger_peak_rss_mb: float = 0.0
    trigger_final_rss_mb: float = 0.0
    slack_alerts: int = 0
    catch_up_s: float = 0.0

    @property
    def passed(self) -> bool:
        return self.missing == 0 and not self.api_limit_exceeded

    def lines(self) -> list[str]:
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items()))
        return [
            f"soak of {self.duration_s:.0f} s with faults: {faults or 'none'}",
            f"  distinct items served     {self.served}",
            f"  stored                    {self.stored}",
            f"  missing                   {self.missing}  (must be 0)",
            f"  duplicates absorbed       {self.duplicates_absorbed}",
            f"  member ids seen / stored  {self.member_ids_seen} / "
            f"{self.members_stored}",
            f"  group ids seen / stored   {self.group_ids_seen} / {self.groups_stored}",
            f"  Meetup limit exceeded     {'YES' if self.api_limit_exceeded else 'no'}"
            f"  (at most {self.api_max_requests_in_window} of {self.api_limit} "
            f"requests in a window; {self.api_throttled_answers} throttled answers)",
            f"  trigger memory            peak {self.trigger_peak_rss_mb:.0f} MB, "
            f"final {self.trigger_final_rss_mb:.0f} MB, over "
            f"{self.trigger_starts} starts",
            f"  alerts to Slack           {self.slack_alerts}",
            f"  catch-up after the faults {self.catch_up_s:.0f} s",
            "  PASSED" if self.passed else "  FAILED",
        ]


class Trigger:
    """trigger_gcf.py as a child process that can be killed and started again."""

    def __init__(self, config_path: Path, sink: logsink.LogSink) -> None:
        self.config_path = config_path
        self.sink = sink
        self.process: subprocess.Popen | None = None
        self.starts = 0
        self.peak_rss_kb = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        process = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "trigger_gcf.py"),
                "--config",
                str(self.config_path),
            ],
            cwd=ROOT,
            env={**os.environ, "NO_GCE_CHECK": "true", "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        assert process.stdout is not None and process.stderr is not None
        self.sink.attach("trigger", process.stdout)
        self.sink.attach("trigger", process.stderr, stderr=True)
        with self._lock:
            self.process = process
            self.starts += 1

    def kill(self) -> None:
        with self._lock:
            process = self.process
        if process and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def stop(self, timeout_s: float = 60.0) -> int | None:
        with self._lock:
            process = self.process
        if process is None or process.poll() is not None:
            return process.returncode if process else None
        os.killpg(process.pid, signal.SIGTERM)
        try:
            return process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def rss_kb(self) -> int:
        """Resident memory of the running trigger, 0 between runs."""
        with self._lock:
            process = self.process
        if process is None:
            return 0
        try:
            status = Path(f"/proc/{process.pid}/status").read_text()
        except OSError:
            return 0
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
                self.peak_rss_kb = max(self.peak_rss_kb, rss)
                return rss
        return 0


class Soak:
    def __init__(self, args: argparse.Namespace, data_dir: Path) -> None:
        self.args = args
        self.data_dir = data_dir
        self.random = random.Random(args.seed)
        self.report = Report(duration_s=args.duration)
        self.functions: dict[str, ServedFunction] = {}
        self.function_env: dict[str, str] = {}
        self.stop_chaos = threading.Event()
        self.max_items = {
            label: max(1, int(rate * args.duration))
            for label, rate in args.rates.items()
        }
        self.standin = StandIn(
            StandInConfig(
                seed=args.seed,
                api_key=API_KEY,
                streams={
                    label: StreamConfig(rate=rate, max_items=self.max_items[label])
                    for label, rate in args.rates.items()
                },
                api=ApiConfig(limit=30, window_seconds=10.0),
                slack=SlackConfig(log_file=data_dir / "alerts.jsonl"),
            )
        )
        self.proxy: ChaosProxy | None = None
        self.sink = logsink.LogSink(data_dir / "logs", [])
        self.trigger: Trigger | None = None

    # -- set-up -----------------------------------------------------------------

    def start(self) -> None:
        self.standin.start()
        self.function_env = {
            "LOCAL_DATA_DIR": str(self.data_dir),
            "ALLOWED_BUCKETS": BUCKET,
            "ALLOWED_COLLECTIONS": ",".join(COLLECTIONS.values()),
            "MEETUP_API_URL": self.standin.url,
            "MEETUP_API_KEY": API_KEY,
            "SLACK_WEBHOOK_URL": self.standin.url + "/slack/webhook",
        }
        for target in (
            "report_slack",
            "save_stream_data",
            "save_member_data",
            "save_group_data",
        ):
            self.functions[target] = self._serve(target)
        self.sink._routes.append(logsink.push_to(self.functions["report_slack"].url))
        self.proxy = ChaosProxy(self.functions["save_stream_data"].url).start()

        urls = {t: f.url for t, f in self.functions.items()}
        urls["save_stream_data"] = self.proxy.url
        config = trigger_config(self.standin.url, urls, self.data_dir / "state")
        # Short timeouts, so that stalls are seen and dealt with within a soak.
        config["reader"]["read_timeout_seconds"] = 5.0
        config["reader"]["idle_timeout_seconds"] = 15.0
        config["reader"]["http_backoff"] = {
            "initial_seconds": 1.0,
            "maximum_seconds": 8.0,
        }
        config["sender"]["retry_maximum_seconds"] = 8.0
        config["status"]["interval_seconds"] = 5.0
        config_path = self.data_dir / "config.json"
        config_path.write_text(json.dumps(config, indent=2))
        self.trigger = Trigger(config_path, self.sink)
        self.trigger.start()

    def _serve(self, target: str, port: int | None = None) -> ServedFunction:
        served = serve_function(
            target, self.function_env, output=subprocess.PIPE, port=port
        )
        assert served.process.stdout is not None
        self.sink.attach(target, served.process.stdout)
        return served

    # -- chaos ------------------------------------------------------------------

    def chaos(self) -> None:
        faults: list[Callable[[], None]] = [
            self._stream_drop,
            self._stream_stall,
            self._stream_refuses,
            self._function_restart,
            self._burst_503,
            self._neighbour_uses_the_key,
            self._api_errors,
            self._kill_trigger,
        ]
        deadline = time.monotonic() + self.args.duration
        while not self.stop_chaos.is_set() and time.monotonic() < deadline:
            pause = self.random.expovariate(1.0 / self.args.fault_every)
            if self.stop_chaos.wait(min(pause, max(0.0, deadline - time.monotonic()))):
                break
            if time.monotonic() >= deadline:
                break
            fault = self.random.choice(faults)
            name = fault.__name__.lstrip("_")
            self.report.faults[name] = self.report.faults.get(name, 0) + 1
            try:
                fault()
            except Exception as error:  # the soak goes on; the count says so
                print(f"fault {name} failed to apply: {error}", file=sys.stderr)

    def _later(self, seconds: float, action: Callable[[], None]) -> None:
        timer = threading.Timer(seconds, action)
        timer.daemon = True
        timer.start()

    def _stream_drop(self) -> None:
        label = self.random.choice(LABELS)
        self.standin.set_faults(label, drop_after=self.random.randint(3, 40))
        self._later(self.random.uniform(3, 10), lambda: self._clear(label))

    def _stream_stall(self) -> None:
        label = self.random.choice(LABELS)
        self.standin.set_faults(
            label,
            stall_after=self.random.randint(1, 20),
            stall_seconds=self.random.uniform(2, 10),
        )
        self._later(self.random.uniform(5, 12), lambda: self._clear(label))

    def _stream_refuses(self) -> None:
        label = self.random.choice(LABELS)
        self.standin.set_faults(
            label, drop_after=self.random.randint(1, 10), connect_503=3
        )
        self._later(self.random.uniform(3, 8), lambda: self._clear(label))

    def _clear(self, label: str) -> None:
        self.standin.set_faults(
            label, drop_after=None, stall_after=None, stall_seconds=0, connect_503=0
        )

    def _function_restart(self) -> None:
        target = self.random.choice(
            ["save_stream_data", "save_member_data", "save_group_data"]
        )
        served = self.functions[target]
        served.stop()
        time.sleep(self.random.uniform(0.5, 4))
        self.functions[target] = self._serve(target, port=served.port)

    def _burst_503(self) -> None:
        assert self.proxy is not None
        self.proxy.burst(self.random.uniform(2, 10))

    def _neighbour_uses_the_key(self) -> None:
        # Another client with the same key spends what is left of the window.
        session = requests.Session()
        for _ in range(30):
            answer = session.get(
                f"{self.standin.url}/2/members",
                params={"member_id": "1", "key": API_KEY},
                timeout=10,
            )
            if answer.headers.get("X-RateLimit-Remaining") in ("0", None):
                break

    def _api_errors(self) -> None:
        self.standin.set_faults("api", error_rate=self.random.uniform(0.2, 0.6))
        self._later(
            self.random.uniform(3, 10),
            lambda: self.standin.set_faults("api", error_rate=0.0),
        )

    def _kill_trigger(self) -> None:
        assert self.trigger is not None
        self.trigger.kill()
        time.sleep(self.random.uniform(0.2, 3))
        self.trigger.start()

    # -- the end ----------------------------------------------------------------

    def stored_names(self, label: str) -> set[str]:
        folder = self.data_dir / "gcs" / BUCKET / label
        try:
            return {p for p in os.listdir(folder) if not p.startswith(".")}
        except FileNotFoundError:
            return set()

    def served_names(self, label: str) -> set[str]:
        return {
            f"{item_id}_{mtime}.json"
            for item_id, mtime in self.standin.served(label)
            if mtime is not None
        }

    def missing(self) -> int:
        return sum(
            len(self.served_names(label) - self.stored_names(label)) for label in LABELS
        )

    def catch_up(self) -> None:
        """Let the trigger store everything served, within a bound."""
        for label in LABELS:
            self._clear(label)
        self.standin.set_faults("api", error_rate=0.0)
        started = time.monotonic()
        while time.monotonic() - started < CATCH_UP_TIMEOUT_S:
            generated = all(
                stream["generated"] >= self.max_items[label]
                for label, stream in self.standin.stats()["streams"].items()
            )
            if generated and self.missing() == 0:
                break
            time.sleep(1.0)
        self.report.catch_up_s = time.monotonic() - started

    def count(self) -> None:
        report = self.report
        for label in LABELS:
            served = self.served_names(label)
            stored = self.stored_names(label)
            report.served += len(served)
            report.stored += len(stored)
            report.missing += len(served - stored)

        member_ids, group_ids = set(), set()
        for label in LABELS:
            folder = self.data_dir / "gcs" / BUCKET / label
            for name in self.stored_names(label):
                item = json.loads((folder / name).read_bytes())
                member = contract.nested_value(
                    item, contract.MEMBER_ID_PATHS.get(label, ("-",))
                )
                group = contract.nested_value(
                    item, contract.GROUP_ID_PATHS.get(label, ("-",))
                )
                if isinstance(member, int):
                    member_ids.add(member)
                if isinstance(group, int):
                    group_ids.add(group)
        report.member_ids_seen = len(member_ids)
        report.group_ids_seen = len(group_ids)
        report.members_stored = _count_files(
            self.data_dir / "firestore" / COLLECTIONS["members"]
        )
        report.groups_stored = _count_files(
            self.data_dir / "firestore" / COLLECTIONS["groups"]
        )

        api = self.standin.stats()["api"]
        report.api_limit = api["limit"]
        report.api_max_requests_in_window = api["max_requests_in_window"]
        report.api_limit_exceeded = bool(api["limit_exceeded"])
        report.api_throttled_answers = api.get("throttled", 0)
        report.slack_alerts = self.standin.stats()["slack"]["messages"]
        report.duplicates_absorbed = _already_stored(self.data_dir / "logs")

    def stop(self) -> None:
        self.stop_chaos.set()
        if self.trigger:
            self.trigger.stop()
        for target, served in self.functions.items():
            if target != "report_slack":
                served.stop()
        self.sink.drain(["trigger", "save_stream_data"])
        if "report_slack" in self.functions:
            self.functions["report_slack"].stop()
        self.sink.close()
        if self.proxy:
            self.proxy.stop()
        self.standin.stop()


def _count_files(folder: Path) -> int:
    with contextlib.suppress(FileNotFoundError):
        return sum(1 for name in os.listdir(folder) if name.endswith(".json"))
    return 0


def _already_stored(logs_dir: Path) -> int:
    """Items the function found already stored, from its own log lines."""
    total = 0
    with (
        contextlib.suppress(FileNotFoundError),
        (logs_dir / "save_stream_data.log").open(
            encoding="utf-8", errors="replace"
        ) as log,
    ):
        for line in log:
            if '"message": "stored ' not in line:
                continue
            with contextlib.suppress(ValueError, KeyError):
                message = json.loads(line)["message"]
                total += int(message.split("(", 1)[1].split(" ", 1)[0])
    return total


def run_soak(args: argparse.Namespace, data_dir: Path) -> Report:
    soak = Soak(args, data_dir)
    memory_samples: list[int] = []
    sampling = threading.Event()

    def sample_memory() -> None:
        while not sampling.wait(0.5):
            if soak.trigger:
                memory_samples.append(soak.trigger.rss_kb())

    sampler = threading.Thread(target=sample_memory, daemon=True)
    try:
        soak.start()
        sampler.start()
        soak.chaos()
        soak.catch_up()
        if soak.trigger:
            soak.report.trigger_final_rss_mb = soak.trigger.rss_kb() / 1024
    finally:
        sampling.set()
        soak.stop()
    soak.count()
    if soak.trigger:
        soak.report.trigger_starts = soak.trigger.starts
        soak.report.trigger_peak_rss_mb = soak.trigger.peak_rss_kb / 1024
    return soak.report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--duration", type=float, default=60.0, help="seconds of faults"
    )
    parser.add_argument(
        "--rate",
        action="append",
        default=[],
        metavar="[LABEL=]RATE",
        help="items/s of every stream (default 20), or of one stream: "
        "--rate 20 --rate rsvps=100 --rate open_venues=2",
    )
    parser.add_argument(
        "--fault-every", type=float, default=4.0, help="mean seconds between faults"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data-dir", type=Path, help="default: a temporary folder")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    try:
        args.rates = stream_rates(args.rate)
    except ValueError as error:
        parser.error(f"--rate: {error}")
    return args


def stream_rates(values: list[str], default: float = 20.0) -> dict[str, float]:
    """Items/s per label from --rate values: a bare number sets every stream, and
    LABEL=RATE one stream; later values win."""
    rates = dict.fromkeys(LABELS, default)
    for value in values:
        label, _, number = value.rpartition("=")
        try:
            rate = float(number)
        except ValueError:
            raise ValueError(f"{number!r} is not a number of items/s") from None
        if not rate > 0:
            raise ValueError(f"{value!r}: a rate must be above 0")
        if not label:
            rates = dict.fromkeys(LABELS, rate)
        elif label in rates:
            rates[label] = rate
        else:
            raise ValueError(f"{label!r} is not one of {', '.join(LABELS)}")
    return rates


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="soak-") as scratch:
        data_dir = args.data_dir or Path(scratch)
        data_dir.mkdir(parents=True, exist_ok=True)
        report = run_soak(args, data_dir)
    print("\n".join(report.lines()))
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2) + "\n")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
