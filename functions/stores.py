"""Where the functions keep what they save: Cloud Storage and Firestore, or, with
LOCAL_DATA_DIR set, plain files that keep exactly the same layout.

Objects: `gcs/<bucket>/<object name>`. Documents: `firestore/<collection>/<id>.json`.
Both local stores are safe under concurrent requests and across processes: an
object is written unnamed, then hard-linked to its name (which fails if the name
exists, so a create is create-only and atomic); a document is merged under a file
lock and replaced atomically.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import errno
import fcntl
import itertools
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger(__name__)

# Storage writes retry with the client library's own truncated exponential backoff
# (google.api_core.retry: 1 s doubling to 60 s, with jitter). A create-only upload
# (if_generation_match=0) is safe to retry, so it may use the default policy; the
# whole retry is bounded so that the caller's request does not outlive its timeout.
DEFAULT_RETRY_DEADLINE_S = 30.0
# The storage client's connection pool holds 10 connections.
UPLOAD_THREADS = 10


class StoreUnavailable(RuntimeError):
    """A write failed for a reason that may pass: the caller should retry."""


class ObjectStore(Protocol):
    def create_all(
        self, bucket: str, objects: list[tuple[str, bytes]]
    ) -> list[bool | StoreUnavailable]:
        """Create each (name, data) object, create-only: for each, True if it was
        created, False if it existed already (never overwritten), or the error."""


class DocumentStore(Protocol):
    def merge(self, collection: str, documents: dict[str, dict[str, Any]]) -> None:
        """Merge each document into the collection, as set(merge=True) does."""


class GcsObjectStore:
    """Cloud Storage, through google-cloud-storage (or fake-gcs-server locally)."""

    def __init__(
        self, project: str | None, retry_deadline_s: float = DEFAULT_RETRY_DEADLINE_S
    ) -> None:
        from google.api_core import exceptions
        from google.cloud import storage
        from google.cloud.storage.retry import DEFAULT_RETRY

        self._client = storage.Client(project=project)
        self._buckets: dict[str, storage.Bucket] = {}
        self._retry = DEFAULT_RETRY.with_deadline(retry_deadline_s)
        self._precondition_failed = exceptions.PreconditionFailed
        self._api_error = exceptions.GoogleAPIError
        # Uploads of one chunk run concurrently, as many as the client's
        # connection pool holds.
        self._pool = concurrent.futures.ThreadPoolExecutor(
            UPLOAD_THREADS, thread_name_prefix="upload"
        )

    def create_all(
        self, bucket: str, objects: list[tuple[str, bytes]]
    ) -> list[bool | StoreUnavailable]:
        futures = [
            self._pool.submit(self.create, bucket, name, data) for name, data in objects
        ]
        results: list[bool | StoreUnavailable] = []
        for future in futures:
            try:
                results.append(future.result())
            except StoreUnavailable as error:
                results.append(error)
        return results

    def create(self, bucket: str, name: str, data: bytes) -> bool:
        # Client.bucket() only builds a handle: no API call per item.
        handle = self._buckets.get(bucket)
        if handle is None:
            handle = self._buckets.setdefault(bucket, self._client.bucket(bucket))

        blob = handle.blob(name)
        try:
            blob.upload_from_string(
                data,
                content_type="application/json",
                if_generation_match=0,
                retry=self._retry,
            )
        except self._precondition_failed:
            return False
        except (self._api_error, OSError) as error:
            raise StoreUnavailable(f"{type(error).__name__}: {error}") from error
        return True


class FirestoreDocumentStore:
    """Firestore in native mode, through google-cloud-firestore (or its emulator)."""

    def __init__(self, project: str | None) -> None:
        from google.api_core import exceptions
        from google.cloud import firestore

        self._client = firestore.Client(project=project)
        self._api_error = exceptions.GoogleAPIError

    def merge(self, collection: str, documents: dict[str, dict[str, Any]]) -> None:
        # One batch per call: the callers never pass more than Firestore's 500
        # writes per batch.
        batch = self._client.batch()
        for document_id, fields in documents.items():
            batch.set(
                self._client.collection(collection).document(document_id),
                fields,
                merge=True,
            )
        try:
            batch.commit()
        except self._api_error as error:
            raise StoreUnavailable(f"{type(error).__name__}: {error}") from error


class LocalObjectStore:
    """Objects as files under DATA_DIR/gcs/<bucket>/<object name>."""

    def __init__(self, data_dir: Path, fsync: bool = False) -> None:
        # Plain strings, not Path: Path's joins cost more per item than parsing
        # the item does.
        self._root = str(data_dir / "gcs")
        self._fsync = fsync
        self._folders: set[str] = set()

    def create_all(
        self, bucket: str, objects: list[tuple[str, bytes]]
    ) -> list[bool | StoreUnavailable]:
        # One after the other: a local file is created in microseconds, and
        # threads would only add their own overhead.
        results: list[bool | StoreUnavailable] = []
        for name, data in objects:
            try:
                results.append(self.create(bucket, name, data))
            except StoreUnavailable as error:
                results.append(error)
        return results

    def create(self, bucket: str, name: str, data: bytes) -> bool:
        path = f"{self._root}/{bucket}/{name}"
        folder = os.path.dirname(path)
        try:
            if folder not in self._folders:
                os.makedirs(folder, exist_ok=True)
                self._folders.add(folder)
            return _create_only(folder, path, data, self._fsync)
        except OSError as error:
            # A folder removed behind our back is made again on the next try.
            self._folders.discard(folder)
            raise StoreUnavailable(f"{type(error).__name__}: {error}") from error


class LocalDocumentStore:
    """Documents as JSON files under DATA_DIR/firestore/<collection>/<id>.json."""

    def __init__(self, data_dir: Path) -> None:
        self._root = data_dir / "firestore"

    def merge(self, collection: str, documents: dict[str, dict[str, Any]]) -> None:
        folder = self._root / collection
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with _locked(folder / ".lock"):
                for document_id, fields in documents.items():
                    path = folder / f"{document_id}.json"
                    current = json.loads(path.read_bytes()) if path.exists() else {}
                    merged = deep_merge(current, fields)
                    _replace(path, json.dumps(merged, default=_json_default).encode())
        except OSError as error:
            raise StoreUnavailable(f"{type(error).__name__}: {error}") from error


def deep_merge(current: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Fields of update win; maps present in both are merged, as Firestore does."""
    merged = dict(current)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _json_default(value: object) -> str:
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


