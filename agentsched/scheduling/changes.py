"""Schedule changes told through Redis, so a scheduler loop reads SQL only when needed.

Each change made through `Scheduler` (the API, the CLI, a tasks file) bumps a counter,
`<prefix>schedules:<app>`, once its transaction has committed. A loop
(`SchedulerService`) reads the counter at each tick with one GET. It reads the app's
earliest fire time from SQL only in three cases:
- the counter moved;
- the fire time it knows of has come;
- `RECHECK` seconds have passed: a change made in SQL by hand, or a bump lost to a
  Redis outage, is seen within that (and a tick) once Redis answers the GET again.

An idle worker used to run one SQL transaction a second (BEGIN, the pool's pre-ping,
the query, ROLLBACK), and now sends one GET instead.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from agentsched.connections import script_line_of
from agentsched.jobs.runtime import Runtime
from agentsched.keys import Keys

if TYPE_CHECKING:
    from agentsched.scheduling.service import Scheduler

log = logging.getLogger("agentsched.scheduler")
RECHECK = 30.0  # s: the longest a loop trusts its earliest fire time without SQL
BUMP_TIMEOUT = 1.0  # s: a change waits this long at most to tell the loops


def counter_key(runtime: Runtime, app: str) -> str:
    return Keys(runtime.settings.redis_prefix, app).schedules_changed


async def bump(runtime: Runtime, app: str) -> None:
    """Tell the loops that `app`'s schedules changed (best effort: they recheck anyway)."""
    try:
        async with asyncio.timeout(BUMP_TIMEOUT):
            await runtime.redis.incr(counter_key(runtime, app))
    except Exception as exc:  # best effort: the change is committed, whatever Redis says
        log.warning(
            "schedules of %s changed, but Redis could not be told (%s): scheduler loops "
            "see the change within %.0f s", app, type(exc).__name__, RECHECK,
        )  # fmt: skip


class DueWatch:
    """An app's earliest fire time (`Scheduler.store.next_due`), read only when it may
    have changed."""

    def __init__(self, scheduler: Scheduler, recheck: float = RECHECK) -> None:
        self.scheduler, self.recheck = scheduler, recheck
        self.key = counter_key(scheduler.runtime, scheduler.app)
        self._seen: object = object()  # the counter when SQL was last read (none yet)
        self._due: dt.datetime | None = None
        self._fresh_until = 0.0  # monotonic

    async def next_due(self, now: dt.datetime) -> dt.datetime | None:
        # The counter first: a change committed after it was read bumps it again.
        redis = self.scheduler.runtime.redis
        line = script_line_of(redis)  # the pool's script line: a loop asks every second
        try:
            counter: object = await (
                line.call(redis.execute_command, "GET", self.key) if line else redis.get(self.key)
            )
        except RedisError:  # not one that retries (a wrong type, no permission): read SQL
            counter = object()
        clock = time.monotonic()
        if (
            counter == self._seen
            and clock < self._fresh_until
            and (self._due is None or self._due > now)
        ):
            return self._due
        # The store looked up now: a test may stand in for its next_due.
        self._due = await self.scheduler.store.next_due(self.scheduler.app)
        self._seen, self._fresh_until = counter, clock + self.recheck
        return self._due
