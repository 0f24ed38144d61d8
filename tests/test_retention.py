"""History retention: ended executions older than HISTORY_DAYS leave SQL, nothing else."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import pytest

from agentsched.db.engine import open_database
from agentsched.db.executions import ExecutionStore
from agentsched.errors import ConfigError
from agentsched.jobs.retention import prune_history, run_retention
from agentsched.settings import load_settings

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)


def row(app: str, status: str, ended_days_ago: float | None, **extra: Any) -> dict[str, Any]:
    finished = None if ended_days_ago is None else NOW - dt.timedelta(days=ended_days_ago)
    enqueued = (finished or NOW) - dt.timedelta(seconds=5)
    return {
        "id": str(uuid.uuid4()), "task_id": None, "app": app, "function": "tests.noop",
        "status": status, "args": [], "kwargs": {}, "result": None, "error": None,
        "error_kind": None, "attempt": 1, "max_tries": 1, "scheduled_for": None,
        "enqueued_at": enqueued, "started_at": None, "finished_at": finished, "meta": {},
        "seq": 3, "progress": None, "progress_message": None, "due_at": None,
    } | extra  # fmt: skip


@pytest.fixture(params=["postgres", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/retention.db"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
async def store(store_url: str) -> Any:
    engine = await open_database(store_url)
    store = ExecutionStore(engine)
    yield store
    await store.close()
    await engine.dispose()


async def ids(store: ExecutionStore, app: str) -> set[str]:
    items, _ = await store.list(app, limit=500)
    return {e.id for e in items}


async def test_only_ended_executions_older_than_the_cutoff_go(store: ExecutionStore) -> None:
    app, other = f"ret-{uuid.uuid4().hex[:8]}", f"ret-{uuid.uuid4().hex[:8]}"
    old = [row(app, s, 40) for s in ("success", "failed", "cancelled")]
    young = [row(app, "success", 10), row(app, "failed", 29.9)]
    live = [row(app, "queued", None), row(app, "running", None)]
    # An old unfinished row (a stuck record) stays too: only ended executions expire.
    stuck = [
        row(app, "running", None, enqueued_at=NOW - dt.timedelta(days=90)),
        row(app, "queued", 40),  # a retry waiting to run keeps its old end time
    ]
    elsewhere = [row(other, "success", 40)]
    await store.upsert_many(old + young + live + stuck + elsewhere)

    deleted = await prune_history(store, app, 30, now=NOW)

    assert deleted == 3
    assert await ids(store, app) == {r["id"] for r in young + live + stuck}
    assert await ids(store, other) == {elsewhere[0]["id"]}


async def test_deletes_in_batches_until_done(store: ExecutionStore) -> None:
    app = f"ret-{uuid.uuid4().hex[:8]}"
    await store.upsert_many([row(app, "success", 40 + i) for i in range(23)])
    assert await store.prune(app, NOW - dt.timedelta(days=30), batch=5) == 23
    assert await ids(store, app) == set()


async def test_the_loop_prunes_and_survives_a_database_error(
    store: ExecutionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = f"ret-{uuid.uuid4().hex[:8]}"
    old = row(app, "success", 400)
    await store.upsert_many([old])
    real = store.prune
    calls = 0

    async def flaky(*args: Any, **kwargs: Any) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("database went away")
        return await real(*args, **kwargs)

    monkeypatch.setattr(store, "prune", flaky)
    loop = asyncio.create_task(run_retention(store, app, 30, first_delay=0, every=0.05))
    try:
        for _ in range(100):
            if not await ids(store, app):
                break
            await asyncio.sleep(0.02)
        assert await ids(store, app) == set() and calls >= 2
    finally:
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop


def test_history_days_setting() -> None:
    assert load_settings().history_days == 30
    assert load_settings(history_days=0).history_days == 0  # keep forever
    with pytest.raises(ConfigError, match=r"^AGENTSCHED_HISTORY_DAYS: "):
        load_settings(history_days=-1)
