"""Fixtures for the functions: each test loads functions/main.py afresh through
functions-framework, with the environment it chooses, and talks to it over its WSGI
test client; storage is either the local backend or the emulators.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import functions_framework
import pytest
from flask.testing import FlaskClient

from standin import cloud
from tests.conftest import PROJECT
from tests.scripted_server import ScriptedServer

FUNCTIONS_SOURCE = Path(__file__).resolve().parents[2] / "functions" / "main.py"
# functions/ deploys as a folder whose modules import each other by bare name;
# the unit tests import them the same way.
if str(FUNCTIONS_SOURCE.parent) not in sys.path:
    sys.path.append(str(FUNCTIONS_SOURCE.parent))
BUCKET = "meetup-data"
MEMBERS = "members"
GROUPS = "groups"

LoadFunction = Callable[..., FlaskClient]


@pytest.fixture
def load_function(monkeypatch: pytest.MonkeyPatch) -> LoadFunction:
    """load_function(target, ENV=value, ...) -> a test client of that function."""

    def load(target: str, **env: str) -> FlaskClient:
        monkeypatch.setenv("FUNCTION_TARGET", target)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        app = functions_framework.create_app(target, str(FUNCTIONS_SOURCE))
        return app.test_client()

    return load


class Backend(Protocol):
    """What a test needs of a storage backend, local or emulated."""

    env: dict[str, str]

    def objects(self, bucket: str) -> dict[str, bytes]: ...

    def documents(self, collection: str) -> dict[str, dict[str, Any]]: ...

    def written_anything(self) -> bool: ...


class LocalBackend:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.env = {"LOCAL_DATA_DIR": str(data_dir)}

    def objects(self, bucket: str) -> dict[str, bytes]:
        root = self.data_dir / "gcs" / bucket
        return {
            str(path.relative_to(root)): path.read_bytes()
            for path in root.rglob("*")
            if path.is_file() and not path.name.startswith(".")
        }

    def documents(self, collection: str) -> dict[str, dict[str, Any]]:
        folder = self.data_dir / "firestore" / collection
        return {
            path.stem: json.loads(path.read_bytes()) for path in folder.glob("*.json")
        }

    def written_anything(self) -> bool:
        return any(
            path.is_file() and not path.name.startswith(".")
            for path in self.data_dir.rglob("*")
        )


class EmulatorBackend:
    def __init__(self, gcs: cloud.Emulator, firestore: cloud.Emulator) -> None:
        from google.cloud import firestore as firestore_client
        from google.cloud import storage

        self.env = {**gcs.env, **firestore.env, "GOOGLE_CLOUD_PROJECT": PROJECT}
        self._storage = storage.Client(project=PROJECT)
        self._firestore = firestore_client.Client(project=PROJECT)
        for bucket in (BUCKET, "other-bucket"):
            self._storage.create_bucket(bucket)

    def objects(self, bucket: str) -> dict[str, bytes]:
        return {
            blob.name: blob.download_as_bytes()
            for blob in self._storage.list_blobs(bucket)
        }

    def documents(self, collection: str) -> dict[str, dict[str, Any]]:
        return {
            snapshot.id: snapshot.to_dict()
            for snapshot in self._firestore.collection(collection).stream()
        }

    def written_anything(self) -> bool:
        return any(self.objects(b) for b in (BUCKET, "other-bucket")) or any(
            self.documents(c) for c in (MEMBERS, GROUPS)
        )


@pytest.fixture
def local_backend(tmp_path: Path) -> LocalBackend:
    return LocalBackend(tmp_path / "data")


@pytest.fixture
def emulator_backend(
    fake_gcs: cloud.Emulator, firestore_emulator: cloud.Emulator
) -> EmulatorBackend:
    return EmulatorBackend(fake_gcs, firestore_emulator)


@pytest.fixture(params=["local", "emulator"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each test that takes this runs twice: local files, then the emulators."""
    return request.getfixturevalue(f"{request.param}_backend")


@pytest.fixture
def meetup_server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as server:
        yield server


@pytest.fixture
def slack() -> Iterator[ScriptedServer]:
    with ScriptedServer() as server:
        yield server
