"""History retention: workers delete executions that ended `history_days` ago.

Every worker of an app prunes that app's history about once an hour (the first time a
little after it starts, at a random moment so a fleet restarted together does not
prune together). Queued and running executions are never deleted, whatever their age.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from agentsched.db.executions import ExecutionStore

log = logging.getLogger("agentsched.retention")
PRUNE_EVERY = 3600.0


async def prune_history(
    store: ExecutionStore, app: str, days: float, *, now: dt.datetime | None = None
) -> int:
    """Delete `app`'s executions that ended more than `days` ago; returns how many."""
    before = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=days)
    deleted = await store.prune(app, before)
    if deleted:
        when = before.isoformat(timespec="seconds")
        log.info("history: deleted %d execution(s) of %s that ended before %s", deleted, app, when)
    return deleted


async def run_retention(
    store: ExecutionStore, app: str, days: float, *, first_delay: float, every: float = PRUNE_EVERY
) -> None:
    """Prune now and then until cancelled; a database error waits for the next round."""
    await asyncio.sleep(first_delay)
    while True:
        try:
            await prune_history(store, app, days)
        except Exception as exc:
            log.error("history: cannot delete old executions: %s: %s", type(exc).__name__, exc)
        await asyncio.sleep(every)
