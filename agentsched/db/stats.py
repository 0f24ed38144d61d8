"""SQL aggregates of `task_executions` for the dashboard: per-minute figures, last runs.

The server aggregates so a browser never downloads the history. On PostgreSQL one
query reads each minute of the window as its own range of the covering index
`(app, finished_at) INCLUDE (status, attempt, started_at, enqueued_at)`: index-only
scans, no sort of the window's rows by minute, run time and pickup delay as `date_part`
doubles (`extract` computes in numeric since PostgreSQL 14), and one
`percentile_cont(ARRAY[0.5, 0.95])` sort per measure and minute. Other databases
(SQLite, for development) return the window's rows and Python computes the figures.

`MinuteCache` keeps, per engine and app, the figures of the minutes that ended more
than `SETTLED` ago, and reuses one only while the number of executions that ended in
that minute is still the one they were computed from (counting the window's minutes
through the same index costs about half of aggregating them). That keeps the figures
right when a row is written late (the recorder catching up after a Redis or database
outage, or claiming a dead recorder's pending snapshots): a terminal row never changes
again, so a minute's rows only change by a row joining it (a late write) or leaving it
(retention, a retry putting it back to queued), and either changes its count; the
minute is then aggregated again. The one change a count cannot see is a row leaving and
another joining the same minute between two requests.

`minutes_kept_warm` (run by the API's lifespan) fills the cache at start-up and adds
each minute as it settles, so the Overview's first request after a deploy, on a second
replica or after an hour nobody watched only counts and reads its last minutes; one
arriving during the warm-up waits for it instead of aggregating the hour a second time.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import datetime as dt
import logging
import statistics
import weakref
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    DateTime,
    Float,
    Text,
    and_,
    case,
    cast,
    column,
    func,
    literal,
    or_,
    select,
    text,
    true,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import ARRAY, array
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import Select
from sqlalchemy.sql.elements import Grouping

from agentsched.db.models import TaskExecution
from agentsched.status import TERMINAL

log = logging.getLogger("agentsched.dashboard")


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
MINUTE = dt.timedelta(minutes=1)
KEEP = dt.timedelta(days=1)  # the longest window the Overview serves
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_TIMES = ARRAY(DateTime(timezone=True))
_TEXTS = ARRAY(Text)


class MinuteCache:
    """Per engine and app: the figures of settled minutes, checked against their count."""

    def __init__(self) -> None:
        self._apps: weakref.WeakKeyDictionary[AsyncEngine, dict[str, _Known]]
        self._apps = weakref.WeakKeyDictionary()

    def _known(self, engine: AsyncEngine, app: str) -> _Known:
        return self._apps.setdefault(engine, {}).setdefault(app, _Known())

    async def buckets(
        self, engine: AsyncEngine, app: str, since: dt.datetime, until: dt.datetime
    ) -> list[Bucket]:
        """What `minute_buckets` returns from `since`'s whole minute to `until`,
        aggregating only the minutes that are recent, not known yet or changed."""
        spans = _spans(_floor_minute(since), until, 60)
        settled = _floor_minute(until - SETTLED)
        known = self._known(engine, app)
        # One at a time per app: a request arriving while the warm-up (or another
        # request) aggregates the hour waits for it and then reads only what is new.
        async with known.lock:
            old = [s for s in spans if s.hi <= settled]
            kept: dict[dt.datetime, Bucket] = {}
            todo = spans
            if any(s.start in known.buckets for s in old):
                counts = await _counts(engine, app, old)
                kept = {
                    s.start: b
                    for s in old
                    if (b := known.buckets.get(s.start)) and b.finished == counts.get(s.start)
                }
                todo = [
                    s
                    for s in spans
                    if s.start not in kept and (s.hi > settled or counts.get(s.start))
                ]
            fresh = await _aggregate(engine, app, todo)
            done = {**kept, **{b.start: b for b in fresh}}
            # Minutes before the window stay (unchecked) for a longer window's request.
            older = {
                k: b for k, b in known.buckets.items() if until - KEEP <= k < _floor_minute(since)
            }
            known.buckets = {**older, **{k: b for k, b in done.items() if k + MINUTE <= settled}}
        return sorted(done.values(), key=lambda b: b.start)

    async def warm(self, engine: AsyncEngine, app: str, minutes: int = 60) -> None:
        """Aggregate the settled minutes of the last `minutes` that are not known yet
        (no counts: `buckets` checks every minute it reuses)."""
        until = dt.datetime.now(dt.UTC)
        settled = _floor_minute(until - SETTLED)
        known = self._known(engine, app)
        async with known.lock:
            since = _floor_minute(until - dt.timedelta(minutes=minutes))
            spans = _spans(max(since, known.warmed or since), settled, 60)
            fresh = await _aggregate(
                engine, app, [s for s in spans if s.start not in known.buckets]
            )
            known.buckets.update({b.start: b for b in fresh})
            known.buckets = {k: b for k, b in known.buckets.items() if k >= until - KEEP}
            known.warmed = settled


@dataclass(slots=True)
class _Known:
    buckets: dict[dt.datetime, Bucket] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    warmed: dt.datetime | None = None  # `warm` aggregated the minutes before this one


# The Overview's settled minutes, per database engine and app (not per loop: plain
# data and a lock, dropped with the engine).
MINUTES = MinuteCache()
WARM_EVERY = 30.0


@contextlib.asynccontextmanager
async def minutes_kept_warm(
    engine: AsyncEngine, app: str, every: float = WARM_EVERY
) -> AsyncIterator[None]:
    """Aggregate `MINUTES` of `app` now and then every `every` seconds as minutes settle,
    while the block runs: the Overview's first request after a start, or after an hour
    nobody watched, then only checks counts and reads its last minutes."""
    stop = asyncio.Event()

    async def keep() -> None:
        while not stop.is_set():
            try:
                await MINUTES.warm(engine, app)
            except Exception:  # the database away: the Overview itself reports that
                log.debug("warming the Overview's minutes failed", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)

    task = asyncio.create_task(keep())
    try:
        yield
    finally:
        stop.set()
        # A round in progress ends by itself; one stuck on an unreachable database not.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(task, 5)


def _floor_minute(moment: dt.datetime) -> dt.datetime:
    return moment.replace(second=0, microsecond=0)


@dataclass(frozen=True, slots=True)
class _Span:
    """One bucket's part of a window: the rows that ended in `[lo, hi)`."""

    start: dt.datetime
    lo: dt.datetime
    hi: dt.datetime


