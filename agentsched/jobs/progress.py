"""Progress of a running task: `agentsched.progress(fraction, message)` from inside it.

    @task
    async def crawl(urls: list[str]) -> int:
        for i, url in enumerate(urls):
            ...
            progress((i + 1) / len(urls), f"fetched {url}")

The report lands on the execution (Redis at once, SQL with the next recorder batch),
in `GET /executions/{id}` and as a `task.progress` event on the bus. Calls are cheap:
reports are coalesced to at most one write per `INTERVAL` seconds per execution (the
latest one wins) and the last one is written before the task's ending. Works from
`async def` tasks and from plain `def` tasks in their thread; outside a task it does
nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
from collections.abc import Awaitable, Callable
from contextvars import ContextVar

log = logging.getLogger("agentsched.worker")
INTERVAL = 0.5
CLOSE_WAIT = 1.0  # longest the last report may hold up a task's ending
MAX_MESSAGE = 500

Send = Callable[[float | None, str | None], Awaitable[object]]


class Reporter:
    """One execution's progress: the latest report and the one write in flight."""

    def __init__(self, send: Send, loop: asyncio.AbstractEventLoop) -> None:
        self._send = send
        self.loop = loop
        self._fraction: float | None = None
        self._message: str | None = None
        self._dirty = False
        self._last = -math.inf
        self._now = asyncio.Event()  # set by close(): write without waiting
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        # Reports from a plain `def` task's thread: the latest, and one hop to the loop.
        self._lock = threading.Lock()
        self._from_thread: tuple[float | None, str | None] | None = None

    def report(self, fraction: float | None, message: str | None) -> None:
        """Keep the latest values (in the event loop's thread) and make sure they go out."""
        if self._closed:  # e.g. a timed-out thread still reporting: its attempt is over
            return
        if fraction is not None:
            self._fraction = fraction
        if message is not None:
            self._message = message
        self._dirty = True
        if self._task is None:
            self._task = self.loop.create_task(self._write_soon())

    async def _write_soon(self) -> None:
        try:
            while self._dirty:  # a report made during a write goes out after it
                wait = self._last + INTERVAL - self.loop.time()
                if wait > 0 and not self._now.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._now.wait(), wait)
                await self._write()
        finally:
            self._task = None

    async def _write(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        self._last = self.loop.time()
        try:
            await self._send(self._fraction, self._message)
        except Exception as exc:  # progress is best effort: the task goes on
            log.warning("cannot record progress: %s: %s", type(exc).__name__, exc)

    def report_from_thread(self, fraction: float | None, message: str | None) -> None:
        """`report` for another thread: merged under a lock, one loop callback at a time."""
        with self._lock:
            if self._from_thread is not None:
                old_fraction, old_message = self._from_thread
                fraction = old_fraction if fraction is None else fraction
                message = old_message if message is None else message
                self._from_thread = (fraction, message)
                return  # the callback already on its way takes these too
            self._from_thread = (fraction, message)
        self.loop.call_soon_threadsafe(self._take_from_thread)

    def _take_from_thread(self) -> None:
        with self._lock:
            pending, self._from_thread = self._from_thread, None
        if pending is not None:
            self.report(*pending)

    async def close(self, wait: float = CLOSE_WAIT) -> None:
        """Write the latest report now, before the task's ending is recorded.

        Waits at most `wait` seconds (Redis may hang): the ending matters more.
        """
        self._closed = True
        try:
            async with asyncio.timeout(wait):
                self._now.set()
                if self._task is not None:
                    await self._task
                await self._write()
        except TimeoutError:
            self.cancel()
            log.warning("progress: the last report was not written within %.1fs", wait)

    def cancel(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()


current: ContextVar[Reporter | None] = ContextVar("agentsched_progress", default=None)


def progress(fraction: float | None = None, message: str | None = None) -> None:
    """Report how far the running task is (0.0 to 1.0) and/or what it is doing now."""
    if fraction is not None:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
            raise TypeError(f"progress: fraction must be a number, not {type(fraction).__name__}")
        if not 0.0 <= fraction <= 1.0:  # also rejects NaN
            raise ValueError(f"progress: fraction must be between 0 and 1, got {fraction!r}")
        fraction = float(fraction)
    if message is not None:
        if not isinstance(message, str):
            raise TypeError(f"progress: message must be a string, not {type(message).__name__}")
        message = message[:MAX_MESSAGE]
    reporter = current.get()
    if reporter is None or (fraction is None and not message):
        return
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is reporter.loop:
        reporter.report(fraction, message)
    else:  # a plain `def` task in its thread
        reporter.report_from_thread(fraction, message)
