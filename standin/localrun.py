"""The whole system on one machine: the stand-ins, the four functions and the
trigger, with a live view of the collection and a summary at the end.

    python -m standin.localrun [--duration S] [--emulators] [--data-dir DIR] ...

By default the functions keep their data as local files (LOCAL_DATA_DIR); with
--emulators they use fake-gcs-server and Google's Firestore and Pub/Sub emulators
instead, with error reports reaching report_slack through a Pub/Sub push
subscription: the cloud code paths, end to end. Ctrl-C stops everything cleanly.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from collector import contract, outbox
from standin import cloud, logsink
from standin.functions import ServedFunction, serve_function

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
LABELS = ("rsvps", "open_events", "event_comments", "photos", "open_venues")
BUCKET = "meetup-streams"
ERROR_BUCKET = "meetup-error-logs"
COLLECTIONS = {"members": "members", "groups": "groups"}
API_KEY = "local-meetup-key"
EMULATOR_PROJECT = "demo-local"
TOPIC = "error-reports"
TRIGGER_STOP_TIMEOUT_S = 60.0


@dataclass
class Options:
    data_dir: Path
    duration_s: float | None
    emulators: bool
    rate: str
    seed: int
    streams: str | None
    view_interval_s: float
    extra_standin_args: list[str] = field(default_factory=list)


@dataclass
class Child:
    """A process of the run, stopped by process group."""

    name: str
    process: subprocess.Popen

    def stop(self, timeout_s: float = 10.0) -> None:
        cloud.stop_process_group(self.process, timeout_s)


class LocalRun:
    """Starts every part, watches the run and stops it in the right order."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.data_dir = options.data_dir.resolve()
        self.logs_dir = self.data_dir / "logs"
        self.standin: Child | None = None
        self.standin_url = ""
        self.functions: dict[str, ServedFunction] = {}
        self.trigger: Child | None = None
        self.emulators: list[cloud.Emulator] = []
        self.function_env: dict[str, str] = {}
        self.sink: logsink.LogSink | None = None
        self.stop_requested = threading.Event()

    # -- start ------------------------------------------------------------------

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Every process of the run inherits this, so they can all be found by it.
        os.environ["MEETUP_LOCAL_RUN"] = str(self.data_dir)
        self._start_standin()
        routes = self._start_storage()
        self.sink = logsink.LogSink(self.logs_dir, routes)
        self._start_functions()
        if not self.options.emulators:
            routes.append(logsink.push_to(self.functions["report_slack"].url))
        self._start_trigger()

    def _start_standin(self) -> None:
        port = cloud.free_port()
        command = [
            sys.executable,
            "-m",
            "standin",
            "--port",
            str(port),
            "--seed",
            str(self.options.seed),
            "--rate",
            self.options.rate,
            "--api-key",
            API_KEY,
            "--slack-log",
            str(self.data_dir / "alerts.jsonl"),
            *self.options.extra_standin_args,
        ]
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        with (self.logs_dir / "standin.log").open("ab") as log_file:
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.standin = Child("standin", process)
        self.standin_url = f"http://127.0.0.1:{port}"
        _wait_for(
            lambda: _answers(self.standin_url + "/_standin/stats"),
            "the stand-in",
            process,
        )

    def _start_storage(self) -> list[logsink.Deliver]:
        """Where the functions keep data, and where ERROR entries go."""
        if not self.options.emulators:
            self.function_env = {"LOCAL_DATA_DIR": str(self.data_dir)}
            return [logsink.archive_to(self.data_dir / "gcs" / ERROR_BUCKET)]

        emulator_logs = self.logs_dir / "emulators"
        gcs = cloud.start_fake_gcs(emulator_logs, self.data_dir / "fake-gcs")
        self.emulators.append(gcs)
        self.emulators.append(cloud.start_firestore(emulator_logs))
        self.emulators.append(cloud.start_pubsub(emulator_logs))
        self.function_env = {"GOOGLE_CLOUD_PROJECT": EMULATOR_PROJECT}
        for emulator in self.emulators:
            self.function_env.update(emulator.env)
        os.environ.update(self.function_env)

        from google.cloud import storage

        client = storage.Client(project=EMULATOR_PROJECT)
        for bucket in (BUCKET, ERROR_BUCKET):
            if client.lookup_bucket(bucket) is None:
                client.create_bucket(bucket)
        return [_archive_to_bucket(client.bucket(ERROR_BUCKET)), _publish_to_topic()]

    def _start_functions(self) -> None:
        assert self.sink is not None
        env = {
            **self.function_env,
            "ALLOWED_BUCKETS": BUCKET,
            "ALLOWED_COLLECTIONS": ",".join(COLLECTIONS.values()),
            "MEETUP_API_URL": self.standin_url,
            "MEETUP_API_KEY": API_KEY,
            "SLACK_WEBHOOK_URL": self.standin_url + "/slack/webhook",
            # Locally, a report is folded with its repeats for a minute.
            "REPORT_FOLD_SECONDS": "60",
        }
        for target in (
            "report_slack",
            "save_stream_data",
            "save_member_data",
            "save_group_data",
        ):
            served = serve_function(target, env, output=subprocess.PIPE)
            assert served.process.stdout is not None
            self.sink.attach(target, served.process.stdout)
            self.functions[target] = served

        if self.options.emulators:
            self._subscribe_report_slack()

    def _subscribe_report_slack(self) -> None:
        from google.api_core import exceptions
        from google.cloud import pubsub_v1

        publisher = pubsub_v1.PublisherClient()
        subscriber = pubsub_v1.SubscriberClient()
        topic = publisher.topic_path(EMULATOR_PROJECT, TOPIC)
        with contextlib.suppress(exceptions.AlreadyExists):
            publisher.create_topic(name=topic)
        subscription = subscriber.subscription_path(EMULATOR_PROJECT, f"{TOPIC}-push")
        with contextlib.suppress(exceptions.AlreadyExists):
            subscriber.create_subscription(
                name=subscription,
                topic=topic,
                push_config={
                    "push_endpoint": self.functions["report_slack"].url + topic
                },
            )

    def write_config(self) -> Path:
        """The trigger's config for this run."""
        config = trigger_config(
            self.standin_url,
            {target: served.url for target, served in self.functions.items()},
            self.data_dir / "state",
        )
        path = self.data_dir / "config.json"
        path.write_text(json.dumps(config, indent=2) + "\n")
        return path

    def _start_trigger(self) -> None:
        assert self.sink is not None
        command = [
            sys.executable,
            str(ROOT / "trigger_gcf.py"),
            "--config",
            str(self.write_config()),
        ]
        if self.options.streams:
            command += ["--streams", self.options.streams]
        process = subprocess.Popen(
            command,
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
        self.trigger = Child("trigger", process)

    # -- watch ------------------------------------------------------------------

    def watch(self, render: Callable[[dict[str, Any]], None]) -> int:
        """Show the collection until the duration ends, Ctrl-C, or the trigger
        exits; then stop the trigger and return its exit status."""
        assert self.trigger is not None
        started = time.monotonic()
        deadline = (
            started + self.options.duration_s if self.options.duration_s else None
        )
        while not self.stop_requested.is_set():
            if self.trigger.process.poll() is not None:
                logger.error(
                    "the trigger exited with %d", self.trigger.process.returncode
                )
                break
            if deadline and time.monotonic() >= deadline:
                break
            render(self.snapshot(time.monotonic() - started))
            self.stop_requested.wait(self.options.view_interval_s)

        return self.stop_trigger()

    def snapshot(self, elapsed_s: float) -> dict[str, Any]:
        """What the view shows: the trigger's status.json and the stand-in's stats."""
        status_path = self.data_dir / "state" / "status.json"
        try:
            status = json.loads(status_path.read_text())
        except (OSError, ValueError):
            status = {}
        try:
            standin = requests.get(
                self.standin_url + "/_standin/stats", timeout=2
            ).json()
        except (requests.RequestException, ValueError):
            standin = {}
        return {
            "elapsed_s": elapsed_s,
            "status": status,
            "standin": standin,
            "errors": dict(self.sink.errors_by_component) if self.sink else {},
        }

    def stop_trigger(self) -> int:
        """SIGTERM, so the trigger sends what it holds and records checkpoints."""
        assert self.trigger is not None
        process = self.trigger.process
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=TRIGGER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                logger.error("the trigger did not stop in time; killing it")
                self.trigger.stop()
        return process.returncode

    # -- stop -------------------------------------------------------------------

    def stop(self) -> None:
        """Stop everything that was started, newest first."""
        if self.trigger:
            self.trigger.stop()
        # What the trigger and the storing functions logged last must reach
        # report_slack before it stops: stop them, drain the sink, then stop it.
        storing = ("save_stream_data", "save_member_data", "save_group_data")
        for target in storing:
            if target in self.functions:
                self.functions[target].stop()
        if self.sink:
            self.sink.drain(["trigger", *storing])
        if "report_slack" in self.functions:
            self.functions["report_slack"].stop()
        if self.sink:
            self.sink.close()
        if self.standin:
            self.standin.stop()
        for emulator in reversed(self.emulators):
            emulator.stop()


def trigger_config(
    standin_url: str, function_urls: dict[str, str], state_dir: Path
) -> dict[str, Any]:
    """config.example.json with the stand-in's streams and the local functions."""
    config = _without_comments(json.loads((ROOT / "config.example.json").read_text()))
    config["functions"] = {
        target: function_urls[target]
        for target in ("save_stream_data", "save_member_data", "save_group_data")
    }
    config["bucket"] = BUCKET
    config["collections"] = dict(COLLECTIONS)
    config["streams"] = {
        label: {
            "url": f"{standin_url}/2/{label}"
            + ("?trickle" if label == "open_venues" else ""),
            "enabled": True,
        }
        for label in LABELS
    }
    config["state_dir"] = str(state_dir)
    config.setdefault("status", {})["interval_seconds"] = 2.0
    config.setdefault("logging", {})["destination"] = "stdout"
    return config


def _archive_to_bucket(bucket: Any) -> logsink.Deliver:
    def archive(entry: dict[str, Any]) -> None:
        log_name = entry["logName"].rsplit("/", 1)[-1]
        moment = entry["timestamp"]
        blob = bucket.blob(
            f"{log_name}/{moment[:10].replace('-', '/')}/{entry['insertId']}.json"
        )
        blob.upload_from_string(json.dumps(entry), content_type="application/json")

    return archive


def _publish_to_topic() -> logsink.Deliver:
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(EMULATOR_PROJECT, TOPIC)

    def publish(entry: dict[str, Any]) -> None:
        publisher.publish(topic, json.dumps(entry).encode()).result(timeout=30)

    return publish


def _without_comments(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _without_comments(v) for k, v in value.items() if not k.startswith("_")
        }
    return value


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).ok
    except requests.RequestException:
        return False


