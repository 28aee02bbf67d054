"""Bad input gets a 4xx with a JSON reason, and nothing is written or fetched."""

from __future__ import annotations

import io

import pytest

from tests.functions.conftest import BUCKET, GROUPS, MEMBERS

ITEM = b'{"rsvp_id": 1, "mtime": 2}'
NDJSON = "application/x-ndjson"

# (method, query, body, content type, status, words the error must contain)
STREAM_CASES = {
    "GET instead of POST": ("GET", "label=rsvps&bucket=B", b"", NDJSON, 405, "POST"),
    "empty body": ("POST", "label=rsvps&bucket=B", b"", NDJSON, 400, "empty"),
    "blank body": ("POST", "label=rsvps&bucket=B", b" \n ", NDJSON, 400, "empty"),
    "not JSON": ("POST", "label=rsvps&bucket=B", b"hello", None, 400, "JSON"),
    "broken JSON array": (
        "POST",
        "label=rsvps&bucket=B",
        b'[{"a": 1',
        None,
        400,
        "JSON",
    ),
    "JSON number": ("POST", "label=rsvps&bucket=B", b"42", None, 400, "object"),
    "JSON string": ("POST", "label=rsvps&bucket=B", b'"x"', None, 400, "object"),
    "not UTF-8": ("POST", "label=rsvps&bucket=B", b'["\xff"]', None, 400, "UTF-8"),
    "unknown content type": (
        "POST",
        "label=rsvps&bucket=B",
        ITEM,
        "text/csv",
        415,
        "content type",
    ),
    "missing label": ("POST", "bucket=B", ITEM, NDJSON, 400, "label is missing"),
    "unknown label": ("POST", "label=members&bucket=B", ITEM, NDJSON, 400, "unknown"),
    "label with slash": ("POST", "label=rsvps/x&bucket=B", ITEM, NDJSON, 400, "label"),
    "missing bucket": ("POST", "label=rsvps", ITEM, NDJSON, 400, "bucket is missing"),
    "bucket not allowed": (
        "POST",
        "label=rsvps&bucket=someone-elses",
        ITEM,
        NDJSON,
        403,
        "not allowed",
    ),
    "bucket with slash": ("POST", "label=rsvps&bucket=B/x", ITEM, NDJSON, 400, "valid"),
    "bucket with %2F": ("POST", "label=rsvps&bucket=B%2Fx", ITEM, NDJSON, 400, "valid"),
    "bucket with ..": ("POST", "label=rsvps&bucket=B..x", ITEM, NDJSON, 400, "valid"),
    "bucket with NUL": ("POST", "label=rsvps&bucket=B%00", ITEM, NDJSON, 400, "valid"),
    "bucket with space": (
        "POST",
        "label=rsvps&bucket=B%20",
        ITEM,
        NDJSON,
        400,
        "valid",
    ),
    "label with NUL": ("POST", "label=rsvps%00&bucket=B", ITEM, NDJSON, 400, "label"),
}


@pytest.mark.parametrize("case", STREAM_CASES.values(), ids=STREAM_CASES.keys())
def test_save_stream_data_refuses_bad_input(load_function, backend, case):
    method, query, body, content_type, status, words = case
    client = load_function("save_stream_data", ALLOWED_BUCKETS=BUCKET, **backend.env)

    answer = client.open(
        "/?" + query.replace("bucket=B", f"bucket={BUCKET}"),
        method=method,
        data=body,
        content_type=content_type,
    )

    assert answer.status_code == status
    assert words in answer.json["error"]
    assert not backend.written_anything()


def test_save_stream_data_refuses_a_body_over_the_limit(load_function, local_backend):
    client = load_function(
        "save_stream_data",
        ALLOWED_BUCKETS=BUCKET,
        MAX_BODY_BYTES="1000",
        **local_backend.env,
    )
    body = b"\n".join([ITEM] * 100)

    answer = client.post(
        f"/?label=rsvps&bucket={BUCKET}", data=body, content_type=NDJSON
    )

    assert answer.status_code == 413
    assert "1000 bytes" in answer.json["error"]
    assert not local_backend.written_anything()


def test_save_stream_data_refuses_a_chunked_body_over_the_limit(
    load_function, local_backend
):
    # No Content-Length: the limit must hold while reading, too.
    client = load_function(
        "save_stream_data",
        ALLOWED_BUCKETS=BUCKET,
        MAX_BODY_BYTES="1000",
        **local_backend.env,
    )

    answer = client.post(
        f"/?label=rsvps&bucket={BUCKET}",
        input_stream=io.BytesIO(b"\n".join([ITEM] * 100)),
        content_type=NDJSON,
        headers={"Transfer-Encoding": "chunked"},
        # What a WSGI server says of a chunked body it has de-chunked.
        environ_overrides={"wsgi.input_terminated": True},
    )

    assert answer.status_code == 413
    assert not local_backend.written_anything()


