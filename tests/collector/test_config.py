"""The config: the example loads and documents every key, and a wrong config
gets one clear error that names the key, before anything starts."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from collector import contract
from collector.config import Config, ConfigError, config_from_dict, load_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config.example.json"

MINIMAL = {
    "functions": {
        "save_stream_data": "http://127.0.0.1:1/stream",
        "save_member_data": "http://127.0.0.1:1/members",
        "save_group_data": "http://127.0.0.1:1/groups",
    },
    "bucket": "meetup-test",
}


def with_change(path: str, value: Any) -> dict[str, Any]:
    document = copy.deepcopy(MINIMAL)
    keys = path.split(".")
    target = document
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = value
    return document


def test_the_example_loads_with_the_defaults_it_documents() -> None:
    config = load_config(EXAMPLE)

    assert config_from_dict(MINIMAL).chunks == config.chunks
    assert config_from_dict(MINIMAL).sender == config.sender
    assert config_from_dict(MINIMAL).profiles == config.profiles
    assert config_from_dict(MINIMAL).reader == config.reader
    assert {label: s.url for label, s in config.streams.items()} == dict(
        contract.DEFAULT_STREAM_URLS
    )
    assert config.state_dir == str(ROOT / "state")


def _documented(section: dict[str, Any], where: str) -> list[str]:
    problems = []
    doc = section.get("_doc", {})
    keys = [key for key in section if not key.startswith("_")]
    if where == "streams":
        keys = ["url", "enabled"]
    for key in keys:
        if key not in doc:
            problems.append(f"{where}.{key} has no _doc entry")
    for key in doc:
        if key != "about" and key not in keys:
            problems.append(f"{where}._doc.{key} documents no key")
    return problems


def test_every_key_of_the_example_is_documented_beside_it() -> None:
    document = json.loads(EXAMPLE.read_text())

    problems = _documented(document, "config")
    for key, value in document.items():
        if isinstance(value, dict) and not key.startswith("_"):
            problems += _documented(value, key)

    assert problems == []


def test_the_example_sets_every_setting_the_loader_knows() -> None:
    document = json.loads(EXAMPLE.read_text())
    config = config_from_dict(MINIMAL)

    for section in ("reader", "outbox", "chunks", "sender", "profiles", "auth"):
        known = set(vars(getattr(config, section)))
        written = {key for key in document[section] if not key.startswith("_")}
        assert written == known, section


def test_keys_starting_with_underscore_are_ignored_everywhere() -> None:
    document = with_change("_comment", "hello")
    document["chunks"] = {"_doc": {"x": 1}, "_max_items": "ignored", "max_items": 7}

    assert config_from_dict(document).chunks.max_items == 7


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("chunks.max_itemz", 5, "chunks.max_itemz: unknown key"),
        ("colour", "red", "colour: unknown key"),
        ("chunks.max_items", "500", "chunks.max_items: must be an integer"),
        ("chunks.max_items", 0, "chunks.max_items: must be greater than 0"),
        ("chunks.max_bytes", 20_000_000, "chunks.max_bytes: must be at most 10485760"),
        ("sender.max_in_flight", True, "sender.max_in_flight: must be an integer"),
        ("outbox.fsync", "sometimes", "outbox.fsync: must be one of 'always'"),
        (
            "auth.mode",
            "password",
            "auth.mode: must be one of 'none', 'google_id_token'",
        ),
        ("logging.level", "LOUD", "logging.level: must be one of"),
        (
            "functions.save_stream_data",
            "ftp://x",
            "functions.save_stream_data: must be",
        ),
        ("bucket", "Not A Bucket", "bucket: must be a Cloud Storage bucket name"),
        ("streams.tweets", {"url": "http://x/"}, "streams.tweets: unknown stream"),
        (
            "streams.rsvps",
            {"url": "http://x/", "on": True},
            "streams.rsvps.on: unknown",
        ),
        ("streams.rsvps", {"enabled": True}, "streams.rsvps.url: required key"),
        (
            "profiles.members_per_call",
            11,
            "profiles.members_per_call: must be at most 10",
        ),
        (
            "profiles.groups_per_call",
            201,
            "profiles.groups_per_call: must be at most 200",
        ),
        ("reader.network_backoff", 3, "reader.network_backoff: must be a JSON object"),
        (
            "sender.retry_initial_seconds",
            99.0,
            "sender.retry_initial_seconds: must not",
        ),
        ("status.write_file", "yes", "status.write_file: must be true or false"),
        ("collections.members", "a/b", "collections.members: must be a Firestore"),
    ],
)
def test_a_wrong_setting_is_named_with_what_is_wrong(
    path: str, value: Any, message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        config_from_dict(with_change(path, value))

    assert str(raised.value).startswith(message)


def test_a_missing_required_key_is_named() -> None:
    document = copy.deepcopy(MINIMAL)
    del document["bucket"]

    with pytest.raises(ConfigError, match="^bucket: required key is missing"):
        config_from_dict(document)


def test_a_config_file_that_is_not_json_says_where(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"bucket": "x",}')

    with pytest.raises(ConfigError, match="is not valid JSON: .*line 1"):
        load_config(path)


def test_listed_streams_replace_the_defaults_and_disabled_ones_are_not_read() -> None:
    document = with_change(
        "streams",
        {
            "rsvps": {"url": "http://127.0.0.1:9/2/rsvps"},
            "photos": {"url": "http://127.0.0.1:9/2/photos", "enabled": False},
        },
    )

    config = config_from_dict(document)

    assert list(config.streams) == ["rsvps", "photos"]
    assert list(config.enabled_streams()) == ["rsvps"]


def test_streams_flag_picks_configured_streams_and_refuses_others() -> None:
    config = config_from_dict(MINIMAL)

    picked = config.with_streams(["rsvps", "photos"])

    assert list(picked.enabled_streams()) == ["rsvps", "photos"]
    narrow = config_from_dict(
        with_change("streams", {"rsvps": {"url": "http://127.0.0.1:9/2/rsvps"}})
    )
    with pytest.raises(ConfigError, match="--streams: photos not configured"):
        narrow.with_streams(["photos"])


def test_state_dir_is_taken_from_the_config_files_folder(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(with_change("state_dir", "../state")))

    config = load_config(path)

    assert isinstance(config, Config)
    assert Path(config.state_dir).resolve() == (tmp_path / "state").resolve()
