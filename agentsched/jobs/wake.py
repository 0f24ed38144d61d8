"""Waking an idle worker when there is something for it to do, instead of polling fast.

arq looks at its queue every `poll_delay` seconds whether or not there is work; at the
2 ms it needs for a quick pickup, an idle worker spent a sixth of a core on it. Here a
worker waits instead (`arq_pool.py` does the waiting, inside arq's poll), and the status
scripts publish on the app's wake channel whenever a job becomes due now or a running
job is to be cancelled: an enqueue, a cancel, a recovered or reconciled job. A worker
also looks at least every `AGENTSCHED_IDLE_POLL` seconds (jobs written to arq's keys
without agentsched, a wake-up lost while Redis was away), and as soon as a deferred job
falls due.

Pub/sub delivers to whoever listens at that moment, so after (re)subscribing the waker
counts one wake-up of its own: anything published while it was away is looked at.

A worker waiting on its script line also listens on a channel of its own, where an
enqueue that found it idle sends the job it claimed for it (the handoff: see
status_scripts.ENQUEUE); `handed` keeps those for arq's claim, which then costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import redis.asyncio as aioredis

from agentsched.connections import BACKOFF_CAP, script_line_of
from agentsched.script_line import ScriptLine

log = logging.getLogger("agentsched.worker")


class Waker:
    """What a worker's poll waits on: wake-ups published for its queue, and freed slots."""

    HINTS_MAX = 100

    def __init__(self) -> None:
        self.published = 0  # wake-ups seen (and the waker's own after subscribing)
        self.freed = 0  # jobs of this worker that ended, each freeing a slot
        # Job ids the wake-ups named since the poll last took them: a woken poll hands
        # them to arq's claim (which checks each is due) without reading the queue.
        self.hints: list[bytes] = []
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Job id -> (when it came, the claim's reply): jobs an enqueue claimed for this
        # worker. `handoff_ready` while the worker's own channel is subscribed.
        self.handed: dict[bytes, tuple[float, list[Any]]] = {}
        self.handoff_ready = False

    def mark(self) -> tuple[int, int]:
        """Where things stand now: pass it to `wait` after looking at the queue."""
        return self.published, self.freed

    def poke(self, job_id: bytes | None = None) -> None:
        self.published += 1
        if job_id is not None and len(self.hints) < self.HINTS_MAX:
            self.hints.append(job_id)
        self._changed.set()

    def take_hints(self) -> list[bytes]:
        hints, self.hints = self.hints, []
        return list(dict.fromkeys(hints))

    def take_handed(self, job_id: bytes, max_age: float) -> list[Any] | None:
        """The claim's reply of a job handed to this worker, if it came within `max_age` s
        (a later one may have been recovered by the reaper meanwhile: claim it as usual)."""
        came, reply = self.handed.pop(job_id, (0.0, None))
        return reply if time.monotonic() - came <= max_age else None

    def _handoff(self, data: Any) -> None:
        # id, score, arq's try, start status, attempt, payload (ENQUEUE's hand_off).
        job_id, score, tries, status, attempt, payload = bytes(data).split(b"\n", 5)
        self.handed[job_id] = (time.monotonic(), [0, score, payload, tries, 0, status, attempt])
        self.poke(job_id)

    def slot_freed(self, _: Any = None) -> None:
        self.freed += 1
        self._changed.set()

    async def wait(self, since: tuple[int, int], timeout: float, *, freed: bool = False) -> bool:
        """Wait up to `timeout` s for a wake-up (or freed slot) after `since`; True if one came."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.published != since[0] or (freed and self.freed != since[1]):
                return True
            left = deadline - loop.time()
            if left <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._changed.wait()

    def start(self, redis: aioredis.Redis, channel: str, handoff: str = "") -> None:
        """Listen on the app's wake channel (and the worker's own `handoff` channel)."""
        self._task = asyncio.create_task(
            self._listen(redis, channel, handoff), name="agentsched-wake"
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def _message(self, data: Any) -> None:
        # Ids are uuids (36 bytes); anything else just says "look".
        self.poke(data if isinstance(data, bytes) and len(data) == 36 else None)

    async def _listen(self, redis: aioredis.Redis, channel: str, handoff: str) -> None:
        line = script_line_of(redis)
        if line is not None:
            await self._listen_on_line(line, channel, handoff)
            return
        # The connection retries through outages by itself (connections.py) and says so
        # once; a reply it cannot retry ends one subscription, and the next starts over.
        while True:
            pubsub = redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel)
                self.poke()
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._message(message.get("data"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # e.g. an AUTH error after a failover
                log.debug("wake channel %s: %s; subscribing again", channel, exc)
                await asyncio.sleep(BACKOFF_CAP)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _listen_on_line(self, line: ScriptLine, channel: str, handoff: str) -> None:
        # A plain connection's messages are parsed as they arrive, without redis-py's
        # PubSub between the socket and the poke: a third of an idle worker's pickup.
        # A lost connection is subscribed again at once, then with a growing pause (up
        # to BACKOFF_CAP s) while Redis stays away.
        channels = {channel: self._message} | ({handoff: self._handoff} if handoff else {})

        def subscribed() -> None:
            self.handoff_ready = bool(handoff)
            self.poke()

        failures = 0
        while True:
            try:
                await line.listen(channels, subscribed=subscribed)
                failures = 0  # it was subscribed until the connection was lost
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                log.debug("wake channel %s: %s; subscribing again", channel, exc)
            finally:
                self.handoff_ready = False
            await asyncio.sleep(min(BACKOFF_CAP, 0.05 * 2**failures))
