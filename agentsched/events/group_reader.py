"""The consumer-group half of the event bus: read, reclaim, dead-letter, acknowledge.

With `agentsched.events` this is the only code that issues stream commands (here XGROUP,
XREADGROUP, XACK, XPENDING, XCLAIM and dead-letter XADDs). One `GroupReader` is one
consumer of one group; `EventBus.subscribe` and the callback listener each own one.

* Acks of quick handlers are buffered and sent in the same round trip as the next
  XREADGROUP; after a slow handler (over 1 ms) they are sent before the next event.
* Every ``visibility_timeout / 2`` the reader claims entries of its group idle for
  ``visibility_timeout`` (XPENDING IDLE, then one XCLAIM per id so each reply maps to its
  id, on Redis 6.2 and 7). An entry already delivered ``max_deliveries`` times is moved to
  the dead-letter stream instead; so is a malformed entry, at once.
* Buffered events not yet handled keep their lease: past half the visibility timeout they
  are re-claimed with ``min-idle`` = their age, which skips those another consumer took.
* The event being handled keeps its lease for as long as its handler runs: a background
  keeper re-claims it every third of the visibility timeout (XCLAIM JUSTID, so the
  delivery count stays), until the handler returns or raises, the reader closes, or
  ``handler_timeout`` passes. Only then can another consumer of the group claim it.
* NOGROUP (Redis restarted empty, key deleted): the group is created again after the last
  event read, or after the time the reader opened, so events published meanwhile are read.
* Consumer names (``agent:host:pid:random``) are removed on close when they hold nothing,
  and on open when a crashed one holds nothing and has been silent for 4 visibility timeouts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from agentsched.events.message import EventMessage, decode, entries, to_str
from agentsched.observability import metrics

if TYPE_CHECKING:
    from agentsched.events.bus import EventBus

log = logging.getLogger("agentsched.events")

BATCH = 100  # entries per XREADGROUP / XREAD / claim pass
TRANSIENT = (RedisConnectionError, RedisTimeoutError, OSError)
_FAST_BODY = 0.001  # acks of handlers quicker than this ride along with the next read

DeadItem = tuple[str, dict[Any, Any], str, int]  # id, fields, reason, deliveries


class GroupReader:
    """One consumer of one group of the bus stream (see the module docstring)."""

    def __init__(self, bus: EventBus, group: str, match: Callable[[str], bool]) -> None:
        self._bus, self._group, self._match = bus, group, match
        self._r = bus._client()
        self._key = bus.stream
        self._temporary = bus.consumer is None  # a generated name is dropped on close
        self._consumer = bus.consumer or (
            f"{bus.agent}:{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        )
        self._vt = bus.visibility_timeout
        self._vt_ms = max(1, int(self._vt * 1000))
        self._block = max(1, min(bus.block_ms, self._vt_ms // 2))
        self._buf: deque[tuple[str, EventMessage]] = deque()
        self.acks: list[str] = []
        self._read_at = self._yielded_at = self._next_claim = 0.0
        self._last_id = "$"
        self.opened = self.closed = self.busy = self._lost = False
        # The event being handled: its id, when it was handed out, when its lease was renewed.
        self._inflight: str | None = None
        self._inflight_since = self._renewed_at = 0.0
        self._keeper: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Create the group if missing, at ``$``: a new app sees events from now on."""
        try:
            secs, micros = await self._r.time()
            self._last_id = f"{int(secs) * 1000 + int(micros) // 1000}-0"
            await self._create_group("$")
            await self._forget_dead_consumers()
        except TRANSIENT as exc:
            raise self._bus._unavailable(exc) from None
        self.opened = True
        self._bus._readers.add(self)

    async def _create_group(self, start: str) -> None:
        try:
            await self._r.xgroup_create(self._key, self._group, id=start, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _forget_dead_consumers(self) -> None:
        # Consumers that crashed keep their names after their events were claimed away;
        # one holding nothing and silent for 4 visibility timeouts is dropped (a live one
        # polls at least every half timeout, and one holding nothing loses nothing).
        quiet_ms = 4 * self._vt_ms
        for consumer in await self._r.xinfo_consumers(self._key, self._group):
            if int(consumer["pending"]) == 0 and int(consumer["idle"]) > quiet_ms:
                await self._r.xgroup_delconsumer(self._key, self._group, consumer["name"])

    async def next(self, done: str | None) -> tuple[str, EventMessage] | None:
        """Acknowledge `done` (handled), then return the next event; None once closed.

        The event returned is in flight until the next call: its lease is kept alive
        meanwhile (see `_keep_leases`), whether or not that call acknowledges it.
        """
        self._inflight = None
        if done is not None:
            self.acks.append(done)
        delay = 0.1
        while not (self.closed or self._bus._stopped):
            try:
                if self._lost:
                    await self._create_group(self._last_id)
                    self._lost = False
                if self._buf:
                    now = time.monotonic()
                    renew = now - self._read_at > self._vt / 2
                    if renew or (self.acks and now - self._yielded_at > _FAST_BODY):
                        await self._sync(renew)
                if not self._buf:
                    await self._fill()
                if self._buf and not self._bus._stopped:  # else: released on close
                    self._yielded_at = time.monotonic()
                    item = self._buf.popleft()
                    self._hold(item[0])
                    return item
            except ResponseError as exc:
                # Redis 7 answers UNBLOCKED to a reader blocked on a key that was deleted.
                if "NOGROUP" not in str(exc) and "UNBLOCKED" not in str(exc):
                    raise
                log.warning(
                    "event bus: group %r of %s vanished; re-creating it after %s",
                    self._group,
                    self._key,
                    self._last_id,
                )
                self.acks.clear()
                self._lost = True
            except TRANSIENT as exc:
                if self.closed or self._bus._stopped:
                    break
                log.warning("event bus: Redis unavailable (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        return None

    def _hold(self, sid: str) -> None:
        # Its idle time in Redis was last reset when it was read, claimed or renewed.
        self._inflight, self._inflight_since = sid, self._yielded_at
        self._renewed_at = self._read_at
        if self._keeper is None or self._keeper.done():
            name = f"agentsched-events-lease:{self._group}"
            self._keeper = asyncio.create_task(self._keep_leases(), name=name)

    async def _keep_leases(self) -> None:
        """Renew the in-flight event's claim every third of the visibility timeout.

        ``min-idle`` is the time since our own last renewal, so an event another consumer
        took meanwhile (its idle time reset) is not taken back; then we stop renewing it.
        """
        timeout = self._bus.handler_timeout
        while not self.closed:
            await asyncio.sleep(self._vt / 3)
            sid = self._inflight
            if sid is None:
                continue
            now = time.monotonic()
            if timeout is not None and now - self._inflight_since > timeout:
                log.warning(
                    "event bus: handler of %s in group %r still running after %.1fs "
                    "(handler_timeout); its event is left for redelivery",
                    sid,
                    self._group,
                    timeout,
                )
                self._inflight = None
                continue
            age_ms = int((now - self._renewed_at) * 1000)
            try:
                kept = await self._r.xclaim(
                    self._key, self._group, self._consumer, age_ms, [sid], justid=True
                )
            except (ResponseError, *TRANSIENT) as exc:
                log.debug("event bus: renewing the lease of %s: %s", sid, exc)
                continue
            if self._inflight != sid:
                continue  # finished while we renewed
            if kept:
                self._renewed_at = time.monotonic()
            else:
                log.warning(
                    "event bus: lease of %s in group %r was lost to another consumer",
                    sid,
                    self._group,
                )
                self._inflight = None

    async def _fill(self) -> None:
        now = time.monotonic()
        if now >= self._next_claim:
            self._next_claim = now + self._vt / 2
            await self._claim()
            if self._buf:
                return
        pipe = self._r.pipeline(transaction=False)
        if self.acks:
            pipe.xack(self._key, self._group, *self.acks)
        pipe.xreadgroup(self._group, self._consumer, {self._key: ">"}, BATCH, self._block)
        replies = await pipe.execute()
        self.acks.clear()
        self._read_at = time.monotonic()
        read = entries(replies[-1])
        if read:
            self._last_id = to_str(read[-1][0])
            await self._accept(read, {})

    async def _claim(self) -> None:
        pipe = self._r.pipeline(transaction=False)
        if self.acks:  # first, so our own finished events are not claimed
            pipe.xack(self._key, self._group, *self.acks)
        pipe.xpending_range(self._key, self._group, "-", "+", BATCH, idle=self._vt_ms)
        idle = (await pipe.execute())[-1]
        self.acks.clear()
        if not idle:
            return
        if len(idle) == BATCH:
            self._next_claim = 0.0  # more may be waiting
        pipe = self._r.pipeline(transaction=False)
        for pending in idle:
            pipe.xclaim(
                self._key, self._group, self._consumer, self._vt_ms, [pending["message_id"]]
            )
        replies = await pipe.execute()
        live, dead, gone, counts = [], [], [], {}
        for pending, reply in zip(idle, replies, strict=True):
            if not reply:  # another consumer was quicker (or Redis 7 dropped a deleted id)
                continue
            sid, fields = to_str(pending["message_id"]), reply[0][1]
            failed = int(pending["times_delivered"])
            if fields is None:  # Redis 6.2: deleted from the stream while pending
                gone.append(sid)
            elif failed >= self._bus.max_deliveries:
                dead.append((sid, fields, f"not acknowledged after {failed} deliveries", failed))
            else:
                live.append(reply[0])
                counts[sid] = failed + 1
        if gone:
            await self._r.xack(self._key, self._group, *gone)
        if dead:
            await self._dead_letter(dead)
        self._read_at = time.monotonic()
        await self._accept(live, counts)

    async def _accept(self, read: list[Any], counts: dict[str, int]) -> None:
        agent, dead, delivered = self._bus.agent, [], 0
        for raw_id, fields in read:
            sid = to_str(raw_id)
            event = decode(fields)
            if isinstance(event, str):
                dead.append((sid, fields, event, counts.get(sid, 1)))
            elif (event.target_agent is None or event.target_agent == agent) and self._match(
                event.event_type
            ):
                event._read_from(sid, fields)
                self._buf.append((sid, event))
                delivered += 1
            else:
                self.acks.append(sid)  # not for this app: acknowledged unhandled
        metrics.events_delivered(agent, delivered, redelivered=len(counts))
        if dead:
            await self._dead_letter(dead)

    async def _dead_letter(self, items: list[DeadItem]) -> None:
        pipe = self._r.pipeline(transaction=True)
        for sid, fields, reason, deliveries in items:
            entry: dict[Any, Any] = {to_str(k): v for k, v in fields.items()}
            entry.update(
                group=self._group,
                agent=self._bus.agent,
                reason=reason,
                deliveries=deliveries,
                original_id=sid,
            )
            pipe.xadd(self._bus.dead_stream, entry, maxlen=self._bus.settings.event_maxlen)
        pipe.xack(self._key, self._group, *(item[0] for item in items))
        await pipe.execute()
        metrics.events_dead_lettered(self._bus.agent, len(items))
        for sid, _, reason, _ in items:
            log.warning(
                "event bus: %s moved to %s by group %r: %s",
                sid,
                self._bus.dead_stream,
                self._group,
                reason,
            )

    async def _sync(self, renew: bool) -> None:
        """Flush acks; with `renew`, keep the lease on buffered events nobody took over."""
        pipe = self._r.pipeline(transaction=False)
        if self.acks:
            pipe.xack(self._key, self._group, *self.acks)
        if renew:  # entries idle at least as long as our buffer's age are untouched
            age_ms = int((time.monotonic() - self._read_at) * 1000)
            ids: list[Any] = [sid for sid, _ in self._buf]
            pipe.xclaim(self._key, self._group, self._consumer, age_ms, ids, justid=True)
        replies = await pipe.execute()
        self.acks.clear()
        if renew:
            kept = {to_str(sid) for sid in replies[-1]}
            self._buf = deque(item for item in self._buf if item[0] in kept)
            self._read_at = time.monotonic()

    async def close(self) -> None:
        """Flush acks, hand unstarted events to the group now, drop an idle consumer."""
        if self.closed:
            return
        self.closed, self._inflight = True, None
        if self._keeper is not None:
            self._keeper.cancel()
            self._keeper = None
        if not self.opened or self._bus._redis is not self._r:
            self._bus._readers.discard(self)
            return  # never read, or the bus already closed its client
        try:
            pipe = self._r.pipeline(transaction=False)
            if self.acks:
                pipe.xack(self._key, self._group, *self.acks)
            if self._buf:  # idle = the visibility timeout: claimable by the others at once
                ids: list[Any] = [sid for sid, _ in self._buf]
                pipe.xclaim(
                    self._key, self._group, self._consumer, 0, ids, idle=self._vt_ms, justid=True
                )
            pipe.xpending_range(self._key, self._group, "-", "+", 1, consumername=self._consumer)
            replies = await pipe.execute()
            if self._temporary and not replies[-1]:
                await self._r.xgroup_delconsumer(self._key, self._group, self._consumer)
        except (ResponseError, *TRANSIENT) as exc:
            log.debug("event bus: closing consumer %s: %s", self._consumer, exc)
        self.acks.clear()
        self._buf.clear()
        self._bus._readers.discard(self)  # last: `EventBus.stop` waits for this
