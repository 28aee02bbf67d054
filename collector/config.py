"""The trigger's settings: config.json, checked whole before anything starts.

JSON has no comments, so config.example.json documents each key in a sibling
"_doc" object; every key that starts with "_" is ignored here. Any other key that
is unknown, of the wrong type or out of range stops the trigger with one
ConfigError that names the key ("sender.max_in_flight: ...").
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from collector import contract

MIB = 1024 * 1024


class ConfigError(ValueError):
    """The configuration is wrong; the message names the key and the fault."""


Check = Callable[[Any], str | None]


def _positive(value: Any) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _not_negative(value: Any) -> str | None:
    return None if value >= 0 else "must be 0 or more"


def _at_most(limit: int) -> Check:
    def check(value: Any) -> str | None:
        if value <= 0:
            return "must be greater than 0"
        if value > limit:
            return f"must be at most {limit}"
        return None

    return check


def _http_url(value: str) -> str | None:
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"must be an http:// or https:// URL, got {value!r}"
    return None


def _bucket_name(value: str) -> str | None:
    if re.fullmatch(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]", value):
        return None
    return f"must be a Cloud Storage bucket name, got {value!r}"


def _collection_name(value: str) -> str | None:
    if value and "/" not in value and value.strip() == value:
        return None
    return f"must be a Firestore collection id (no '/'), got {value!r}"


def _not_blank(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


def _setting(default: Any = dataclasses.MISSING, check: Check | None = None) -> Any:
    metadata = {"check": check} if check else {}
    if isinstance(default, type) and dataclasses.is_dataclass(default):
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class StreamSettings:
    url: str = _setting(check=_http_url)
    enabled: bool = _setting(True)


@dataclass(frozen=True)
class FunctionUrls:
    save_stream_data: str = _setting(check=_http_url)
    save_member_data: str = _setting(check=_http_url)
    save_group_data: str = _setting(check=_http_url)


@dataclass(frozen=True)
class Collections:
    members: str = _setting("members", _collection_name)
    groups: str = _setting("groups", _collection_name)


@dataclass(frozen=True)
class BackoffSettings:
    initial_seconds: float = _setting(1.0, _positive)
    maximum_seconds: float = _setting(32.0, _positive)


@dataclass(frozen=True)
class NetworkBackoff(BackoffSettings):
    initial_seconds: float = _setting(0.5, _positive)
    maximum_seconds: float = _setting(16.0, _positive)


@dataclass(frozen=True)
class HttpBackoff(BackoffSettings):
    initial_seconds: float = _setting(5.0, _positive)
    maximum_seconds: float = _setting(320.0, _positive)


@dataclass(frozen=True)
class RateLimitedBackoff(BackoffSettings):
    initial_seconds: float = _setting(60.0, _positive)
    maximum_seconds: float = _setting(600.0, _positive)


@dataclass(frozen=True)
class ReaderSettings:
    connect_timeout_seconds: float = _setting(10.0, _positive)
    read_timeout_seconds: float = _setting(90.0, _positive)
    idle_timeout_seconds: float = _setting(300.0, _positive)
    resume_margin_ms: int = _setting(10_000, _not_negative)
    max_line_bytes: int = _setting(MIB, _at_most(contract.STREAM_BODY_LIMIT_BYTES))
    tcp_keepalive: bool = _setting(True)
    network_backoff: NetworkBackoff = _setting(NetworkBackoff)
    http_backoff: HttpBackoff = _setting(HttpBackoff)
    rate_limited_backoff: RateLimitedBackoff = _setting(RateLimitedBackoff)


@dataclass(frozen=True)
class OutboxSettings:
    fsync: Literal["always", "interval", "never"] = _setting("interval")
    fsync_interval_seconds: float = _setting(1.0, _positive)


@dataclass(frozen=True)
class ChunkSettings:
    max_items: int = _setting(1000, _positive)
    max_bytes: int = _setting(MIB, _at_most(contract.STREAM_BODY_LIMIT_BYTES))
    max_age_seconds: float = _setting(2.0, _positive)


@dataclass(frozen=True)
class SenderSettings:
    max_in_flight: int = _setting(4, _at_most(64))
    connect_timeout_seconds: float = _setting(10.0, _positive)
    request_timeout_seconds: float = _setting(120.0, _positive)
    retry_initial_seconds: float = _setting(1.0, _positive)
    retry_maximum_seconds: float = _setting(32.0, _positive)
    retry_jitter_seconds: float = _setting(1.0, _not_negative)
    retry_after_maximum_seconds: float = _setting(600.0, _positive)
    alert_after_attempts: int = _setting(10, _positive)
    shutdown_timeout_seconds: float = _setting(15.0, _not_negative)


@dataclass(frozen=True)
class ProfileSettings:
    enabled: bool = _setting(True)
    ttl_seconds: float = _setting(86_400.0, _not_negative)
    members_per_call: int = _setting(
        contract.MAX_MEMBER_IDS_PER_CALL, _at_most(contract.MAX_MEMBER_IDS_PER_CALL)
    )
    groups_per_call: int = _setting(
        contract.MAX_GROUP_IDS_PER_CALL, _at_most(contract.MAX_GROUP_IDS_PER_CALL)
    )
    max_pending: int = _setting(100_000, _positive)
    max_remembered: int = _setting(1_000_000, _positive)
    request_timeout_seconds: float = _setting(120.0, _positive)
    retry_initial_seconds: float = _setting(1.0, _positive)
    retry_maximum_seconds: float = _setting(64.0, _positive)
    retry_jitter_seconds: float = _setting(1.0, _not_negative)
    unauthorized_retry_seconds: float = _setting(600.0, _positive)
    pacing_margin_seconds: float = _setting(1.0, _not_negative)


@dataclass(frozen=True)
class AuthSettings:
    mode: Literal["none", "google_id_token"] = _setting("none")
    refresh_before_expiry_seconds: float = _setting(300.0, _not_negative)


@dataclass(frozen=True)
class LoggingSettings:
    destination: Literal["stdout", "cloud"] = _setting("stdout")
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = _setting("INFO")
    log_name: str = _setting("meetup-trigger", _not_blank)


@dataclass(frozen=True)
class StatusSettings:
    interval_seconds: float = _setting(60.0, _positive)
    write_file: bool = _setting(True)


def _default_streams() -> dict[str, StreamSettings]:
    return {
        label: StreamSettings(url=url)
        for label, url in contract.DEFAULT_STREAM_URLS.items()
    }


@dataclass(frozen=True)
class Config:
    functions: FunctionUrls = _setting()
    bucket: str = _setting(check=_bucket_name)
    streams: dict[str, StreamSettings] = field(default_factory=_default_streams)
    collections: Collections = _setting(Collections)
    state_dir: str = _setting("state", _not_blank)
    reader: ReaderSettings = _setting(ReaderSettings)
    outbox: OutboxSettings = _setting(OutboxSettings)
    chunks: ChunkSettings = _setting(ChunkSettings)
    sender: SenderSettings = _setting(SenderSettings)
    profiles: ProfileSettings = _setting(ProfileSettings)
    auth: AuthSettings = _setting(AuthSettings)
    logging: LoggingSettings = _setting(LoggingSettings)
    status: StatusSettings = _setting(StatusSettings)

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    def enabled_streams(self) -> dict[str, StreamSettings]:
        return {
            label: stream for label, stream in self.streams.items() if stream.enabled
        }

    def with_streams(self, labels: list[str]) -> Config:
        """This config reading exactly the streams named (the --streams flag)."""
        unknown = [label for label in labels if label not in self.streams]
        if unknown:
            raise ConfigError(
                f"--streams: {', '.join(unknown)} not configured; configured "
                f"streams are {', '.join(self.streams)}"
            )

        streams = {
            label: dataclasses.replace(stream, enabled=label in labels)
            for label, stream in self.streams.items()
        }
        return dataclasses.replace(self, streams=streams)


def load_config(path: str | Path) -> Config:
    """The config in the JSON file at path; state_dir is taken relative to it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error}") from error

    try:
        document = json.loads(text)
    except ValueError as error:
        raise ConfigError(f"config file {path} is not valid JSON: {error}") from error

    config = config_from_dict(document)
    state_path = Path(config.state_dir).expanduser()
    if not state_path.is_absolute():
        state_path = path.resolve().parent / state_path
    return dataclasses.replace(config, state_dir=str(state_path))


