"""`/events/stream`: the event bus as server-sent events, read in tail mode.

The stream reuses the app's Redis client (one blocking XREAD per open stream, on a
connection of that client's pool) and issues no Redis command of its own: the bus pings
before the response starts (Redis down: 503), and `agentsched.events.sse` reads and
frames. The bus of a stream is stopped when the client disconnects; the Redis client
stays open, it belongs to the app's `Runtime`. At most `AGENTSCHED_MAX_EVENT_STREAMS`
streams are open per process; one more gets a JSON 503.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from enum import Enum
from typing import Annotated, Any

import anyio
from fastapi import Header, Query
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from agentsched.api.deps import State
from agentsched.api.deps import scheduler_router as router
from agentsched.api.errors import TooManyStreams, error_responses
from agentsched.errors import InvalidEvent
from agentsched.events import EventBus
from agentsched.events.sse import sse_stream

TAGS: list[str | Enum] = ["events"]
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
EXAMPLE = (
    'id: 1718000000000-0\nevent: task.queued\ndata: {"id":"9f2c...","event_type":'
    '"task.queued","source_agent":"email-agent","target_agent":null,"payload":'
    '{"execution_id":"0b6e...","function":"tests.sample_tasks.add","status":'
    '"queued","attempt":1},"created_at":"2024-06-10T06:13:20Z"}\n\n: keepalive\n\n'
)

# Error bodies are JSON: with `model=` FastAPI would list them under the route's media type.
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {
        "description": response["description"],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    }
    for status, response in error_responses(401, 503).items()
}


class EventStreamResponse(StreamingResponse):
    """A `StreamingResponse` of `text/event-stream` (so OpenAPI names that media type)."""

    media_type = "text/event-stream"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Starlette always calls the response, even when the client left before the first
        # chunk (and the body generator never started): the stream's slot is freed here.
        try:
            await super().__call__(scope, receive, send)
        finally:
            _release()


# Open streams of this process: each holds a connection of the app's Redis pool for its
# blocking XREAD, so a client with the key could otherwise use up Redis's maxclients.
_open = 0


def _acquire(limit: int) -> None:
    global _open
    if _open >= limit:
        raise TooManyStreams(limit)
    _open += 1


def _release() -> None:
    global _open
    _open = max(0, _open - 1)


async def _relay(bus: EventBus, chunks: AsyncIterator[str]) -> AsyncIterator[str]:
    # On disconnect Starlette cancels the stream inside the blocked XREAD; redis-py then
    # drops that connection, and the shield lets the bus stop under the cancelled scope.
    try:
        async for chunk in chunks:
            yield chunk
    finally:
        with anyio.CancelScope(shield=True):
            await chunks.aclose()  # type: ignore[attr-defined]
            await bus.stop()


@router.get(
    "/events/stream",
    tags=TAGS,
    operation_id="stream_events",
    summary="Follow the event bus as server-sent events",
    response_class=EventStreamResponse,
    responses={
        200: {
            "description": "One frame per event (`id`, `event`, `data`: the EventMessage "
            "JSON); a `: keepalive` comment after 15 quiet seconds",
            "content": {"text/event-stream": {"schema": {"type": "string"}, "example": EXAMPLE}},
        },
        **ERRORS,
    },
)
async def stream_events(
    state: State,
    pattern: Annotated[
        list[str],
        Query(
            default_factory=list,
            description="fnmatch pattern of event types (repeatable; none: all)",
        ),
    ],
    from_id: Annotated[
        str, Query(description="`$`: from now; `0`: the whole stream; an id: after it")
    ] = "$",
    last_event_id: Annotated[
        str | None, Header(description="Resume after this id (wins over `from_id`)")
    ] = None,
) -> EventStreamResponse:
    """Every event on the bus whose type matches a `pattern`, as it is published.

    The stream is read without a consumer group, so nothing is acknowledged and every
    app's events are visible, including events targeted at other apps: the bus is
    platform-wide, and any caller the API key admits may watch all of it. Reconnecting
    clients send `Last-Event-ID` and get what they missed, while the stream still holds it.
    """
    bus = EventBus(state.settings.app, settings=state.settings, redis=state.runtime.redis)
    start = last_event_id or from_id
    try:  # before the response starts: a bad value is still a 422
        chunks = sse_stream(bus, pattern, start)
    except InvalidEvent as exc:
        names = {"patterns": "pattern", "from_id": "last-event-id" if last_event_id else "from_id"}
        raise InvalidEvent(names.get(exc.field, exc.field), exc.message) from None
    _acquire(state.settings.max_event_streams)  # over the cap: a JSON 503
    try:
        await bus.start()  # Redis down: 503 now rather than a stream that breaks
        if start == "$":
            # "Now" is when the request came, not when the body starts: a client that
            # has its response headers sees every event published after them.
            chunks = sse_stream(bus, pattern, await bus.newest_id())
        return EventStreamResponse(_relay(bus, chunks), headers=HEADERS)
    except BaseException:
        _release()
        raise
