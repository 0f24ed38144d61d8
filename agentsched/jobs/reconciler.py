"""The reconciler: what SQL holds as unfinished, checked against Redis, Redis healed.

Redis is the queue; SQL is the history that outlives it. After Redis restarts
without persistence, fails over to a replica that missed writes, or loses keys, SQL
still lists executions as queued or running that Redis no longer knows. Every worker
runs this loop; a short Redis lock gives each period's pass to one worker per app,
and each execution is checked and healed by one atomic script (`RECONCILE`), so
passes of several workers never act twice on one execution. Per execution:

  - gone from Redis, queued in SQL: enqueued again with the same id, arguments,
    attempt and due time (`requeued`);
  - gone from Redis, running in SQL, and no worker holds its lease: a lost worker's
    job, retried (`recovered`) or failed with `worker_lost` when no tries are left;
  - queued in Redis but its arq job key or queue entry is gone: both put back
    (`restored`); running without a lease and unknown to the reaper: handed to the
    reaper (`reaping`);
  - finished in Redis but not in SQL: never run again, its snapshot is sent to the
    recorder once more (`settled`).

Only rows enqueued at least one period ago are looked at, so a job whose row was
merely slow to be recorded is left alone.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import logging
import random
from collections.abc import Callable

from agentsched.connections import describe
from agentsched.jobs.runtime import Runtime
from agentsched.jobs.tracker import Tracker
from agentsched.serialization import now_ms

log = logging.getLogger("agentsched.reconciler")
PAGE = 500
QUIET = {"ok", "held"}
MEANING = {
    "requeued": "queued in SQL but gone from Redis: enqueued again",
    "recovered": "running in SQL but gone from Redis with no worker: retried",
    "failed": "running in SQL but gone from Redis with no tries left: failed (worker_lost)",
    "restored": "queued in Redis without its arq job: job put back",
    "reaping": "running in Redis without a lease: handed to the reaper",
    "settled": "finished in Redis but not in SQL: snapshot sent again",
}


class Reconciler:
    """One app's reconcile loop in one worker."""

    def __init__(
        self,
        runtime: Runtime,
        tracker: Tracker,
        *,
        owner: str,
        count: Callable[[str, str], None] | None = None,
    ) -> None:
        self.runtime = runtime
        self.tracker = tracker
        self.owner = owner
        self.period = runtime.settings.reconcile_seconds
        self.count = count

    @property
    def lock_key(self) -> str:
        return f"{self.tracker.keys.prefix}reconcile:{self.tracker.keys.app}"

    async def run(self) -> None:
        """Forever: one pass per period per app, whichever worker's turn comes first."""
        while True:
            await asyncio.sleep(self.period * random.uniform(0.5, 1.0))
            try:
                ms = max(1, int(self.period * 900))
                if await self.tracker.redis.set(self.lock_key, self.owner, nx=True, px=ms):
                    await self.reconcile_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis or SQL away: the next period tries again
                log.warning(
                    "reconcile pass of app %s failed: %s", self.tracker.keys.app, describe(exc)
                )

    async def _redis_has_been_up(self, seconds: float) -> bool:
        """Whether this Redis has kept its data for `seconds` (a marker key with no TTL).

        A missing marker means Redis is new, restarted empty or flushed: a worker still
        running a job Redis forgot needs a lease period to take its lease again, so
        running executions are not recovered until then.
        """
        key = f"{self.tracker.keys.prefix}reconcile-epoch:{self.tracker.keys.app}"
        now = now_ms()
        if await self.tracker.redis.set(key, now, nx=True):
            return False
        since = await self.tracker.redis.get(key)
        return since is not None and now - int(since) >= seconds * 1000

    async def reconcile_once(self) -> collections.Counter[str]:
        """Check every unfinished execution enqueued over one period ago; returns actions."""
        app = self.tracker.keys.app
        before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=self.period)
        redis_settled = await self._redis_has_been_up(2 * self.tracker.settings.lease_seconds)
        actions: collections.Counter[str] = collections.Counter()
        examples: dict[str, list[str]] = collections.defaultdict(list)
        after: tuple[dt.datetime, str] | None = None
        while True:
            rows = await self.runtime.executions.unfinished(
                app, before=before, after=after, limit=PAGE
            )
            for row in rows:
                due = int(row.due_at.timestamp() * 1000) if row.due_at else now_ms()
                action = await self.tracker.reconcile(
                    row, sql_status=row.status.value, due_ms=due, redis_settled=redis_settled
                )
                if action in QUIET:
                    continue
                actions[action] += 1
                if len(examples[action]) < 5:
                    examples[action].append(row.id)
                if self.count is not None:
                    self.count(app, action)
            if len(rows) < PAGE:
                break
            last = rows[-1]
            assert last.enqueued_at is not None
            after = (last.enqueued_at, last.id)
        for action, n in actions.items():
            more = ", ..." if n > len(examples[action]) else ""
            log.warning(
                "reconciler (app %s): %d execution(s) %s: %s%s",
                app,
                n,
                MEANING.get(action, action),
                ", ".join(examples[action]),
                more,
            )
        return actions
