"""SQL aggregates of `task_executions` for the dashboard: per-minute figures, last runs.

The server aggregates so a browser never downloads the history: one query over the
window, grouped by minute, through the `(app, finished_at)` index. PostgreSQL computes
the percentiles itself; other databases (SQLite, for development) get the window's
rows and Python computes them.

`MinuteCache` keeps the minutes that can no longer change (ended more than
`SETTLED` ago: the recorder writes a status change within about a second) per engine
and app, so a dashboard polling the last hour re-reads only its last few minutes.
"""

from __future__ import annotations

import datetime as dt
import statistics
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, case, func, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from agentsched.db.models import TaskExecution
from agentsched.status import TERMINAL


@dataclass(frozen=True, slots=True)
class Bucket:
    """What ended in one minute: counts, run time and pickup delay percentiles (ms)."""

    start: dt.datetime
    finished: int
    failed: int
    runtime_p50_ms: float | None
    runtime_p95_ms: float | None
    pickup_p50_ms: float | None
    pickup_p95_ms: float | None


SETTLED = dt.timedelta(minutes=2)


class MinuteCache:
    """Per engine and app: the settled buckets already read, and up to when."""

    def __init__(self) -> None:
        self._apps: weakref.WeakKeyDictionary[AsyncEngine, dict[str, _Settled]] = (
            weakref.WeakKeyDictionary()
        )

    async def buckets(
        self, engine: AsyncEngine, app: str, since: dt.datetime, until: dt.datetime
    ) -> list[Bucket]:
        """What `minute_buckets` returns for 60-second buckets, reading only what is new."""
        since = _floor_minute(since)
        settled_until = _floor_minute(until - SETTLED)
        known = self._apps.setdefault(engine, {}).get(app)
        if known is None or known.until < since or known.since > since:
            known = _Settled(since, since, {})
        if known.until < settled_until:
            fresh = await minute_buckets(engine, app, known.until, settled_until)
            known.buckets.update({b.start: b for b in fresh})
            known.until = settled_until
        known.buckets = {k: b for k, b in known.buckets.items() if k >= since}
        known.since = since
        self._apps[engine][app] = known
        recent = await minute_buckets(engine, app, max(known.until, since), until)
        return [*sorted(known.buckets.values(), key=lambda b: b.start), *recent]


@dataclass(slots=True)
class _Settled:
    since: dt.datetime
    until: dt.datetime
    buckets: dict[dt.datetime, Bucket]


def _floor_minute(moment: dt.datetime) -> dt.datetime:
    return moment.replace(second=0, microsecond=0)


@dataclass(frozen=True, slots=True)
class LastRun:
    """The newest execution of one schedule."""

    task_id: str
    execution_id: str
    status: str
    enqueued_at: dt.datetime | None


def _epoch(value: Any) -> Any:
    return func.extract("epoch", value)


def _ms(start: Any, end: Any) -> Any:
    return (_epoch(end) - _epoch(start)) * 1000.0


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


async def minute_buckets(
    engine: AsyncEngine, app: str, since: dt.datetime, until: dt.datetime, seconds: int = 60
) -> list[Bucket]:
    """Per-bucket figures of one app's executions that ended in `[since, until)`.

    Run time is `finished_at - started_at` of finished runs that started; pickup delay
    is `started_at - enqueued_at` of first attempts (it includes any requested delay).
    Buckets with nothing in them are left out.
    """
    T = TaskExecution
    where = and_(
        T.app == app,
        T.finished_at >= since,
        T.finished_at < until,
        T.status.in_(sorted(TERMINAL)),
    )
    if engine.dialect.name == "postgresql":
        return await _pg_buckets(engine, where, seconds)
    query = select(T.finished_at, T.started_at, T.enqueued_at, T.status, T.attempt).where(where)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return _python_buckets(rows, seconds)


async def _pg_buckets(engine: AsyncEngine, where: Any, seconds: int) -> list[Bucket]:
    T = TaskExecution
    bucket = func.floor(_epoch(T.finished_at) / seconds).label("bucket")
    runtime = case((T.started_at.is_not(None), _ms(T.started_at, T.finished_at)))
    first_start = and_(T.attempt == 1, T.started_at.is_not(None))
    pickup = case((first_start, _ms(T.enqueued_at, T.started_at)))
    query = (
        select(
            bucket,
            func.count(),
            func.count().filter(T.status == "failed"),
            func.percentile_cont(0.5).within_group(runtime),
            func.percentile_cont(0.95).within_group(runtime),
            func.percentile_cont(0.5).within_group(pickup),
            func.percentile_cont(0.95).within_group(pickup),
        )
        .where(where)
        .group_by(bucket)
        .order_by(bucket)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [
        Bucket(
            start=dt.datetime.fromtimestamp(float(b) * seconds, dt.UTC),
            finished=int(n),
            failed=int(f),
            runtime_p50_ms=_round(r50),
            runtime_p95_ms=_round(r95),
            pickup_p50_ms=_round(p50),
            pickup_p95_ms=_round(p95),
        )
        for b, n, f, r50, r95, p50, p95 in rows
    ]


def _round(value: Any) -> float | None:
    return None if value is None else round(float(value), 3)


def _python_buckets(rows: Iterable[Any], seconds: int) -> list[Bucket]:
    groups: dict[int, list[Any]] = {}
    for row in rows:
        groups.setdefault(int(row.finished_at.timestamp() // seconds), []).append(row)
    buckets = []
    for key in sorted(groups):
        items = groups[key]
        runtimes = sorted(
            (r.finished_at - r.started_at).total_seconds() * 1000 for r in items if r.started_at
        )
        pickups = sorted(
            (r.started_at - r.enqueued_at).total_seconds() * 1000
            for r in items
            if r.started_at and r.enqueued_at and r.attempt == 1
        )
        buckets.append(
            Bucket(
                start=dt.datetime.fromtimestamp(key * seconds, dt.UTC),
                finished=len(items),
                failed=sum(1 for r in items if r.status == "failed"),
                runtime_p50_ms=_round(_percentile(runtimes, 0.5)),
                runtime_p95_ms=_round(_percentile(runtimes, 0.95)),
                pickup_p50_ms=_round(_percentile(pickups, 0.5)),
                pickup_p95_ms=_round(_percentile(pickups, 0.95)),
            )
        )
    return buckets


async def last_runs(
    engine: AsyncEngine, app: str, fires: Sequence[tuple[str, dt.datetime]]
) -> dict[str, LastRun]:
    """The execution of each `(schedule id, fire time)` of `app`, by schedule id.

    One lookup per pair through the UNIQUE `(task_id, scheduled_for)` index, however
    long a schedule's history is.
    """
    if not fires:
        return {}
    T = TaskExecution
    pairs = [
        and_(T.task_id == task_id, T.scheduled_for == literal(fire, T.scheduled_for.type))
        for task_id, fire in fires
    ]
    query = select(T.task_id, T.id, T.status, T.enqueued_at).where(T.app == app, or_(*pairs))
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return {str(r[0]): LastRun(str(r[0]), r[1], r[2], r[3]) for r in rows}
