"""What goes into the database comes out: JSON numbers on PostgreSQL, metadata on SQLite."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentsched.jobs.runtime import Runtime
from agentsched.settings import Settings
from tests.test_api_support import build_app, eventually, serve

BIG = {"x": 1e300, "y": -1.7976931348623157e308, "z": 123456789.25, "n": 2**63 - 1}


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(build_app("create_app", settings)) as c:
        yield c


@pytest.mark.parametrize("db_url", ["postgres", "sqlite"], indirect=True)
async def test_json_numbers_round_trip_through_the_database(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    created = await client.post(
        "/tasks", json={"name": "big", "function": "tests.noop", "interval": 60, "kwargs": BIG}
    )
    assert created.status_code == 201, created.text
    task_id = created.json()["id"]
    read = await client.get(f"/tasks/{task_id}")
    assert read.json()["kwargs"] == BIG
    for action in ("disable", "enable"):
        response = await client.post(f"/tasks/{task_id}/{action}")
        assert response.status_code == 200, response.text
    run = await client.post(f"/tasks/{task_id}/run")
    assert run.status_code == 202, run.text
    # The execution's row (written by the recorder) reads back the same numbers too.
    async with Runtime(settings) as runtime:
        row = await eventually(
            lambda: runtime.executions.get(settings.app, run.json()["id"]),
            lambda found: found is not None,
        )
    assert row is not None and row.kwargs == BIG


@pytest.mark.parametrize("db_url", ["postgres", "sqlite"], indirect=True)
async def test_metadata_is_kept_in_sql(client: httpx.AsyncClient, settings: Settings) -> None:
    created = await client.post(
        "/executions", json={"function": "tests.noop", "metadata": {"by": "support-bot", "n": 2}}
    )
    assert created.status_code == 202, created.text
    ident = created.json()["id"]
    listed = await eventually(
        lambda: client.get("/executions"), lambda r: r.json()["total"] == 1
    )
    assert listed.json()["items"][0]["metadata"] == {"by": "support-bot", "n": 2}
    async with Runtime(settings) as runtime:
        row = await runtime.executions.get(settings.app, ident)
    assert row is not None and row.metadata == {"by": "support-bot", "n": 2}


async def test_history_writes_survive_a_dropped_database_connection(settings: Settings) -> None:
    """The connection held for batched writes is replaced when PostgreSQL drops it."""
    import datetime as dt
    import uuid

    from sqlalchemy import text

    from agentsched.execution import Execution
    from agentsched.jobs.durable import queued_row
    from agentsched.status import TaskStatus

    def row() -> dict[str, object]:
        execution = Execution(
            id=str(uuid.uuid4()), app=settings.app, function="tests.noop",
            status=TaskStatus.QUEUED, max_tries=1, args=[], kwargs={}, metadata={},
            enqueued_at=dt.datetime.now(dt.UTC),
        )  # fmt: skip
        return queued_row(execution, 0)

    async with Runtime(settings) as runtime:
        store = runtime.executions
        first, second = row(), row()
        await store.upsert_many([first])
        async with runtime.engine.connect() as admin:
            # Every other backend of this database: the held connection among them.
            ended = await admin.scalar(text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ))  # fmt: skip
        assert ended >= 1
        await store.upsert_many([second])
        for written in (first, second):
            found = await store.get(settings.app, str(written["id"]))
            assert found is not None and found.status is TaskStatus.QUEUED


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_page_and_its_total_come_from_one_snapshot_on_sqlite(
    settings: Settings, tmp_path: Path
) -> None:
    """A recorder committing between the page's SELECT and its count must not give a
    page of one row with a total of two (pysqlite ran each SELECT on its own)."""
    from sqlalchemy import event

    from agentsched.jobs.queue import TaskQueue

    async with TaskQueue(settings.model_copy(update={"durable_enqueue": True})) as queue:
        await queue.enqueue("tests.noop")
        engine = queue.runtime.engine
        path = str(tmp_path / "agentsched.db")

        def write_between(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
            if "count(" not in statement.lower():
                return
            with sqlite3.connect(path) as other:  # another process' recorder, committing
                cols = [r[1] for r in other.execute("PRAGMA table_info(task_executions)")]
                picked = ", ".join("'late-row'" if c == "id" else c for c in cols)
                other.execute(
                    f"INSERT INTO task_executions ({', '.join(cols)})"
                    f" SELECT {picked} FROM task_executions LIMIT 1"
                )

        event.listen(engine.sync_engine, "before_cursor_execute", write_between)
        try:
            items, total = await queue.list_executions()
        finally:
            event.remove(engine.sync_engine, "before_cursor_execute", write_between)
        assert (len(items), total) == (1, 1)
        items, total = await queue.list_executions()
        assert (len(items), total) == (2, 2)  # the late row, in the next snapshot