def _wait_for(
    condition: Callable[[], bool], what: str, process: subprocess.Popen
) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start within 30 s")
        time.sleep(0.1)


# -- the view -------------------------------------------------------------------


class View:
    """A compact live view: redrawn in place on a terminal, a line at a time
    otherwise (a log file, CI)."""

    def __init__(self, out: Any = sys.stdout, every_s: float = 10.0) -> None:
        self._out = out
        self._tty = out.isatty()
        self._drawn_lines = 0
        self._every_s = every_s
        self._last_line_at = -every_s

    def render(self, snapshot: dict[str, Any]) -> None:
        lines = view_lines(snapshot)
        if self._tty:
            if self._drawn_lines:
                self._out.write(f"\x1b[{self._drawn_lines}F\x1b[J")
            self._out.write("\n".join(lines) + "\n")
            self._drawn_lines = len(lines)
        elif snapshot["elapsed_s"] - self._last_line_at >= self._every_s:
            self._out.write(status_line(snapshot) + "\n")
            self._last_line_at = snapshot["elapsed_s"]
        self._out.flush()


def status_line(snapshot: dict[str, Any]) -> str:
    """The view in one line, for output that is not a terminal."""
    status = snapshot["status"]
    profiles = status.get("profiles", {})
    read = sum(s.get("items", 0) for s in status.get("streams", {}).values())
    return (
        f"{snapshot['elapsed_s']:.0f} s: read {read}, stored "
        f"{status.get('items_stored', 0)}, outbox {status.get('outbox_items', 0)}, "
        f"retries {status.get('retries', 0)}, dead letters "
        f"{status.get('dead_letters', 0)}; profiles stored "
        f"{profiles.get('members_stored', 0)} members, "
        f"{profiles.get('groups_stored', 0)} groups; errors "
        f"{sum(snapshot['errors'].values())}, Slack alerts "
        f"{snapshot['standin'].get('slack', {}).get('messages', 0)}"
    )


