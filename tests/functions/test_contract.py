"""The collector and the functions each write down what they agree on; this pins the
two copies together, and checks a request built from the collector's copy is
understood by the functions."""

from __future__ import annotations

import json

from collector import contract
from tests.functions.conftest import BUCKET, MEMBERS, LocalBackend


def functions_main():
    # tests/functions/conftest.py puts functions/ on sys.path, as Cloud Functions
    # does; main reads its settings at import, which needs no environment here.
    import main

    return main


def test_both_sides_name_items_by_the_same_fields():
    main = functions_main()

    assert dict(contract.ITEM_ID_FIELDS) == main.ID_FIELDS
    assert list(contract.STREAM_LABELS) == list(main.ID_FIELDS)
    assert contract.MTIME_FIELD == main.MTIME_FIELD


def test_both_sides_agree_on_limits_and_formats():
    main = functions_main()

    assert contract.MAX_MEMBER_IDS_PER_CALL == main.MAX_MEMBER_IDS
    assert contract.MAX_GROUP_IDS_PER_CALL == main.MAX_GROUP_IDS
    assert contract.STREAM_CONTENT_TYPE in main.NDJSON_TYPES
    default_limit = main.Settings.from_env({}).max_body_bytes
    assert default_limit == contract.STREAM_BODY_LIMIT_BYTES


def test_a_chunk_as_the_collector_sends_it_is_stored(load_function, tmp_path):
    backend = LocalBackend(tmp_path)
    client = load_function("save_stream_data", ALLOWED_BUCKETS=BUCKET, **backend.env)
    items = [
        {contract.ITEM_ID_FIELDS["photos"]: n, contract.MTIME_FIELD: 10 + n}
        for n in range(3)
    ]

    answer = client.post(
        "/",
        query_string={
            contract.STREAM_LABEL_PARAM: "photos",
            contract.STREAM_BUCKET_PARAM: BUCKET,
        },
        data=b"".join(json.dumps(i).encode() + b"\n" for i in items),
        content_type=contract.STREAM_CONTENT_TYPE,
    )

    assert answer.status_code == 200
    assert answer.json[contract.STREAM_REJECTED_FIELD] == []
    assert sorted(backend.objects(BUCKET)) == [
        "photos/0_10.json",
        "photos/1_11.json",
        "photos/2_12.json",
    ]


def test_a_profile_request_as_the_collector_sends_it_is_understood(
    load_function, tmp_path
):
    backend = LocalBackend(tmp_path)
    client = load_function(
        "save_member_data",
        ALLOWED_COLLECTIONS=MEMBERS,
        MEETUP_API_KEY="k",
        **backend.env,
    )

    # Too many ids is refused before any Meetup call: proof the field was read.
    answer = client.post(
        "/",
        query_string={contract.PROFILE_COLLECTION_PARAM: MEMBERS},
        json={
            contract.MEMBER_ID_FIELD: list(
                range(1, contract.MAX_MEMBER_IDS_PER_CALL + 2)
            )
        },
    )

    assert answer.status_code == 400
    assert f"at most {contract.MAX_MEMBER_IDS_PER_CALL}" in answer.json["error"]
