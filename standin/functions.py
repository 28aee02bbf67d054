"""The four Cloud Functions served locally: one functions-framework process per
function, on 127.0.0.1, each in its own process group, as Cloud Functions runs one
service per function.

Used by the local run, the end-to-end tests and the benchmarks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from standin.cloud import free_port, stop_process_group

logger = logging.getLogger(__name__)

FUNCTIONS_DIR = Path(__file__).resolve().parent.parent / "functions"
HTTP_FUNCTIONS = ("save_stream_data", "save_member_data", "save_group_data")
STARTUP_TIMEOUT_S = 30.0


@dataclass
class ServedFunction:
    """One running functions-framework process."""

    target: str
    port: int
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 10.0) -> None:
        stop_process_group(self.process, timeout_s)


def functions_framework_command() -> list[str]:
    """functions-framework from the running interpreter's environment."""
    script = Path(sys.executable).with_name("functions-framework")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "functions_framework"]


def serve_function(
    target: str,
    env: dict[str, str],
    output: IO[bytes] | int | None = subprocess.DEVNULL,
    port: int | None = None,
    threads: int | None = None,
) -> ServedFunction:
    """Start functions-framework for one target and wait until it accepts
    connections. env is added to this process's environment."""
    port = port or free_port()
    command = [
        *functions_framework_command(),
        "--target",
        target,
        "--source",
        str(FUNCTIONS_DIR / "main.py"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    if target == "report_slack":
        command += ["--signature-type", "cloudevent"]
    child_env = {
        **os.environ,
        "NO_GCE_CHECK": "true",
        "PYTHONUNBUFFERED": "1",
        **env,
    }
    if threads:
        child_env["THREADS"] = str(threads)
    process = subprocess.Popen(
        command,
        env=child_env,
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT if output is not None else None,
        start_new_session=True,
    )
    served = ServedFunction(target, port, process)

    try:
        _wait_for_port(served)
    except BaseException:
        served.stop()
        raise
    logger.info("serving %s at %s (pid %d)", target, served.url, process.pid)
    return served


def _wait_for_port(served: ServedFunction) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if not served.running():
            raise RuntimeError(
                f"functions-framework for {served.target} exited with "
                f"{served.process.returncode}"
            )
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", served.port), timeout=1),
        ):
            return
        time.sleep(0.05)
    raise RuntimeError(
        f"functions-framework for {served.target} did not listen within "
        f"{STARTUP_TIMEOUT_S:.0f} s"
    )