def view_lines(snapshot: dict[str, Any]) -> list[str]:
    status = snapshot["status"]
    standin = snapshot["standin"].get("streams", {})
    streams = status.get("streams", {})
    lines = [
        f"local run {snapshot['elapsed_s']:6.0f} s   (Ctrl-C stops and summarizes)",
        f"{'stream':15}{'served':>9}{'read':>9}{'items/s':>9}{'outbox':>8}"
        f"{'reconnects':>11}",
    ]
    for label in LABELS:
        stream = streams.get(label, {})
        served = standin.get(label, {}).get("items_served", "")
        lines.append(
            f"{label:15}{served!s:>9}{stream.get('items', ''):>9}"
            f"{stream.get('items_per_second', ''):>9}"
            f"{stream.get('outbox_items', ''):>8}{stream.get('reconnects', ''):>11}"
        )
    profiles = status.get("profiles", {})
    errors = snapshot["errors"]
    lines += [
        f"chunks sent {status.get('chunks_sent', 0)}, in flight "
        f"{status.get('chunks_in_flight', 0)}, items stored "
        f"{status.get('items_stored', 0)} (+{status.get('items_already_stored', 0)} "
        f"already), retries {status.get('retries', 0)}, dead letters "
        f"{status.get('dead_letters', 0)}, malformed {status.get('malformed', 0)}",
        "profiles: "
        + ", ".join(
            f"{kind} queued {profiles.get(kind + '_queued', 0)} stored "
            f"{profiles.get(kind + '_stored', 0)}"
            for kind in ("members", "groups")
        )
        + f", Meetup calls {profiles.get('profile_calls', 0)} (throttled "
        f"{profiles.get('profile_throttled', 0)})",
        f"errors logged: {sum(errors.values())}"
        + (f" ({', '.join(f'{k} {v}' for k, v in errors.items())})" if errors else "")
        + f", Slack alerts: {snapshot['standin'].get('slack', {}).get('messages', 0)}",
    ]
    return lines