_temporary_names = itertools.count()

# O_TMPFILE (Linux) makes a file with no name; linking it into place afterwards
# costs one directory change instead of three (create a temporary name, link,
# unlink). Filesystems without it answer one of these errors, once.
_O_TMPFILE = getattr(os, "O_TMPFILE", 0)
_NO_TMPFILE_ERRORS = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL)
_tmpfile_works = bool(_O_TMPFILE) and Path("/proc/self/fd").is_dir()


def _create_only(folder: str, path: str, data: bytes, fsync: bool) -> bool:
    """Create path (in folder) holding data unless it exists; False if it did.

    The data is written to a file that has no name yet (or a private temporary
    name), then linked to its final name: link() fails when the name exists, so
    two concurrent creates have exactly one winner, and a reader never sees a
    half-written object, even after a crash."""
    global _tmpfile_works

    if _tmpfile_works:
        try:
            fd = os.open(folder, os.O_WRONLY | _O_TMPFILE, 0o644)
        except OSError as error:
            if error.errno not in _NO_TMPFILE_ERRORS:
                raise
            _tmpfile_works = False
        else:
            return _link_unnamed(fd, path, data, fsync)

    return _link_temporary(folder, path, data, fsync)


def _link_unnamed(fd: int, path: str, data: bytes, fsync: bool) -> bool:
    try:
        _write_all(fd, data)
        if fsync:
            os.fsync(fd)
        # linkat(AT_SYMLINK_FOLLOW) on the /proc link names the open file. Python
        # calls linkat, not link, only when a directory fd is given; with an
        # absolute source path that fd is not otherwise used.
        os.link(f"/proc/self/fd/{fd}", path, src_dir_fd=fd, follow_symlinks=True)
    except FileExistsError:
        return False
    finally:
        os.close(fd)
    return True


def _link_temporary(folder: str, path: str, data: bytes, fsync: bool) -> bool:
    # The temporary name is unique to this process and call (itertools.count is
    # atomic under the GIL).
    temporary = f"{folder}/.tmp-{os.getpid()}-{next(_temporary_names)}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            _write_all(fd, data)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(temporary)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _replace(path: Path, data: bytes) -> None:
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with lock_path.open("a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
