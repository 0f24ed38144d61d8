"""The dashboard's per-minute figures (`agentsched.db.stats`) on SQLite and PostgreSQL:
exact figures of a known history, the cache of settled minutes (late rows included), its
warm-up, and the covering index the PostgreSQL query reads (migration step 6)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from sqlalchemy import delete, insert, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from agentsched.db import stats
from agentsched.db.engine import open_database
from agentsched.db.migrations import LATEST
from agentsched.db.models import TaskExecution
from agentsched.db.stats import Bucket, MinuteCache, minute_buckets, minutes_kept_warm
from tests.test_api_support import eventually

BASE = dt.datetime(2026, 1, 5, 12, 0, tzinfo=dt.UTC)
MS = dt.timedelta(milliseconds=1)


# conftest's `db_url`: a fresh SQLite file or a fresh PostgreSQL database per test.
pytestmark = pytest.mark.parametrize("db_url", ["sqlite", "postgres"], indirect=True)


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = await open_database(db_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def app() -> str:
    return f"stats-{uuid.uuid4().hex[:8]}"


async def add(
    engine: AsyncEngine,
    app: str,
    end: dt.datetime | None,
    run_ms: float | None = 10,
    pickup_ms: float = 1,
    status: str = "success",
    attempt: int = 1,
) -> str:
    """One execution that ended at `end` after running `run_ms` (None: never started)."""
    start = None if end is None or run_ms is None else end - run_ms * MS
    enqueued = (start or end or BASE) - pickup_ms * MS
    ident = str(uuid.uuid4())
    async with engine.begin() as conn:
        await conn.execute(insert(TaskExecution).values(
            id=ident, app=app, function="tests.noop", status=status, args=[], kwargs={},
            meta={}, attempt=attempt, enqueued_at=enqueued, started_at=start, finished_at=end,
        ))  # fmt: skip
    return ident


def figures(buckets: Sequence[Bucket]) -> list[tuple[Any, ...]]:
    return [
        (b.start, b.finished, b.failed, b.runtime_p50_ms, b.runtime_p95_ms, b.pickup_p50_ms,
         b.pickup_p95_ms)
        for b in buckets
    ]  # fmt: skip


async def test_figures_of_a_known_history_are_exact(engine: AsyncEngine, app: str) -> None:
    second = dt.timedelta(seconds=1)
    for n, (run, pickup) in enumerate([(10, 1), (20, 2), (30, 3), (40, 4)]):
        await add(engine, app, BASE + (5 + n) * second, run, pickup)
    # a retry's pickup is not a pickup delay; a job cancelled before it started has no
    # run time; a running one and another app's have not ended in this app's minute
    await add(engine, app, BASE + 30 * second, 100, 50, status="failed", attempt=2)
    await add(engine, app, BASE + 59.999 * second, None, 3, status="cancelled")
    await add(engine, app, None, None, status="running")
    await add(engine, f"{app}-other", BASE + 10 * second, 500, 500)
    # the first instant of the next minute belongs to it
    await add(engine, app, BASE + 60 * second, 7.5, 0.25)
    late = BASE + 2 * dt.timedelta(minutes=1)

    assert figures(await minute_buckets(engine, app, BASE, late)) == [
        # run times 10, 20, 30, 40, 100: p95 = 40 + 0.8 * (100 - 40); pickups 1, 2, 3, 4
        (BASE, 6, 1, 30.0, 88.0, 2.5, 3.85),
        (BASE + 60 * second, 1, 0, 7.5, 7.5, 0.25, 0.25),
    ]
    # [since, until): a window's edges cut inside a minute, shown at the minute's start
    cut = await minute_buckets(engine, app, BASE + 7 * second, BASE + 60 * second)
    assert figures(cut) == [(BASE, 4, 1, 40.0, 94.0, 3.5, 3.95)]
    assert await minute_buckets(engine, app, late, late + dt.timedelta(hours=1)) == []
    # any bucket length
    (hour,) = await minute_buckets(engine, app, BASE, late, seconds=3600)
    assert (hour.start, hour.finished, hour.runtime_p50_ms) == (BASE, 7, 25.0)


class Aggregated:
    """Records which minutes `stats` aggregates in full."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.minutes: list[list[dt.datetime]] = []
        real = stats._aggregate

        async def spy(engine: AsyncEngine, app: str, spans: Any) -> list[Bucket]:
            self.minutes.append([s.start for s in spans])
            return await real(engine, app, spans)

        monkeypatch.setattr(stats, "_aggregate", spy)