def summary_of(run: LocalRun, exit_status: int | None) -> dict[str, Any]:
    """What was served and what was stored, counted where each lies; written to
    summary.json in the data folder too."""
    from standin import collected

    if run.options.emulators:
        stored_names, members, groups = _emulator_contents()
    else:
        stored_names = {
            label: collected.object_names(run.data_dir, label, BUCKET)
            for label in LABELS
        }
        members = collected.count_documents(run.data_dir, COLLECTIONS["members"])
        groups = collected.count_documents(run.data_dir, COLLECTIONS["groups"])

    # An item served but not stored is not lost if the trigger will ask for it
    # again: its next start resumes each stream from the checkpoint minus a margin.
    config = json.loads((run.data_dir / "config.json").read_text())
    margin_ms = config.get("reader", {}).get("resume_margin_ms", 0)
    try:
        checkpoints = json.loads(
            (run.data_dir / "state" / "checkpoints.json").read_text()
        )
    except (OSError, ValueError):
        checkpoints = {}

    # Nor is an item still in the trigger's outbox: it is sent on the next start.
    streams = {}
    for label in LABELS:
        served = _served_versions(run.standin_url, label)
        missing = {n: m for n, m in served.items() if n not in stored_names[label]}
        waiting = missing.keys() & _outbox_names(run.data_dir / "state", label)
        resume_from = (checkpoints.get(label) or {}).get("mtime")
        replayed = {
            n
            for n, mtime in missing.items()
            if n not in waiting
            and (resume_from is None or mtime > resume_from - margin_ms)
        }
        streams[label] = {
            "served": len(served),
            "stored": len(stored_names[label]),
            "in_outbox": len(waiting),
            "to_be_read_again": len(replayed),
            "lost": len(missing) - len(waiting) - len(replayed),
        }
    result = {
        "trigger_exit_status": exit_status,
        "streams": streams,
        "members_stored": members,
        "groups_stored": groups,
        "slack_alerts": len(collected.alerts(run.data_dir)),
        "errors_logged": dict(run.sink.errors_by_component) if run.sink else {},
    }
    (run.data_dir / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def summary_lines(run: LocalRun, result: dict[str, Any]) -> list[str]:
    """The summary for a person, with where everything lies."""
    streams = result["streams"]
    exit_status = result["trigger_exit_status"]
    if run.options.emulators:
        where = [
            "  data: in the emulators (stopped now); fake-gcs-server's files are in "
            f"{run.data_dir / 'fake-gcs'}",
        ]
    else:
        where = [
            f"  objects:   {run.data_dir / 'gcs' / BUCKET}/<label>/<id>_<mtime>.json",
            f"  documents: {run.data_dir / 'firestore'}/<collection>/m<id>.json",
            f"  errors:    {run.data_dir / 'gcs' / ERROR_BUCKET}/",
        ]
    served = sum(s["served"] for s in streams.values())
    again = sum(s["to_be_read_again"] for s in streams.values())
    in_outbox = sum(s["in_outbox"] for s in streams.values())
    lost = sum(s["lost"] for s in streams.values())
    lines = [
        "",
        "summary"
        + (f" (the trigger exited with {exit_status})" if exit_status else ""),
        "  items stored per stream: "
        + ", ".join(f"{label} {s['stored']}" for label, s in streams.items()),
        f"  distinct items served {served}, lost {lost}"
        + (
            f"; {in_outbox} wait in the trigger's outbox for its next start"
            if in_outbox
            else ""
        )
        + (
            f"; {again} served as the trigger stopped are read again on its next "
            "start (it resumes from its checkpoint)"
            if again
            else ""
        ),
        f"  profiles stored: {result['members_stored']} members, "
        f"{result['groups_stored']} groups",
        f"  errors logged: {sum(result['errors_logged'].values())}, alerts sent to "
        f"the Slack stand-in: {result['slack_alerts']}",
        *where,
        f"  alerts:    {run.data_dir / 'alerts.jsonl'}",
        f"  logs:      {run.logs_dir}/<component>.log",
        f"  trigger state: {run.data_dir / 'state'}",
        f"read it back with: {_python_command()} -m standin.collected --data-dir "
        f"{run.options.data_dir} counts",
    ]
    return lines


def _python_command() -> str:
    """The interpreter running this, as a user would type it from the project."""
    try:
        return str(Path(sys.executable).relative_to(Path.cwd()))
    except ValueError:
        return sys.executable


def _outbox_names(state_dir: Path, label: str) -> set[str]:
    """Object names of the items the trigger holds in its outbox, not yet sent."""
    names = set()
    id_field = contract.ITEM_ID_FIELDS[label]
    for segment in (state_dir / "outbox" / label).glob("*"):
        records, _ = outbox.decode_records(segment.read_bytes())
        for record in records:
            item_id = json.loads(record.raw).get(id_field)
            if record.mtime is not None and item_id is not None:
                names.add(f"{item_id}_{record.mtime}.json")
    return names


def _served_versions(standin_url: str, label: str) -> dict[str, int]:
    """Object name to mtime of each distinct item version the stand-in served."""
    answer = requests.get(f"{standin_url}/_standin/served/{label}", timeout=60)
    answer.raise_for_status()
    versions = (json.loads(line) for line in answer.text.splitlines() if line)
    return {
        f"{v['id']}_{v['mtime']}.json": v["mtime"]
        for v in versions
        if v["mtime"] is not None
    }


def _emulator_contents() -> tuple[dict[str, set[str]], int, int]:
    from google.cloud import firestore, storage

    storage_client = storage.Client(project=EMULATOR_PROJECT)
    objects = {
        label: {
            blob.name.removeprefix(f"{label}/")
            for blob in storage_client.list_blobs(BUCKET, prefix=f"{label}/")
        }
        for label in LABELS
    }
    documents = firestore.Client(project=EMULATOR_PROJECT)
    members = sum(1 for _ in documents.collection(COLLECTIONS["members"]).stream())
    groups = sum(1 for _ in documents.collection(COLLECTIONS["groups"]).stream())
    return objects, members, groups


# -- main -----------------------------------------------------------------------


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="make run ARGS='...'  (or python -m standin.localrun)",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument(
        "--duration",
        type=float,
        metavar="SECONDS",
        help="stop by itself after this long (default: run until Ctrl-C)",
    )
    parser.add_argument(
        "--emulators",
        action="store_true",
        help="store in fake-gcs-server and the Firestore emulator, and route errors "
        "through the Pub/Sub emulator, instead of local files",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("local-data"),
        help="where the data, logs, alerts and the trigger's state go (default "
        "local-data); a second run goes on from what is there",
    )
    parser.add_argument(
        "--rate",
        default="5",
        help="items per second of every stream, or LABEL=R (default 5)",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the stand-in")
    parser.add_argument(
        "--streams", help="comma list of the streams to read (default: all five)"
    )
    parser.add_argument(
        "--standin-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more flag for the stand-in, e.g. --standin-arg=--fault=rsvps:"
        "drop_after=50 (repeatable; see python -m standin --help)",
    )
    args = parser.parse_args(argv)
    if args.duration is not None and args.duration <= 0:
        parser.error("--duration must be more than 0")
    return Options(
        data_dir=args.data_dir,
        duration_s=args.duration,
        emulators=args.emulators,
        rate=args.rate,
        seed=args.seed,
        streams=args.streams,
        view_interval_s=1.0,
        extra_standin_args=args.standin_arg,
    )


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    run = LocalRun(options)

    def request_stop(signum: int, frame: object) -> None:
        run.stop_requested.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    exit_status: int | None = None
    summary: list[str] = []
    try:
        print(f"starting the local run in {options.data_dir} ...", flush=True)
        run.start()
        exit_status = run.watch(View().render)
    except cloud.EmulatorMissing as missing:
        print(f"cannot run with --emulators: {missing}", file=sys.stderr)
        return 2
    finally:
        print("stopping ...", flush=True)
        try:
            if run.trigger:
                exit_status = run.stop_trigger()
                # Count while the stand-in and the emulators still run.
                summary = summary_lines(run, summary_of(run, exit_status))
        finally:
            run.stop()
    print("\n".join(summary))
    return 0 if exit_status == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