def _spans(since: dt.datetime, until: dt.datetime, seconds: int) -> list[_Span]:
    step = dt.timedelta(seconds=seconds)
    start = _EPOCH + (since - _EPOCH) // step * step
    spans = []
    while start < until:
        spans.append(_Span(start, max(start, since), min(start + step, until)))
        start += step
    return spans


@dataclass(frozen=True, slots=True)
class LastRun:
    """The newest execution of one schedule."""

    task_id: str
    execution_id: str
    status: str
    enqueued_at: dt.datetime | None


async def minute_buckets(
    engine: AsyncEngine, app: str, since: dt.datetime, until: dt.datetime, seconds: int = 60
) -> list[Bucket]:
    """Per-bucket figures of one app's executions that ended in `[since, until)`.

    Run time is `finished_at - started_at` of finished runs that started; pickup delay
    is `started_at - enqueued_at` of first attempts (it includes any requested delay).
    Buckets with nothing in them are left out.
    """
    return await _aggregate(engine, app, _spans(since, until, seconds))


def _ended(app: str, lo: Any, hi: Any) -> Any:
    T = TaskExecution
    return and_(
        T.app == app, T.finished_at >= lo, T.finished_at < hi, T.status.in_(sorted(TERMINAL))
    )


async def _aggregate(engine: AsyncEngine, app: str, spans: Sequence[_Span]) -> list[Bucket]:
    if not spans:
        return []
    if engine.dialect.name == "postgresql":
        return await _pg_buckets(engine, app, spans)
    return await _rows_buckets(engine, app, spans)


async def _rows_buckets(engine: AsyncEngine, app: str, spans: Sequence[_Span]) -> list[Bucket]:
    """The rows from the first span to the last into Python (gaps included: SQLite's
    histories are a developer's)."""
    T = TaskExecution
    query = select(T.finished_at, T.started_at, T.enqueued_at, T.status, T.attempt)
    async with engine.connect() as conn:
        rows = (await conn.execute(query.where(_ended(app, spans[0].lo, spans[-1].hi)))).all()
    return _python_buckets(rows, spans)


async def _counts(engine: AsyncEngine, app: str, spans: Sequence[_Span]) -> dict[dt.datetime, int]:
    """How many executions ended in each span (whole minutes), by its start (0 left out)."""
    if not spans:
        return {}
    if engine.dialect.name != "postgresql":
        # SQLite keeps UTC times as ISO text: its first 16 characters name the minute.
        T = TaskExecution
        minute = func.substr(T.finished_at, 1, 16)
        query = select(minute, func.count()).where(_ended(app, spans[0].lo, spans[-1].hi))
        async with engine.connect() as conn:
            rows = (await conn.execute(query.group_by(minute))).all()
        counts = {dt.datetime.fromisoformat(m).replace(tzinfo=dt.UTC): int(n) for m, n in rows}
        return {s.start: counts[s.start] for s in spans if s.start in counts}
    span = _span_table(spans)
    n = select(func.count().label("n")).where(_ended(app, span.c.lo, span.c.hi)).lateral("n")
    query = select(span.c.lo, n.c.n).select_from(span.join(n, true())).where(n.c.n > 0)
    start = {s.lo: s.start for s in spans}
    return {start[lo]: int(count) for lo, count in await _pg_rows(engine, query)}


