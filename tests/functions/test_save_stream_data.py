"""save_stream_data on the local backend and on fake-gcs-server."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from standin import cloud
from tests.functions.conftest import BUCKET, Backend, LoadFunction, LocalBackend

RSVP = (
    b'{"rsvp_id":1672114274,"mtime":1496767464097,"response":"yes",'
    b'"member":{"member_id":1936372,"photo":"https:\\/\\/secure.meetupstatic.com'
    b'\\/photos\\/member\\/thumb_1963399.jpeg","member_name":"Nick"},'
    b'"group":{"group_id":1822458,"group_urlname":"TorontoTNT"}}'
)


def stream_function(load_function: LoadFunction, backend: Backend, **env: str):
    return load_function(
        "save_stream_data",
        ALLOWED_BUCKETS=f"{BUCKET},other-bucket",
        **backend.env,
        **env,
    )


def post(client, body: bytes, label: str = "rsvps", bucket: str = BUCKET, **kwargs):
    kwargs.setdefault("content_type", "application/x-ndjson")
    return client.post(f"/?label={label}&bucket={bucket}", data=body, **kwargs)


def rsvp(rsvp_id: int, mtime: int | None = 1_500_000_000_000, **fields) -> bytes:
    item = {"rsvp_id": rsvp_id, **fields}
    if mtime is not None:
        item["mtime"] = mtime
    return json.dumps(item, separators=(",", ":")).encode()


def test_one_item_is_stored_as_sent_under_its_id_and_mtime(load_function, backend):
    client = stream_function(load_function, backend)

    answer = post(client, RSVP, content_type="application/json")

    assert answer.status_code == 200, answer.json
    assert answer.json == {
        "label": "rsvps",
        "stored": 1,
        "already_stored": 0,
        "rejected": [],
    }
    # The exact bytes: escaped slashes stay escaped, nothing is re-serialized.
    assert backend.objects(BUCKET) == {"rsvps/1672114274_1496767464097.json": RSVP}


def test_a_json_array_keeps_each_elements_exact_text(load_function, backend):
    client = stream_function(load_function, backend)
    first = b'{"id": "xxlwkmywpbzb",  "mtime": 5, "name": "a\\/b"}'
    second = b'{"id":"240465167","mtime":6}'
    body = b"[ " + first + b" ,\n  " + second + b" ]"

    answer = post(client, body, label="open_events", content_type="application/json")

    assert answer.status_code == 200, answer.json
    assert answer.json["stored"] == 2
    assert backend.objects(BUCKET) == {
        "open_events/xxlwkmywpbzb_5.json": first,
        "open_events/240465167_6.json": second,
    }


@pytest.mark.parametrize(
    ("label", "item", "name"),
    [
        ("rsvps", {"rsvp_id": 7, "mtime": 9}, "rsvps/7_9.json"),
        ("open_events", {"id": "abc9", "mtime": 9}, "open_events/abc9_9.json"),
        ("event_comments", {"id": 8, "mtime": 9}, "event_comments/8_9.json"),
        ("photos", {"photo_id": 6, "ctime": 1, "mtime": 9}, "photos/6_9.json"),
        ("open_venues", {"id": 5, "mtime": 9}, "open_venues/5_9.json"),
    ],
)
def test_each_label_names_objects_by_its_own_id_field(
    load_function, local_backend, label, item, name
):
    client = stream_function(load_function, local_backend)

    answer = post(client, json.dumps(item).encode(), label=label)

    assert answer.status_code == 200, answer.json
    assert list(local_backend.objects(BUCKET)) == [name]


def test_a_replayed_item_is_counted_as_already_stored_and_not_rewritten(
    load_function, backend
):
    client = stream_function(load_function, backend)
    post(client, rsvp(1, response="yes") + b"\n" + rsvp(2))

    # Same id and mtime, other content: the first copy stays, as create-only says.
    answer = post(client, rsvp(1, response="no") + b"\n" + rsvp(3))

    assert answer.status_code == 200, answer.json
    assert (answer.json["stored"], answer.json["already_stored"]) == (1, 1)
    objects = backend.objects(BUCKET)
    assert sorted(objects) == [
        "rsvps/1_1500000000000.json",
        "rsvps/2_1500000000000.json",
        "rsvps/3_1500000000000.json",
    ]
    assert json.loads(objects["rsvps/1_1500000000000.json"])["response"] == "yes"


def test_an_item_without_mtime_is_named_by_the_time_of_receipt(
    load_function, local_backend
):
    client = stream_function(load_function, local_backend)
    before = int(time.time() * 1000)

    answer = post(client, rsvp(4, mtime=None))

    after = int(time.time() * 1000)
    assert answer.status_code == 200, answer.json
    [name] = local_backend.objects(BUCKET)
    epoch = int(name.removeprefix("rsvps/4_").removesuffix(".json"))
    assert before <= epoch <= after


def test_bad_items_are_rejected_with_index_and_reason_and_the_rest_stored(
    load_function, backend, caplog
):
    client = stream_function(load_function, backend)
    body = b"\n".join(
        [
            rsvp(1),
            b'{"mtime": 5}',
            b"[1, 2]",
            b'{"rsvp_id": 2, "mtime"',
            b'{"rsvp_id": "../../etc", "mtime": 5}',
            b'{"rsvp_id": 3, "mtime": "soon"}',
            rsvp(4),
        ]
    )

    answer = post(client, body)

    assert answer.status_code == 200, answer.json
    assert answer.json["stored"] == 2
    assert [(r["index"], r["reason"]) for r in answer.json["rejected"]] == [
        (1, "no rsvp_id"),
        (2, "not a JSON object"),
        (3, "not valid JSON"),
        (4, "rsvp_id has characters an object name cannot hold"),
        (5, "mtime is not a time in milliseconds"),
    ]
    assert sorted(backend.objects(BUCKET)) == [
        "rsvps/1_1500000000000.json",
        "rsvps/4_1500000000000.json",
    ]
    assert any(
        r.levelname == "ERROR" and "rejected 5 of 7 rsvps items" in r.getMessage()
        for r in caplog.records
    )


def test_a_500_item_chunk_is_stored_whole(load_function, backend):
    client = stream_function(load_function, backend)
    body = b"\n".join(rsvp(i, mtime=1_000 + i) for i in range(1, 501)) + b"\n"

    answer = post(client, body)

    assert answer.status_code == 200, answer.json
    assert answer.json["stored"] == 500
    assert len(backend.objects(BUCKET)) == 500


def test_a_local_storage_failure_answers_503_so_the_caller_retries(
    load_function, local_backend
):
    client = stream_function(load_function, local_backend)
    # A file where the bucket's folder should be: every write fails.
    (local_backend.data_dir / "gcs").mkdir(parents=True)
    (local_backend.data_dir / "gcs" / BUCKET).write_text("in the way")

    answer = post(client, rsvp(1))

    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "1"
    assert answer.json["error"] == "storage unavailable"

    (local_backend.data_dir / "gcs" / BUCKET).unlink()
    assert post(client, rsvp(1)).json["stored"] == 1


@pytest.mark.emulator
def test_an_unreachable_storage_answers_503(
    load_function, fake_gcs, monkeypatch: pytest.MonkeyPatch
):
    closed = f"http://127.0.0.1:{cloud.free_port()}"
    client = load_function(
        "save_stream_data",
        ALLOWED_BUCKETS=BUCKET,
        STORAGE_EMULATOR_HOST=closed,
        GOOGLE_CLOUD_PROJECT="demo-test",
        STORAGE_RETRY_SECONDS="0.5",
    )

    answer = post(client, rsvp(1))

    assert answer.status_code == 503
    assert answer.json["stored"] == 0


@pytest.mark.parametrize(
    "unnamed_files", [True, False], ids=["O_TMPFILE", "temporary-name"]
)
def test_concurrent_creates_of_one_name_have_exactly_one_winner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unnamed_files: bool
):
    import stores

    if unnamed_files and not stores._tmpfile_works:
        pytest.skip("this filesystem has no O_TMPFILE")
    monkeypatch.setattr(stores, "_tmpfile_works", unnamed_files)
    store = stores.LocalObjectStore(tmp_path)
    results: list[bool] = []
    lock = threading.Lock()

    def create(payload: bytes) -> None:
        created = store.create(BUCKET, "rsvps/1_1.json", payload)
        with lock:
            results.append(created)

    threads = [
        threading.Thread(target=create, args=(f"copy {n}".encode(),)) for n in range(16)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(results) == [False] * 15 + [True]
    assert stores._tmpfile_works is unnamed_files  # the path under test was taken
    stored = (tmp_path / "gcs" / BUCKET / "rsvps" / "1_1.json").read_bytes()
    assert stored.startswith(b"copy ")
    assert [p.name for p in (tmp_path / "gcs" / BUCKET / "rsvps").iterdir()] == [
        "1_1.json"
    ]


def test_a_filesystem_without_o_tmpfile_falls_back_to_a_temporary_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import errno
    import os

    import stores

    if not hasattr(os, "O_TMPFILE"):
        pytest.skip("this system has no O_TMPFILE")
    real_open = os.open

    def open_without_tmpfile(path, flags, *args):
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, "not supported")
        return real_open(path, flags, *args)

    monkeypatch.setattr(stores, "_tmpfile_works", True)
    monkeypatch.setattr(os, "open", open_without_tmpfile)
    store = stores.LocalObjectStore(tmp_path)

    assert store.create(BUCKET, "rsvps/1_1.json", b"first") is True
    assert store.create(BUCKET, "rsvps/1_1.json", b"second") is False

    assert stores._tmpfile_works is False
    folder = tmp_path / "gcs" / BUCKET / "rsvps"
    assert [p.name for p in folder.iterdir()] == ["1_1.json"]
    assert (folder / "1_1.json").read_bytes() == b"first"


def test_local_backend_keeps_exactly_the_cloud_storage_layout(
    load_function, local_backend: LocalBackend
):
    client = stream_function(load_function, local_backend)

    post(client, rsvp(11, mtime=22), bucket="other-bucket")

    path = local_backend.data_dir / "gcs" / "other-bucket" / "rsvps" / "11_22.json"
    assert path.read_bytes() == rsvp(11, mtime=22)
