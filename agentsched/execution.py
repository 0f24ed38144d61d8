"""`Execution`: one run of a task, as the queue, the worker, SQL and the API see it.

Converts between the three shapes an execution takes: the Redis hash (hot path),
the `task_executions` row (history) and the in-process dataclass.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agentsched.errors import CorruptRecord
from agentsched.serialization import from_ms, loads
from agentsched.status import ErrorKind, TaskStatus

log = logging.getLogger("agentsched.execution")
_CORRUPT_LOGGED: set[str] = set()  # ids already logged as unreadable (bounded)


@dataclass(slots=True)
class Execution:
    """One execution of a task: its status, attempt, result or error, and times."""

    id: str
    app: str
    function: str
    status: TaskStatus
    attempt: int = 1
    max_tries: int = 1
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    error: str | None = None
    error_kind: ErrorKind | None = None
    task_id: str | None = None
    scheduled_for: dt.datetime | None = None
    enqueued_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    seq: int = 0
    # What the task last reported with `agentsched.progress` (1.0 once it succeeded).
    progress: float | None = None
    progress_message: str | None = None
    # When a queued execution is due to start (delay, eta, retry backoff).
    due_at: dt.datetime | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal


def _json(value: str | None, default: Any) -> Any:
    if value is None or value == "":
        return default
    try:
        return loads(value)
    except ValueError:
        return default


def _float(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


def _int_ms(value: str | None) -> int | None:
    return int(value) if value not in (None, "") else None


def snapshot_fields(raw: Mapping[Any, Any]) -> Mapping[str, str]:
    """Decode a Redis hash (bytes keys and values) to `str -> str`; str maps pass through."""
    if all(type(k) is str for k in raw):
        return raw
    return {k.decode(): v.decode() for k, v in raw.items()}


def from_redis(raw: Mapping[Any, Any]) -> Execution:
    """An `Execution` from its Redis hash (timestamps are stored as epoch ms).

    `CorruptRecord` (logged once per id) when the hash holds bytes that are not UTF-8
    or a field out of its range, so callers can fall back to SQL instead of failing.
    """
    try:
        return _from_hash(snapshot_fields(raw))
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        ident = raw.get(b"id", raw.get("id", b"?"))
        ident = ident.decode(errors="replace") if isinstance(ident, bytes) else str(ident)
        reason = f"{type(exc).__name__} in a field"  # values stay out of the log
        if ident not in _CORRUPT_LOGGED:
            if len(_CORRUPT_LOGGED) >= 1024:
                _CORRUPT_LOGGED.clear()
            _CORRUPT_LOGGED.add(ident)
            log.warning("execution %s: unreadable Redis record (%s); reading SQL", ident[:64],
                        reason)  # fmt: skip
        raise CorruptRecord(ident, reason) from None


def _from_hash(h: Mapping[str, str]) -> Execution:
    kind = h.get("error_kind")
    return Execution(
        id=h["id"],
        app=h.get("app", ""),
        function=h.get("function", "<unknown>"),
        status=TaskStatus(h.get("status", "queued")),
        attempt=int(h.get("attempt", "1")),
        max_tries=int(h.get("max_tries", "1")),
        args=_json(h.get("args"), []),
        kwargs=_json(h.get("kwargs"), {}),
        result=_json(h.get("result"), None),
        error=h.get("error") or None,
        error_kind=ErrorKind(kind) if kind else None,
        task_id=h.get("task_id") or None,
        scheduled_for=from_ms(_int_ms(h.get("scheduled_for"))),
        enqueued_at=from_ms(_int_ms(h.get("enqueued_at"))),
        started_at=from_ms(_int_ms(h.get("started_at"))),
        finished_at=from_ms(_int_ms(h.get("finished_at"))),
        metadata=_json(h.get("metadata"), {}),
        seq=int(h.get("seq", "0")),
        progress=_float(h.get("progress")),
        progress_message=h.get("progress_message") or None,
        due_at=from_ms(_int_ms(h.get("due"))),
    )


class RawJSON(str):
    """JSON text passed through to a JSON column as it is (no decode and re-encode)."""


def snapshot_row(h: Mapping[str, str]) -> dict[str, Any]:
    """The `task_executions` values of a Redis snapshot, JSON columns left as text.

    The recorder's hot path: a worker writes thousands of these a second, so nothing
    is decoded that the database would only encode again. Raises ValueError/KeyError
    on a malformed snapshot.
    """
    kind = h.get("error_kind")
    result = h.get("result")
    return {
        "id": h["id"],
        "task_id": h.get("task_id") or None,
        "app": h.get("app", ""),
        "function": h.get("function", "<unknown>"),
        "status": TaskStatus(h.get("status", "queued")).value,
        "args": RawJSON(h.get("args") or "[]"),
        "kwargs": RawJSON(h.get("kwargs") or "{}"),
        "result": RawJSON(result) if result else None,
        "error": h.get("error") or None,
        "error_kind": ErrorKind(kind).value if kind else None,
        "attempt": int(h.get("attempt", "1")),
        "max_tries": int(h.get("max_tries", "1")),
        "scheduled_for": from_ms(_int_ms(h.get("scheduled_for"))),
        "enqueued_at": from_ms(_int_ms(h.get("enqueued_at"))),
        "started_at": from_ms(_int_ms(h.get("started_at"))),
        "finished_at": from_ms(_int_ms(h.get("finished_at"))),
        "meta": RawJSON(h.get("metadata") or "{}"),
        "seq": int(h.get("seq", "0")),
        "progress": _float(h.get("progress")),
        "progress_message": h.get("progress_message") or None,
        "due_at": from_ms(_int_ms(h.get("due"))),
    }


def from_row(row: Any) -> Execution:
    """An `Execution` from a `task_executions` row (ORM object or labelled Core row)."""
    return Execution(
        id=row.id,
        app=row.app,
        function=row.function,
        status=TaskStatus(row.status),
        attempt=row.attempt,
        max_tries=row.max_tries,
        args=row.args or [],
        kwargs=row.kwargs or {},
        result=row.result,
        error=row.error,
        error_kind=ErrorKind(row.error_kind) if row.error_kind else None,
        task_id=row.task_id,
        scheduled_for=row.scheduled_for,
        enqueued_at=row.enqueued_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        metadata=row.meta or {},
        seq=row.seq,
        progress=row.progress,
        progress_message=row.progress_message,
        due_at=row.due_at,
    )
