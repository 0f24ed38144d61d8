"""The event bus: publish and consume events between apps over one Redis stream.

`agentsched.events` and its consumer-group half `agentsched.events.group_reader` are the only
modules that issue stream commands (here XADD, XREAD, XRANGE, XREVRANGE, XDEL; there XGROUP,
XREADGROUP, XACK, XPENDING, XCLAIM); the worker's Lua scripts only append lifecycle events
in the same wire format (`agentsched.events.message`).

Delivery is at least once:

* each app reads as one consumer group (group name = agent) and its replicas split the
  events; a new group starts at the end of the stream (``$``), so an app sees the events
  published after it first subscribed, not the backlog;
* broadcast events (``target_agent`` null) reach every group, targeted ones only the
  target app's; events that no pattern of a reader matches are acknowledged unhandled;
* an event is acknowledged after its handler finished; while the handler runs, its claim
  is renewed, so no other replica takes it however long it runs. It is redelivered only
  when the handler raises, its process dies, or ``handler_timeout`` (default: none)
  passes: then, once unacknowledged for ``visibility_timeout`` seconds, a live consumer of
  the group claims it; after
  ``max_deliveries`` failed deliveries, or at once when malformed, it is moved to the
  dead-letter stream ``{prefix}events:dead``;
* a group that vanished (Redis restarted empty, key deleted) is created again and reading
  goes on; streams are trimmed with ``MAXLEN ~ settings.event_maxlen``.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TypeVar

import orjson
from redis.asyncio import Redis

from agentsched.connections import redis_client
from agentsched.errors import InvalidEvent, NotFound, ServiceUnavailable
from agentsched.events.group_reader import BATCH, TRANSIENT, GroupReader
from agentsched.events.message import (
    DeadLetter,
    EventMessage,
    check_name,
    check_stream_id,
    decode,
    entries,
    matcher,
    to_dead_letter,
    to_str,
    trace_fields,
)
from agentsched.keys import Keys
from agentsched.observability import metrics, tracing
from agentsched.settings import Settings, get_settings, mask_url

__all__ = ["DeadLetter", "EventBus", "Subscription"]

log = logging.getLogger(__name__)

Handler = Callable[[EventMessage], Any]
H = TypeVar("H", bound=Handler)


class Subscription:
    """`async for` over the events of one consumer group; see `EventBus.subscribe`.

    An event is acknowledged once the loop body finished with it: when the next event is
    requested, or when an ``async with`` block around the loop exits without an exception.
    A body that raises leaves its event unacknowledged, to be redelivered. Python does not
    tell a bare ``async for`` whether it ended by ``break`` or by an exception, so there
    the last event is left for redelivery too; wrap the loop in ``async with`` to avoid it.
    """

    def __init__(self, bus: EventBus, patterns: Iterable[str], group: str | None) -> None:
        match = matcher(patterns)
        self._bus = bus
        self._reader = GroupReader(bus, check_name("group", group or bus.group), match)
        self._agen = self._run()
        self._ack_last = False

    async def _run(self) -> AsyncGenerator[EventMessage, None]:
        reader = self._reader
        if not reader.opened:
            await reader.open()
        current: str | None = None
        try:
            while True:
                done, current = current, None
                item = await reader.next(done)
                if item is None:
                    return
                current = item[0]
                yield item[1]
        finally:
            if current is not None and self._ack_last:
                reader.acks.append(current)
            await reader.close()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> EventMessage:
        self._reader.busy = True
        try:
            return await self._agen.__anext__()
        finally:
            self._reader.busy = False
            self._bus._quiet.set()

    async def __aenter__(self) -> Subscription:
        """Join the group now, so events published from here on are seen."""
        if not self._reader.opened:
            await self._reader.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._ack_last = exc_type is None
        await self.aclose()

    async def aclose(self) -> None:
        """Stop reading: flush acknowledgements and leave the group."""
        await self._agen.aclose()
        await self._reader.close()  # when the loop never started


class EventBus:
    """Publish and consume events between apps over one Redis stream.

    ``agent`` (default: ``settings.app``) names this app: it is the ``source_agent`` of what
    it publishes, the consumer group it reads in, and the ``target_agent`` it answers to.
    Pass ``redis`` to share a client (it is then not closed by `stop`), ``group`` to read
    in another group than the agent's, ``consumer`` for a fixed consumer name.
    ``handler_timeout`` bounds how long a handler keeps its event: past it, a callback is
    cancelled (a sync one is abandoned in its thread) and counts as failed, and the claim
    of an ``async for`` body's event is no longer renewed, so the event is redelivered.
    """

    def __init__(
        self,
        agent: str | None = None,
        *,
        settings: Settings | None = None,
        redis: Redis | None = None,
        group: str | None = None,
        consumer: str | None = None,
        visibility_timeout: float = 30.0,
        max_deliveries: int = 5,
        block_ms: int = 1000,
        handler_timeout: float | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.agent = check_name("agent", agent or self.settings.app)
        self.group = check_name("group", group or self.agent)
        if consumer is not None and not 0 < len(consumer) <= 200:
            raise InvalidEvent("consumer", "must be 1-200 characters")
        if visibility_timeout <= 0 or max_deliveries < 1 or block_ms < 1:
            raise ValueError("visibility_timeout, max_deliveries and block_ms must be positive")
        if handler_timeout is not None and handler_timeout <= 0:
            raise ValueError("handler_timeout must be positive (or None: no limit)")
        self.handler_timeout = handler_timeout
        self.consumer = consumer
        self.visibility_timeout, self.max_deliveries = visibility_timeout, max_deliveries
        self.block_ms = block_ms
        self.stream = Keys(self.settings.redis_prefix, self.agent).events
        self.dead_stream = f"{self.stream}:dead"
        self._redis, self._own_redis = redis, redis is None
        self._callbacks: list[tuple[Callable[[str], bool], Handler, bool]] = []
        self._listener: asyncio.Task[None] | None = None
        self._readers: set[GroupReader] = set()
        self._tails = 0  # tail reads in flight
        # Event ids: 32 hex digits, a random base per bus and a counter (no syscall per id).
        self._id_base, self._id_seq = secrets.token_hex(10), itertools.count()
        self._quiet = asyncio.Event()  # set when a read in flight ends (for `stop`)
        self._started = self._stopped = False

    def _client(self) -> Redis:
        if self._redis is None:
            self._redis = redis_client(self.settings.redis_url)
            self._stopped = False
        return self._redis

    def _unavailable(self, exc: BaseException) -> ServiceUnavailable:
        reason = str(exc) or type(exc).__name__
        return ServiceUnavailable("Redis", mask_url(self.settings.redis_url), reason)

    async def start(self) -> None:
        """Check Redis answers; start the callback listener when handlers are registered."""
        try:
            await self._client().ping()
        except TRANSIENT as exc:
            raise self._unavailable(exc) from None
        self._started, self._stopped = True, False
        if self._callbacks and self._listener is None:
            reader = self._listener_reader()
            await reader.open()  # the group exists once start() returns
            self._listener = asyncio.create_task(self._listen(reader), name="agentsched-events")

    async def stop(self) -> None:
        """Cancel the listener, end subscriptions and tails (a running one within
        ``block_ms``), flush their acks, and close the client if the bus opened it."""
        self._stopped, self._started = True, False
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.wait([self._listener])
            self._listener = None
        # Closing the client under a blocked read would leak its connection: let the
        # reads return (they see `_stopped`) and the readers close themselves first.
        deadline = time.monotonic() + self.block_ms / 1000 + 1.0
        while self._tails or any(r.busy for r in self._readers):
            self._quiet.clear()
            try:
                await asyncio.wait_for(self._quiet.wait(), deadline - time.monotonic())
            except TimeoutError:
                break
        for reader in list(self._readers):
            await reader.close()
        if self._own_redis and self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def __aenter__(self) -> EventBus:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def publish(
        self,
        event_type: str,
        payload: dict[str, Any] | None = None,
        *,
        target_agent: str | None = None,
    ) -> EventMessage:
        """Append an event to the stream; ``target_agent=None`` broadcasts it to every app.

        Raises `InvalidEvent` naming the field (nothing is written) for a bad event type or
        target, or a payload that is not a JSON object within ``settings.event_max_payload``
        bytes; `ServiceUnavailable` when Redis cannot be reached.
        """
        check_name("event_type", event_type)
        if target_agent is not None:
            check_name("target_agent", target_agent)
        if payload is None:
            payload = {}
        elif not isinstance(payload, dict):
            raise InvalidEvent("payload", f"must be a JSON object, not {type(payload).__name__}")
        values = {
            "id": f"{self._id_base}{next(self._id_seq):012x}",
            "event_type": event_type,
            "source_agent": self.agent,
            "target_agent": target_agent,
            "payload": payload,
            "created_at": datetime.now(UTC),
        }
        try:
            data = orjson.dumps(values)
        except TypeError as exc:  # only the payload can hold a non-JSON value
            raise InvalidEvent("payload", f"must be JSON-serializable ({exc})") from None
        limit = self.settings.event_max_payload
        if len(data) > limit and (size := len(orjson.dumps(payload))) > limit:
            raise InvalidEvent("payload", f"is {size} bytes as JSON, over the limit of {limit}")
        span, trace = tracing.start_publish(event_type, self.agent)  # (None, {}): no tracing
        try:  # XADD spelled out: redis-py's xadd() costs a few microseconds more per call
            sid = await self._client().execute_command(  # type: ignore[no-untyped-call]
                "XADD", self.stream, "MAXLEN", "~", self.settings.event_maxlen, "*", "data", data,
                *trace_fields(trace),
            )  # fmt: skip
        except TRANSIENT as exc:
            tracing.end(span, exc)
            raise self._unavailable(exc) from None
        tracing.end(span)
        metrics.event_published(self.agent, event_type)
        return EventMessage.trusted(values, to_str(sid), trace)

    def subscribe(self, *patterns: str, group: str | None = None) -> Subscription:
        """Events whose type matches any fnmatch-style pattern (none: all), read in the group.

        Replicas of an app split the events; each is handled once per group. Events of the
        group that match no pattern are acknowledged unhandled, so a second reader with other
        patterns in the same app needs its own ``group``.
        """
        return Subscription(self, patterns, group)

    def on(self, *patterns: str) -> Callable[[H], H]:
        """Register a callback (async, or sync to run in a thread) for matching events.

        All callbacks of a bus share one background listener in the bus's group. A callback
        that raises leaves the event unacknowledged (redelivered after the visibility timeout,
        dead-lettered after ``max_deliveries``); the listener goes on.
        """
        match = matcher(patterns)

        def register(handler: H) -> H:
            self._callbacks.append((match, handler, inspect.iscoroutinefunction(handler)))
            if self._started and self._listener is None:
                self._listener = asyncio.create_task(self._listen(self._listener_reader()))
            return handler

        return register

    def _listener_reader(self) -> GroupReader:
        def handled(event_type: str) -> bool:
            return any(match(event_type) for match, _, _ in self._callbacks)

        return GroupReader(self, self.group, handled)

    async def _listen(self, reader: GroupReader) -> None:
        reader.busy, done, delay = True, None, 0.1
        try:
            while True:
                try:
                    if not reader.opened:
                        await reader.open()
                    item, done = await reader.next(done), None
                    if item is None:
                        return
                    if await self._dispatch(item[1]):
                        done = item[0]
                    delay = 0.1
                except Exception as exc:  # keep listening through Redis trouble
                    log.warning(
                        "event bus listener of %r: %s; retrying in %.1fs", self.group, exc, delay
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
        finally:
            await reader.close()

    def handling(self, event: EventMessage) -> AbstractContextManager[None]:
        """``with bus.handling(event):`` runs the block in ``agentsched.handle <type>``, a child
        of the publisher's span, as `on` callbacks do; an exception leaving it is recorded."""
        return tracing.handle_span(event.event_type, self.agent, event.trace_context)

    async def _dispatch(self, event: EventMessage) -> bool:
        failure: Exception | None = None
        span = tracing.handle_span(event.event_type, self.agent, event.trace_context)
        for match, handler, is_async in self._callbacks:
            if not match(event.event_type):
                continue
            try:
                await asyncio.wait_for(self._call(handler, is_async, event), self.handler_timeout)
            except Exception as exc:  # TimeoutError too: the handler ran past handler_timeout
                log.warning(
                    "event bus: handler %s failed on %s %s (%r); left for redelivery",
                    getattr(handler, "__qualname__", handler),
                    event.event_type,
                    event.stream_id,
                    exc,
                )
                failure = failure or exc
        span.end("failed" if failure else "success", failure)
        return failure is None

    @staticmethod
    async def _call(handler: Handler, is_async: bool, event: EventMessage) -> None:
        result = await handler(event) if is_async else await asyncio.to_thread(handler, event)
        if inspect.isawaitable(result):
            await result

    def tail(self, *patterns: str, from_id: str = "$") -> AsyncIterator[EventMessage]:
        """Follow the stream without a group: from now (``$``), the start (``0``) or after
        an entry id. Every event is seen, targeted ones included; nothing is acknowledged.
        """
        return self._flatten(self.tail_batches(*patterns, from_id=from_id))

    @staticmethod
    async def _flatten(batches: AsyncIterator[list[EventMessage]]) -> AsyncIterator[EventMessage]:
        async for batch in batches:
            for event in batch:
                yield event

    def tail_batches(
        self, *patterns: str, from_id: str = "$", block_ms: int | None = None
    ) -> AsyncIterator[list[EventMessage]]:
        """`tail` one read at a time: a list per XREAD, empty each time ``block_ms`` passed
        without events (so a caller can send keepalives). Bad arguments raise here."""
        check_stream_id("from_id", from_id)
        return self._tail(matcher(patterns), from_id, block_ms or self.block_ms)

    async def newest_id(self) -> str:
        """The id of the stream's newest entry ("0-0" when empty): `from_id` for "now",
        pinned, so a tail started from it sees every event published after this call."""
        try:
            newest = await self._client().xrevrange(self.stream, count=1)
        except TRANSIENT as exc:
            raise self._unavailable(exc) from None
        return to_str(newest[0][0]) if newest else "0-0"

    async def _tail(
        self, match: Callable[[str], bool], last: str, block_ms: int
    ) -> AsyncIterator[list[EventMessage]]:
        if last == "$":  # pin "now" to an id: a later `$` would skip events between reads
            last = await self.newest_id()
        delay = 0.1
        while not self._stopped:
            self._tails += 1
            try:
                reply = await self._client().xread({self.stream: last}, BATCH, block_ms)
            except TRANSIENT as exc:
                log.warning("event bus: Redis unavailable (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            finally:
                self._tails -= 1
                self._quiet.set()
            batch = []
            for raw_id, fields in entries(reply):
                last = to_str(raw_id)
                event = decode(fields)
                if not isinstance(event, str) and match(event.event_type):
                    event._read_from(last, fields)
                    batch.append(event)
            yield batch

    async def dead_letters(self, limit: int = 100, *, group: str | None = None) -> list[DeadLetter]:
        """The newest dead letters first, optionally only those of one group."""
        found: list[DeadLetter] = []
        top = "+"
        while len(found) < limit:
            page = await self._client().xrevrange(self.dead_stream, top, "-", BATCH)
            for raw_id, fields in page:
                letter = to_dead_letter(to_str(raw_id), fields)
                if group is None or letter.group == group:
                    found.append(letter)
            if len(page) < BATCH:
                break
            top = "(" + to_str(page[-1][0])
        return found[:limit]

    async def replay_dead_letter(self, entry_id: str) -> EventMessage:
        """Publish a dead letter's event again, to the app that gave up on it only (its
        ``target_agent`` becomes that app, id and payload unchanged), and delete the letter.
        """
        check_stream_id("entry_id", entry_id)
        found = await self._client().xrange(self.dead_stream, entry_id, entry_id, 1)
        if not found:
            raise NotFound("dead letter", entry_id)
        letter = to_dead_letter(entry_id, found[0][1])
        if letter.event is None:
            raise InvalidEvent("entry_id", f"dead letter {entry_id} holds no valid event")
        event = letter.event.model_copy(update={"target_agent": letter.agent or letter.group})
        pipe = self._client().pipeline(transaction=True)
        pipe.xadd(self.stream, {"data": event.model_dump_json()}, maxlen=self.settings.event_maxlen)
        pipe.xdel(self.dead_stream, entry_id)
        sid, _ = await pipe.execute()
        event._stream_id = to_str(sid)
        return event
