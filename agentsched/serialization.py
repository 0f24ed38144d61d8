"""JSON (orjson) encoding of job payloads, results and records; never pickle."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import orjson

from agentsched.errors import InvalidInput


def _default(value: Any) -> Any:
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(value: Any) -> bytes:
    """Encode `value` as JSON bytes (datetimes as ISO 8601, exceptions as text)."""
    return orjson.dumps(value, default=_default, option=orjson.OPT_NON_STR_KEYS)


def dumps_str(value: Any) -> str:
    return dumps(value).decode()


def text(value: Any) -> str:
    """A Redis reply as text (bytes from a client without decode_responses)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def loads(data: bytes | str) -> Any:
    """Decode JSON bytes; raises `orjson.JSONDecodeError` (a ValueError) on anything else."""
    return orjson.loads(data)


def check_json(field: str, value: Any) -> bytes:
    """Encode a user value, or raise `InvalidInput` naming `field` when it is not JSON."""
    try:
        return orjson.dumps(value)
    except TypeError as exc:
        raise InvalidInput(field, f"must be JSON-serializable ({exc})") from None


def from_ms(ms: int | str | None) -> dt.datetime | None:
    if ms in (None, "", b""):
        return None
    return dt.datetime.fromtimestamp(int(ms) / 1000, tz=dt.UTC)


def to_ms(value: dt.datetime) -> int:
    """Epoch ms of `value`, rounded: a datetime made by `from_ms` gives its ms back."""
    return round(value.timestamp() * 1000)


def now_ms() -> int:
    return time.time_ns() // 1_000_000
