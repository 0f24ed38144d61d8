"""Server-sent events of the bus, for ``GET /api/scheduler/events/stream``.

Reads in tail mode (no consumer group, nothing acknowledged) through `EventBus.tail_batches`;
issues no Redis command of its own.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable

from agentsched.events.bus import EventBus
from agentsched.events.message import EventMessage


def sse_stream(
    bus: EventBus, patterns: Iterable[str] = (), from_id: str = "$", *, keepalive: float = 15.0
) -> AsyncIterator[str]:
    """``text/event-stream`` chunks of the events whose type matches `patterns` (none: all).

    Each event is one frame ``id: <stream entry id>``, ``event: <event_type>``,
    ``data: <EventMessage JSON>``; after ``keepalive`` quiet seconds a ``: keepalive``
    comment is sent. Pass a reconnecting client's ``Last-Event-ID`` as ``from_id`` to resume
    after it (``$``: from now, ``0``: the whole stream). Bad arguments raise `InvalidEvent`
    at the call, before any chunk, so a router can still answer 422.
    """
    block_ms = max(1, min(bus.block_ms, int(keepalive * 1000)))
    batches = bus.tail_batches(*patterns, from_id=from_id, block_ms=block_ms)

    async def chunks() -> AsyncIterator[str]:
        quiet_since = time.monotonic()
        async for batch in batches:
            now = time.monotonic()
            if batch:
                yield "".join(map(sse_frame, batch))
                quiet_since = now
            elif now - quiet_since >= keepalive:
                yield ": keepalive\n\n"
                quiet_since = now

    return chunks()


def sse_frame(event: EventMessage) -> str:
    """One event as an SSE frame (a type with a line break cannot split the frame)."""
    name = event.event_type.replace("\r", " ").replace("\n", " ")
    return f"id: {event.stream_id}\nevent: {name}\ndata: {event.model_dump_json()}\n\n"