async def test_cache_reuses_settled_minutes_and_sees_late_rows(
    engine: AsyncEngine, app: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    until = dt.datetime.now(dt.UTC).replace(second=30, microsecond=0)
    since = until - dt.timedelta(hours=1)
    minute = dt.timedelta(minutes=1)
    at40, at20, now = (until - n * minute for n in (40, 20, 0))
    await add(engine, app, at40, 10)
    await add(engine, app, at40, 30)
    gone = await add(engine, app, at20, 100)
    await add(engine, app, at20, 50, status="failed")
    await add(engine, app, until - 12 * dt.timedelta(seconds=1), 7)
    cache, aggregated = MinuteCache(), Aggregated(monkeypatch)

    first = await cache.buckets(engine, app, since, until)
    assert first == await minute_buckets(engine, app, since.replace(second=0), until)
    assert [(b.finished, b.failed) for b in first] == [(2, 0), (2, 1), (1, 0)]
    assert first[0].runtime_p50_ms == 20.0 and first[1].pickup_p50_ms == 1.0
    aggregated.minutes.clear()

    # Nothing changed: only the minutes not settled yet are aggregated again.
    assert await cache.buckets(engine, app, since, until) == first
    (again,) = aggregated.minutes
    assert again and min(again) >= (until - stats.SETTLED).replace(second=0)
    aggregated.minutes.clear()

    # A row written late into a settled minute (a backlog after an outage), one deleted
    # from another (retention) and one in the current minute: all three show.
    await add(engine, app, at40 + 5 * dt.timedelta(seconds=1), 50, status="failed")
    async with engine.begin() as conn:
        await conn.execute(delete(TaskExecution).where(TaskExecution.id == gone))
    await add(engine, app, until - dt.timedelta(seconds=1), 9)
    changed = await cache.buckets(engine, app, since, until)
    (again,) = aggregated.minutes
    assert {at40.replace(second=0), at20.replace(second=0)} <= set(again)
    assert len(again) < 10  # the changed minutes and the last ones, not the hour
    assert changed == await minute_buckets(engine, app, since.replace(second=0), until)
    assert [(b.finished, b.failed) for b in changed] == [(3, 1), (1, 1), (2, 0)]
    assert [b.start for b in changed] == [m.replace(second=0) for m in (at40, at20, now)]


async def test_warm_up_aggregates_the_hour_before_the_first_request(
    engine: AsyncEngine, app: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = dt.datetime.now(dt.UTC)
    for minutes_ago in (50, 30, 10):
        await add(engine, app, now - dt.timedelta(minutes=minutes_ago), minutes_ago)
    async with minutes_kept_warm(engine, app, every=0.05):
        await eventually(
            lambda: _known_minutes(engine, app), lambda known: len(known) == 3, timeout=10
        )
    aggregated = Aggregated(monkeypatch)
    until = dt.datetime.now(dt.UTC)
    warm = await stats.MINUTES.buckets(engine, app, until - dt.timedelta(hours=1), until)
    assert [b.runtime_p50_ms for b in warm] == [50.0, 30.0, 10.0]
    # the request only counted the settled minutes and aggregated its last ones
    assert all(min(spans, default=until) >= until - 3 * stats.MINUTE
               for spans in aggregated.minutes)  # fmt: skip


async def _known_minutes(engine: AsyncEngine, app: str) -> list[dt.datetime]:
    return list(stats.MINUTES._known(engine, app).buckets)


async def _index_includes(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        indexes = await conn.run_sync(lambda c: inspect(c).get_indexes("task_executions"))
    (index,) = [i for i in indexes if i["name"] == "ix_task_executions_app_finished"]
    return list(index.get("dialect_options", {}).get("postgresql_include", []))


async def test_migration_6_makes_the_finished_at_index_covering(
    engine: AsyncEngine, db_url: str
) -> None:
    """A database of version 5 has the plain (app, finished_at) index: step 6 rebuilds it
    with INCLUDE on PostgreSQL (SQLite has no INCLUDE and keeps its index)."""
    covering = engine.dialect.name == "postgresql"
    expected = ["status", "attempt", "started_at", "enqueued_at"] if covering else []
    assert await _index_includes(engine) == expected
    async with engine.begin() as conn:
        await conn.execute(text("DROP INDEX ix_task_executions_app_finished"))
        await conn.execute(text(
            "CREATE INDEX ix_task_executions_app_finished ON task_executions (app, finished_at)"
        ))  # fmt: skip
        await conn.execute(text("DELETE FROM agentsched_schema WHERE version >= 6"))
    for _ in range(2):  # the second start finds it current
        again = await open_database(db_url)
        try:
            async with again.connect() as conn:
                versions = await conn.scalars(text("SELECT version FROM agentsched_schema"))
                assert sorted(versions) == list(range(1, LATEST + 1))
            assert await _index_includes(again) == expected
        finally:
            await again.dispose()
