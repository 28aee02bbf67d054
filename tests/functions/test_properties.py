"""Bad input in bulk: generated requests against each HTTP function on the local
backend. Every answer is a 2xx, or a 4xx with a JSON reason; never a 5xx or a
traceback; and nothing is ever written outside the allowed bucket or collection."""

from __future__ import annotations

import json
import shutil
import tempfile
import urllib.parse
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.functions.conftest import BUCKET, MEMBERS
from tests.scripted_server import Answer, ScriptedServer

LABELS = ["rsvps", "open_events", "event_comments", "photos", "open_venues"]
CONTENT_TYPES = [
    "application/json",
    "application/x-ndjson",
    "application/json; charset=latin-1",
    "text/plain",
    "text/csv",
    "multipart/form-data; boundary=x",
    "",
]
PROPERTY_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

names = st.one_of(
    st.sampled_from([*LABELS, BUCKET, MEMBERS, "groups", "", "..", "a/b", "%2F"]),
    st.text(max_size=30),
)
scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalar,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.sampled_from(["rsvp_id", "photo_id", "id", "mtime", "x"]), children
        ),
    ),
    max_leaves=12,
)
items = st.fixed_dictionaries(
    {},
    optional={
        "rsvp_id": scalar,
        "photo_id": scalar,
        "id": scalar,
        "mtime": scalar,
        "response": st.sampled_from(["yes", "no"]),
    },
)


@st.composite
def bodies(draw) -> bytes:
    kind = draw(st.sampled_from(["object", "array", "ndjson", "json", "bytes"]))
    if kind == "object":
        text = json.dumps(draw(items))
    elif kind == "array":
        text = json.dumps(draw(st.lists(st.one_of(items, json_values), max_size=6)))
    elif kind == "ndjson":
        lines = draw(st.lists(st.one_of(items, json_values), max_size=6))
        text = "\n".join(json.dumps(line) for line in lines)
    elif kind == "json":
        text = json.dumps(draw(json_values))
    else:
        return draw(st.binary(max_size=200))
    encoding = draw(st.sampled_from(["utf-8", "utf-16", "latin-1"]))
    return text.encode(encoding, errors="replace")


def written_paths(data_dir: Path) -> list[Path]:
    return [
        p for p in data_dir.rglob("*") if p.is_file() and not p.name.startswith(".")
    ]


def assert_answer_is_clean(answer) -> None:
    assert answer.status_code < 500, answer.get_data()[:300]
    payload = answer.get_json(silent=True)
    assert isinstance(payload, dict), answer.get_data()[:300]
    if answer.status_code >= 400:
        assert isinstance(payload.get("error"), str) and payload["error"]
    assert b"Traceback" not in answer.get_data()


@pytest.fixture
def data_dirs():
    made: list[Path] = []

    def fresh() -> Path:
        made.append(Path(tempfile.mkdtemp(prefix="property-")))
        return made[-1]

    yield fresh
    for folder in made:
        shutil.rmtree(folder, ignore_errors=True)


@PROPERTY_SETTINGS
@given(
    # Half the requests name a valid label and bucket, so that bodies get checked.
    label=st.one_of(st.sampled_from(LABELS), names),
    bucket=st.one_of(st.just(BUCKET), names),
    body=bodies(),
    content_type=st.sampled_from(CONTENT_TYPES),
    method=st.sampled_from(["POST", "POST", "POST", "GET", "PUT"]),
)
def test_save_stream_data_answers_cleanly_and_writes_only_where_allowed(
    load_function, data_dirs, label, bucket, body, content_type, method
):
    data_dir = data_dirs()
    client = load_function(
        "save_stream_data", ALLOWED_BUCKETS=BUCKET, LOCAL_DATA_DIR=str(data_dir)
    )
    query = urllib.parse.urlencode({"label": label, "bucket": bucket})

    answer = client.open(
        f"/?{query}", method=method, data=body, content_type=content_type or None
    )

    assert_answer_is_clean(answer)
    allowed = data_dir / "gcs" / BUCKET
    for path in written_paths(data_dir):
        assert path.parent.parent == allowed and path.parent.name in LABELS, path
    if answer.status_code == 200:
        assert len(written_paths(data_dir)) <= answer.get_json()["stored"]


@pytest.fixture(scope="module")
def meetup_everyone():
    """A Meetup API that knows member and group 5, and nobody else."""
    with ScriptedServer() as server:
        server.default = Answer(
            200,
            {"results": [{"id": 5, "name": "Five"}], "meta": {}},
            {"X-RateLimit-Remaining": "29", "X-RateLimit-Reset": "9"},
        )
        yield server


ids = st.one_of(
    st.integers(min_value=-5, max_value=2**64),
    st.text(max_size=12),
    st.lists(st.one_of(st.integers(min_value=-3, max_value=300), st.text(max_size=4))),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False),
)


@PROPERTY_SETTINGS
@given(
    target=st.sampled_from(["save_member_data", "save_group_data"]),
    collection=st.one_of(st.just(MEMBERS), names),
    id_value=ids,
    id_in_query=st.booleans(),
    extra=st.dictionaries(st.text(max_size=8), scalar, max_size=3),
    raw_body=st.one_of(st.none(), st.binary(max_size=60)),
)
def test_profile_functions_answer_cleanly_and_write_only_where_allowed(
    load_function,
    data_dirs,
    meetup_everyone,
    target,
    collection,
    id_value,
    id_in_query,
    extra,
    raw_body,
):
    data_dir = data_dirs()
    client = load_function(
        target,
        ALLOWED_COLLECTIONS=MEMBERS,
        MEETUP_API_URL=meetup_everyone.url,
        MEETUP_API_KEY="k",
        LOCAL_DATA_DIR=str(data_dir),
    )
    id_name = "member_id" if target == "save_member_data" else "group_id"
    query = {"collection": collection}
    body = {**extra}
    if id_in_query:
        query[id_name] = str(id_value)
    else:
        body[id_name] = id_value

    answer = client.post(
        "/?" + urllib.parse.urlencode(query),
        data=raw_body if raw_body is not None else json.dumps(body),
        content_type="application/json",
    )

    assert_answer_is_clean(answer)
    for path in written_paths(data_dir):
        assert path.parent == data_dir / "firestore" / MEMBERS, path
        assert path.name == "m5.json", path
