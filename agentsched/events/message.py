"""The records and the wire format of the event bus (no I/O).

One stream ``{prefix}events``; each entry has one field ``data`` holding the JSON of an
`EventMessage` (``created_at`` as ISO 8601 or unix seconds: the worker's Lua writes a
number), and when the publisher was traced ``tp`` and ``ts``: the W3C ``traceparent``
and ``tracestate`` of its span (`EventMessage.trace_context`). Dead letters live in
``{prefix}events:dead``: the original fields plus ``group``, ``agent``, ``reason``,
``deliveries`` and ``original_id``.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, Field, PrivateAttr, ValidationError, field_validator

from agentsched.errors import InvalidEvent
from agentsched.settings import NAME_RE

_STREAM_ID = re.compile(r"\$|\d{1,20}(-\d{1,20})?")
_NO_TRACE: Mapping[str, str] = MappingProxyType({})


class EventMessage(BaseModel):
    """One event: the JSON object in the ``data`` field of a stream entry."""

    id: str
    event_type: str
    source_agent: str
    target_agent: str | None = None
    payload: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    _stream_id: str | None = PrivateAttr(default=None)
    _trace: Mapping[str, str] | None = PrivateAttr(default=None)  # the publisher's span

    @field_validator("created_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        # Lua writes unix seconds (parsed as UTC); a naive ISO string is taken as UTC.
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    @property
    def stream_id(self) -> str | None:
        """The id of the stream entry this event was read from or written to."""
        return self._stream_id

    @property
    def trace_context(self) -> Mapping[str, str]:
        """The W3C trace context of the span that published this event: ``traceparent``,
        and ``tracestate`` when it has one; empty when the publisher was not traced.

        Read-only. For a span of your own in the publisher's trace, hand it to
        ``opentelemetry.propagate.extract(event.trace_context)``, or run the handling in
        ``with bus.handling(event):`` (what `EventBus.on` callbacks get).
        """
        return self._trace or _NO_TRACE

    def _read_from(self, stream_id: str, fields: Mapping[Any, Any]) -> None:
        """Remember the stream entry this event came from, and its trace context."""
        self._stream_id = stream_id
        if tp := fields.get(b"tp", fields.get("tp")):
            carrier = {"traceparent": to_str(tp)}
            if ts := fields.get(b"ts", fields.get("ts")):
                carrier["tracestate"] = to_str(ts)
            self._trace = MappingProxyType(carrier)

    @classmethod
    def trusted(
        cls, values: dict[str, Any], stream_id: str | None, trace: Mapping[str, str] | None = None
    ) -> EventMessage:
        """An event from values the caller already checked, without validation.

        `EventBus.publish` builds one per call; `model_construct` costs it 3-5x more.
        """
        event = cls.__new__(cls)
        object.__setattr__(event, "__dict__", values)
        object.__setattr__(event, "__pydantic_fields_set__", _FIELDS)
        object.__setattr__(event, "__pydantic_extra__", None)
        carrier = MappingProxyType(dict(trace)) if trace else None
        private = {"_stream_id": stream_id, "_trace": carrier}
        object.__setattr__(event, "__pydantic_private__", private)
        return event


_FIELDS = frozenset(EventMessage.model_fields)


class DeadLetter(BaseModel):
    """An entry of the dead-letter stream: an event a consumer group could not handle."""

    entry_id: str
    original_id: str
    group: str
    agent: str | None
    reason: str
    deliveries: int
    data: str | None
    event: EventMessage | None  # None when `data` is not a valid event


def trace_fields(trace: Mapping[str, str]) -> tuple[str, ...]:
    """The fields of a stream entry that carry a trace context (none: not traced)."""
    if not trace.get("traceparent"):
        return ()
    state = trace.get("tracestate")
    return ("tp", trace["traceparent"], "ts", state) if state else ("tp", trace["traceparent"])


def to_str(value: bytes | str) -> str:
    """Text of a Redis reply value (foreign bytes that are not UTF-8 are replaced)."""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def check_name(field: str, value: Any) -> str:
    """`value` if it is a valid agent, group or event-type name, else `InvalidEvent`."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise InvalidEvent(field, f"{value!r:.140} must match [a-z0-9][a-z0-9._-]{{0,127}}")
    return value


def check_stream_id(field: str, value: Any) -> str:
    """`value` if it is ``$`` or a stream entry id (``<ms>`` or ``<ms>-<seq>``)."""
    if not isinstance(value, str) or not _STREAM_ID.fullmatch(value):
        raise InvalidEvent(field, f"{value!r:.60} is not a stream id ('$', '0' or '<ms>-<seq>')")
    return value


def matcher(patterns: Iterable[str]) -> Callable[[str], bool]:
    """A predicate for event types matching any fnmatch-style pattern (no pattern: all)."""
    pats = list(patterns)
    for pat in pats:
        if not isinstance(pat, str) or not 0 < len(pat) <= 256:
            raise InvalidEvent("patterns", f"{pat!r:.60} is not a pattern (1-256 characters)")
    if not pats or "*" in pats:
        return lambda _: True
    regex = re.compile("|".join(fnmatch.translate(pat) for pat in pats))
    return lambda event_type: regex.match(event_type) is not None


def decode(fields: dict[Any, Any]) -> EventMessage | str:
    """The event in a stream entry's fields, or the reason there is none."""
    data = fields.get(b"data", fields.get("data"))
    if data is None:
        return "entry has no data field"
    try:
        return EventMessage.model_validate_json(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(map(str, err["loc"])) or "data"
        return f"invalid event: {where}: {err['msg']}"[:300]


def entries(reply: Any) -> list[Any]:
    """The entries of a one-stream XREAD/XREADGROUP reply (RESP2 list or RESP3 dict)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [e for value in reply.values() for e in (value[0] if value else [])]
    return list(reply[0][1])


def to_dead_letter(entry_id: str, fields: dict[Any, Any]) -> DeadLetter:
    """A dead-letter stream entry as a record."""
    get = {to_str(k): to_str(v) for k, v in fields.items()}.get
    event, deliveries = decode(fields), get("deliveries", "")
    return DeadLetter(
        entry_id=entry_id,
        original_id=get("original_id", ""),
        group=get("group", ""),
        agent=get("agent"),
        reason=get("reason", ""),
        deliveries=int(deliveries) if deliveries.isdigit() else 0,
        data=get("data"),
        event=None if isinstance(event, str) else event,
    )