# (method, query, JSON body or raw bytes, status, words the error must contain)
PROFILE_CASES = {
    "GET instead of POST": ("GET", "collection=C&ID=1", None, 405, "POST"),
    "no ids": ("POST", "collection=C", None, 400, "is missing"),
    "empty id list": ("POST", "collection=C", {"ID": []}, 400, "is missing"),
    "body not JSON": ("POST", "collection=C", b"ids please", 400, "JSON"),
    "body a JSON array": ("POST", "collection=C", [1, 2], 400, "object"),
    "missing collection": ("POST", "ID=1", None, 400, "collection is missing"),
    "collection not allowed": ("POST", "collection=secrets&ID=1", None, 403, "allowed"),
    "collection with slash": ("POST", "collection=C/x&ID=1", None, 400, "valid"),
    "collection with %2F": ("POST", "collection=C%2Fx&ID=1", None, 400, "valid"),
    "collection ..": ("POST", "collection=..&ID=1", None, 400, "valid"),
    "collection with NUL": ("POST", "collection=C%00&ID=1", None, 400, "valid"),
    "collection with space": ("POST", "collection=C%20x&ID=1", None, 400, "valid"),
    "id not a number": ("POST", "collection=C&ID=abc", None, 400, "positive integer"),
    "negative id": ("POST", "collection=C&ID=-5", None, 400, "positive integer"),
    "zero id": ("POST", "collection=C&ID=0", None, 400, "positive integer"),
    "id with slash": ("POST", "collection=C&ID=1/2", None, 400, "positive integer"),
    "id with ..": ("POST", "collection=C&ID=..", None, 400, "positive integer"),
    "id with %2F": ("POST", "collection=C&ID=1%2F2", None, 400, "positive integer"),
    "id with NUL": ("POST", "collection=C&ID=1%00", None, 400, "positive integer"),
    "id with space": ("POST", "collection=C&ID=1%202", None, 400, "positive integer"),
    "id a float": ("POST", "collection=C", {"ID": [1.5]}, 400, "positive integer"),
    "id a boolean": ("POST", "collection=C", {"ID": True}, 400, "positive integer"),
    "key in the URL": ("POST", "collection=C&ID=1&api_key=k", None, 400, "URL"),
}


@pytest.mark.parametrize("target", ["save_member_data", "save_group_data"])
@pytest.mark.parametrize("case", PROFILE_CASES.values(), ids=PROFILE_CASES.keys())
def test_profile_functions_refuse_bad_input(
    load_function, backend, meetup_server, target, case
):
    method, query, body, status, words = case
    id_name = "member_id" if target == "save_member_data" else "group_id"
    collection = MEMBERS if target == "save_member_data" else GROUPS
    client = load_function(
        target,
        ALLOWED_COLLECTIONS=f"{MEMBERS},{GROUPS}",
        MEETUP_API_URL=meetup_server.url,
        MEETUP_API_KEY="test-key",
        **backend.env,
    )
    query = query.replace("ID=", f"{id_name}=").replace(
        "collection=C", f"collection={collection}"
    )
    if isinstance(body, dict):
        body = {id_name if k == "ID" else k: v for k, v in body.items()}

    if isinstance(body, bytes):
        answer = client.open(
            "/?" + query, method=method, data=body, content_type="application/json"
        )
    else:
        answer = client.open("/?" + query, method=method, json=body)

    assert answer.status_code == status
    assert words in answer.json["error"]
    assert meetup_server.received == []
    assert not backend.written_anything()


@pytest.mark.parametrize(
    ("target", "id_name", "limit"),
    [("save_member_data", "member_id", 10), ("save_group_data", "group_id", 200)],
)
def test_profile_functions_refuse_more_ids_than_a_call_takes(
    load_function, local_backend, meetup_server, target, id_name, limit
):
    client = load_function(
        target,
        ALLOWED_COLLECTIONS=MEMBERS,
        MEETUP_API_URL=meetup_server.url,
        MEETUP_API_KEY="test-key",
        **local_backend.env,
    )

    answer = client.post(
        f"/?collection={MEMBERS}", json={id_name: list(range(1, limit + 2))}
    )

    assert answer.status_code == 400
    assert f"at most {limit}" in answer.json["error"]
    assert meetup_server.received == []
    assert not local_backend.written_anything()