def _span_table(spans: Sequence[_Span]) -> Any:
    """The spans as rows `(lo, hi)` of a FROM clause, from two array parameters."""
    # Sent as text[]: asyncpg knows its codec, while a timestamptz[] parameter (or a
    # float8[] result) costs each new connection a type introspection query, ~9 ms each.
    los = cast(literal([s.lo.isoformat() for s in spans], _TEXTS), _TIMES)
    his = cast(literal([s.hi.isoformat() for s in spans], _TEXTS), _TIMES)
    kind = DateTime(timezone=True)
    return (
        func.unnest(los, his)
        .table_valued(column("lo", kind), column("hi", kind))
        .render_derived("span")
    )


async def _pg_rows(engine: AsyncEngine, query: Select[Any]) -> Sequence[Any]:
    async with engine.connect() as conn:
        # A long window looks costly enough to the planner to compile the query with
        # JIT, which takes 0.3 s by itself; index-only scans of minutes gain nothing.
        await conn.execute(text("SET LOCAL jit = off"))
        rows: Sequence[Any] = (await conn.execute(query)).all()
    return rows


def _ms(interval: Any) -> Any:
    return func.date_part("epoch", interval) * 1000.0


async def _pg_buckets(engine: AsyncEngine, app: str, spans: Sequence[_Span]) -> list[Bucket]:
    T = TaskExecution
    span = _span_table(spans)
    fractions = cast(array([0.5, 0.95]), ARRAY(Float))
    # NULL when a time is missing: percentile_cont skips those rows.
    runtime = _ms(T.finished_at - T.started_at)
    pickup = case((T.attempt == 1, _ms(T.started_at - T.enqueued_at)))
    figures = (
        select(
            func.count().label("finished"),
            func.count().filter(T.status == "failed").label("failed"),
            *_p50_p95(func.percentile_cont(fractions).within_group(runtime)),
            *_p50_p95(func.percentile_cont(fractions).within_group(pickup)),
        )
        .where(_ended(app, span.c.lo, span.c.hi))
        .lateral("figures")
    )
    query = (
        select(span.c.lo, figures)
        .select_from(span.join(figures, true()))
        .where(figures.c.finished > 0)
        .order_by(span.c.lo)
    )
    start = {s.lo: s.start for s in spans}
    buckets = []
    for lo, finished, failed, *ms in await _pg_rows(engine, query):
        buckets.append(Bucket(start[lo], int(finished), int(failed), *map(_round, ms)))
    return buckets


def _p50_p95(percentiles: Any) -> tuple[Any, Any]:
    """Both elements of one aggregate's array (PostgreSQL computes it once)."""
    both = type_coerce(Grouping(percentiles), ARRAY(Float))
    return both[1], both[2]


def _round(value: Any) -> float | None:
    return None if value is None else round(float(value), 3)


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def _python_buckets(rows: Iterable[Any], spans: Sequence[_Span]) -> list[Bucket]:
    los = [s.lo for s in spans]
    groups: dict[int, list[Any]] = {}
    for row in rows:
        i = bisect.bisect_right(los, row.finished_at) - 1
        if i >= 0 and row.finished_at < spans[i].hi:
            groups.setdefault(i, []).append(row)
    return [_python_bucket(spans[i].start, groups[i]) for i in sorted(groups)]


def _python_bucket(start: dt.datetime, items: Sequence[Any]) -> Bucket:
    runtimes = sorted(
        (r.finished_at - r.started_at).total_seconds() * 1000 for r in items if r.started_at
    )
    pickups = sorted(
        (r.started_at - r.enqueued_at).total_seconds() * 1000
        for r in items
        if r.started_at and r.enqueued_at and r.attempt == 1
    )
    return Bucket(
        start=start,
        finished=len(items),
        failed=sum(1 for r in items if r.status == "failed"),
        runtime_p50_ms=_round(_percentile(runtimes, 0.5)),
        runtime_p95_ms=_round(_percentile(runtimes, 0.95)),
        pickup_p50_ms=_round(_percentile(pickups, 0.5)),
        pickup_p95_ms=_round(_percentile(pickups, 0.95)),
    )


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