def config_from_dict(document: Any) -> Config:
    """A Config from a decoded JSON document; ConfigError on the first fault."""
    config = _build(Config, document, "")

    for name in ("sender", "profiles"):
        section = getattr(config, name)
        if section.retry_initial_seconds > section.retry_maximum_seconds:
            raise ConfigError(
                f"{name}.retry_initial_seconds: must not exceed "
                f"{name}.retry_maximum_seconds"
            )
    for name in ("network_backoff", "http_backoff", "rate_limited_backoff"):
        backoff = getattr(config.reader, name)
        if backoff.initial_seconds > backoff.maximum_seconds:
            raise ConfigError(
                f"reader.{name}.initial_seconds: must not exceed maximum_seconds"
            )
    if not config.enabled_streams():
        raise ConfigError("streams: no stream is enabled")
    return config


def _build(cls: type, document: Any, prefix: str) -> Any:
    if not isinstance(document, Mapping):
        where = prefix.rstrip(".") or "config"
        raise ConfigError(f"{where}: must be a JSON object")

    hints = typing.get_type_hints(cls)
    known = {item.name: item for item in dataclasses.fields(cls)}
    for key in document:
        if not key.startswith("_") and key not in known:
            raise ConfigError(
                f"{prefix}{key}: unknown key; known keys here are "
                f"{', '.join(sorted(known))}"
            )

    values: dict[str, Any] = {}
    for name, setting in known.items():
        key = f"{prefix}{name}"
        if name not in document:
            if (
                setting.default is dataclasses.MISSING
                and setting.default_factory is dataclasses.MISSING
            ):
                raise ConfigError(f"{key}: required key is missing")
            continue

        if name == "streams" and cls is Config:
            values[name] = _build_streams(document[name], key)
            continue

        value = _convert(hints[name], document[name], key)
        check = setting.metadata.get("check")
        problem = check(value) if check else None
        if problem:
            raise ConfigError(f"{key}: {problem}")
        values[name] = value
    return cls(**values)


def _build_streams(document: Any, key: str) -> dict[str, StreamSettings]:
    if not isinstance(document, Mapping):
        raise ConfigError(f"{key}: must be a JSON object of label -> stream")

    streams = {}
    for label, stream in document.items():
        if label.startswith("_"):
            continue
        if label not in contract.STREAM_LABELS:
            raise ConfigError(
                f"{key}.{label}: unknown stream; streams are "
                f"{', '.join(contract.STREAM_LABELS)}"
            )
        streams[label] = _build(StreamSettings, stream, f"{key}.{label}.")
    if not streams:
        raise ConfigError(f"{key}: no stream is configured")
    return streams


def _convert(hint: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, f"{key}.")

    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            listed = ", ".join(repr(choice) for choice in choices)
            raise ConfigError(f"{key}: must be one of {listed}, got {value!r}")
        return value

    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: must be true or false, got {value!r}")
        return value

    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: must be an integer, got {value!r}")
        return value

    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: must be a number, got {value!r}")
        return float(value)

    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: must be a string, got {value!r}")
        return value

    if isinstance(hint, types.GenericAlias):
        raise ConfigError(f"{key}: cannot be set here")
    raise TypeError(f"no conversion for {hint!r} at {key}")
