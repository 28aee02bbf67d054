"""Fixtures shared by every test: a clean environment, and the Google Cloud emulators
(fake-gcs-server, Firestore, Pub/Sub) started once per session on 127.0.0.1.

A test that needs an emulator this machine lacks is skipped with a reason naming
it; under CI (CI=true) on a machine that has the Google Cloud CLI, a missing
emulator fails the test instead, so a broken fixture cannot hide behind a skip.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from standin import cloud

PROJECT = "demo-test"


def pytest_configure(config: pytest.Config) -> None:
    # No client may ever reach for Google's metadata server or real credentials:
    # point the metadata server at a closed port and skip the GCE probe.
    closed = f"127.0.0.1:{cloud.free_port()}"
    os.environ["GCE_METADATA_HOST"] = closed
    os.environ["GCE_METADATA_IP"] = closed
    os.environ["NO_GCE_CHECK"] = "true"
    os.environ.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    for variable in (
        "STORAGE_EMULATOR_HOST",
        "FIRESTORE_EMULATOR_HOST",
        "PUBSUB_EMULATOR_HOST",
    ):
        os.environ.pop(variable, None)


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """functions/main.py, loaded in-process, adds a handler to the root logger;
    take it away again so that no test leaves one behind."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def _unavailable(error: cloud.EmulatorMissing) -> None:
    ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    if ci and shutil.which("gcloud"):
        pytest.fail(f"CI has the Google Cloud CLI but {error}", pytrace=False)
    pytest.skip(str(error))


@pytest.fixture(scope="session")
def emulator_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("emulator-logs")


@pytest.fixture(scope="session")
def fake_gcs_session(emulator_logs: Path) -> Iterator[cloud.Emulator]:
    try:
        emulator = cloud.start_fake_gcs(emulator_logs)
    except cloud.EmulatorMissing as error:
        _unavailable(error)
    yield emulator
    emulator.stop()


@pytest.fixture(scope="session")
def firestore_session(emulator_logs: Path) -> Iterator[cloud.Emulator]:
    try:
        emulator = cloud.start_firestore(emulator_logs)
    except cloud.EmulatorMissing as error:
        _unavailable(error)
    yield emulator
    emulator.stop()


@pytest.fixture(scope="session")
def pubsub_session(emulator_logs: Path) -> Iterator[cloud.Emulator]:
    try:
        emulator = cloud.start_pubsub(emulator_logs)
    except cloud.EmulatorMissing as error:
        _unavailable(error)
    yield emulator
    emulator.stop()


@pytest.fixture
def fake_gcs(
    fake_gcs_session: cloud.Emulator, monkeypatch: pytest.MonkeyPatch
) -> cloud.Emulator:
    """fake-gcs-server, emptied, with STORAGE_EMULATOR_HOST set for this test."""
    cloud.reset_fake_gcs(fake_gcs_session)
    for key, value in fake_gcs_session.env.items():
        monkeypatch.setenv(key, value)
    return fake_gcs_session


@pytest.fixture
def firestore_emulator(
    firestore_session: cloud.Emulator, monkeypatch: pytest.MonkeyPatch
) -> cloud.Emulator:
    """The Firestore emulator, emptied, with FIRESTORE_EMULATOR_HOST set."""
    cloud.reset_firestore(firestore_session, PROJECT)
    for key, value in firestore_session.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", PROJECT)
    return firestore_session


@pytest.fixture
def pubsub_emulator(
    pubsub_session: cloud.Emulator, monkeypatch: pytest.MonkeyPatch
) -> cloud.Emulator:
    """The Pub/Sub emulator with PUBSUB_EMULATOR_HOST set (use unique names)."""
    for key, value in pubsub_session.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", PROJECT)
    return pubsub_session
