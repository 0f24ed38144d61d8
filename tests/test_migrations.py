"""Schema versions: fresh databases are stamped, older ones are brought forward once."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import inspect, select, text

from agentsched.db.engine import open_database
from agentsched.db.migrations import LATEST, schema_versions


async def _versions_and_indexes(url: str) -> tuple[list[int], set[str]]:
    engine = await open_database(url)
    try:
        async with engine.connect() as conn:
            versions = list((await conn.execute(select(schema_versions.c.version))).scalars())
            indexes = await conn.run_sync(
                lambda c: {
                    i["name"]
                    for table in ("scheduled_tasks", "task_executions")
                    for i in inspect(c).get_indexes(table)
                }
            )
    finally:
        await engine.dispose()
    return sorted(versions), {name for name in indexes if name}


async def test_fresh_database_is_stamped_latest(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/fresh.db"
    versions, indexes = await _versions_and_indexes(url)
    assert versions == list(range(1, LATEST + 1))
    assert {"ix_scheduled_tasks_due", "ix_task_executions_app_finished"} <= indexes


async def _undo_steps_3_and_4(url: str, *more: str) -> None:
    """Make a current database look older: no retention index, no progress columns."""
    engine = await open_database(url)
    async with engine.begin() as conn:
        for sql in (
            "DROP INDEX ix_task_executions_app_finished",
            "ALTER TABLE task_executions DROP COLUMN progress",
            "ALTER TABLE task_executions DROP COLUMN progress_message",
            *more,
        ):
            await conn.execute(text(sql))
    await engine.dispose()


async def test_database_of_the_first_release_is_migrated(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/old.db"
    # release 1: not the due index either, and no versions at all
    await _undo_steps_3_and_4(
        url, "DROP INDEX ix_scheduled_tasks_due", "DROP TABLE agentsched_schema"
    )
    versions, indexes = await _versions_and_indexes(url)
    assert versions == list(range(1, LATEST + 1))
    assert {"ix_scheduled_tasks_due", "ix_task_executions_app_finished"} <= indexes
    again, _ = await _versions_and_indexes(url)  # idempotent
    assert again == versions


async def test_database_of_version_2_gets_the_later_steps(pg_url: str) -> None:
    await _undo_steps_3_and_4(pg_url, "DELETE FROM agentsched_schema WHERE version >= 3")
    versions, indexes = await _versions_and_indexes(pg_url)
    assert versions == list(range(1, LATEST + 1)) and LATEST >= 4
    assert {"ix_scheduled_tasks_due", "ix_task_executions_app_finished"} <= indexes
    engine = await open_database(pg_url)
    async with engine.connect() as conn:
        columns = await conn.run_sync(
            lambda c: {col["name"] for col in inspect(c).get_columns("task_executions")}
        )
    await engine.dispose()
    assert {"progress", "progress_message"} <= columns


async def test_connections_starting_together_on_one_sqlite_file(tmp_path: Path) -> None:
    # SQLite has no advisory lock: the schema transaction takes the write lock first, so
    # whoever loses the race finds the tables and versions there (before: UNIQUE failed
    # on agentsched_schema.version in most rounds of this test).
    async def start(url: str) -> None:
        engine = await open_database(url)
        await engine.dispose()

    for round_ in range(10):
        url = f"sqlite+aiosqlite:///{tmp_path}/race{round_}.db"
        await asyncio.gather(*(start(url) for _ in range(6)))
        versions, _ = await _versions_and_indexes(url)
        assert versions == list(range(1, LATEST + 1))
    engine = await open_database(url)
    async with engine.connect() as conn:  # the mode is the file's, set once
        assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
    await engine.dispose()


async def test_start_up_on_a_current_sqlite_file_does_not_wait_for_a_writer(
    tmp_path: Path,
) -> None:
    import sqlite3

    path = tmp_path / "busy.db"
    engine = await open_database(f"sqlite+aiosqlite:///{path}")
    await engine.dispose()
    writer = sqlite3.connect(path, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")  # a recorder's write transaction, held
        started = asyncio.get_running_loop().time()
        engine = await asyncio.wait_for(open_database(f"sqlite+aiosqlite:///{path}"), 5)
        await engine.dispose()
        assert asyncio.get_running_loop().time() - started < 2
    finally:
        writer.rollback()
        writer.close()
