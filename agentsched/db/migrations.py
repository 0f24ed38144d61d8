"""Schema versions: tables created on start-up, later changes applied as numbered steps.

A fresh database gets today's tables from the models and is stamped with the latest
version. A database from an older release is brought forward one step at a time;
`open_database` runs this under a lock (PostgreSQL's advisory lock, SQLite's write
lock taken by BEGIN IMMEDIATE), so several processes starting together apply each
step once. A step should still check before it changes anything.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from sqlalchemy import Column, DateTime, Integer, MetaData, Table, func, inspect, select, text
from sqlalchemy.engine import Connection

from agentsched.db.models import Base, ScheduledTask, TaskExecution

_meta = MetaData()
schema_versions = Table(
    "agentsched_schema",
    _meta,
    Column("version", Integer, primary_key=True),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)


def _index(table: str, name: str) -> Callable[[Connection], None]:
    """A step that creates one index of the models (if it is not there yet)."""

    def step(conn: Connection) -> None:
        (index,) = [i for i in Base.metadata.tables[table].indexes if i.name == name]
        index.create(conn, checkfirst=True)

    return step


def _columns(table: str, *names: str) -> Callable[[Connection], None]:
    """A step that adds nullable columns of the models (those not there yet)."""

    def step(conn: Connection) -> None:
        have = {c["name"] for c in inspect(conn).get_columns(table)}
        for name in names:
            if name not in have:
                column = Base.metadata.tables[table].c[name]
                kind = column.type.compile(dialect=conn.dialect)
                conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {kind}"))

    return step


def _included(table: str, name: str) -> Callable[[Connection], None]:
    """A step that rebuilds one index of the models on PostgreSQL when it lacks the
    model's INCLUDE columns (a covering index); other databases have no INCLUDE."""

    def step(conn: Connection) -> None:
        if conn.dialect.name != "postgresql":
            return
        (index,) = [i for i in Base.metadata.tables[table].indexes if i.name == name]
        want = list(index.dialect_options["postgresql"]["include"])
        have = [i for i in inspect(conn).get_indexes(table) if i["name"] == name]
        if have and list(have[0].get("dialect_options", {}).get("postgresql_include", [])) == want:
            return
        index.drop(conn, checkfirst=True)
        index.create(conn)

    return step


# (version, step). Version 1 is the first release's tables, made by create_all.
MIGRATIONS: list[tuple[int, Callable[[Connection], None]]] = [
    # the scheduler tick's index on (app, enabled, next_run_at)
    (2, _index(ScheduledTask.__tablename__, "ix_scheduled_tasks_due")),
    # history retention's (and the finished_at sort's) index
    (3, _index(TaskExecution.__tablename__, "ix_task_executions_app_finished")),
    # what a running task last reported with agentsched.progress
    (4, _columns(TaskExecution.__tablename__, "progress", "progress_message")),
    # when a queued execution is due, for the reconciler
    (5, _columns(TaskExecution.__tablename__, "due_at")),
    # the dashboard's per-minute figures read only this index (index-only scans)
    (6, _included(TaskExecution.__tablename__, "ix_task_executions_app_finished")),
]
LATEST = max([1, *(version for version, _ in MIGRATIONS)])


def is_current(conn: Connection) -> bool:
    """Every table there and the latest version stamped: start-up needs no lock."""
    names = set(inspect(conn).get_table_names())
    if not {*Base.metadata.tables, schema_versions.name} <= names:
        return False
    return (conn.execute(select(func.max(schema_versions.c.version))).scalar() or 0) >= LATEST


def upgrade(conn: Connection) -> int:
    """Create missing tables and apply pending steps; returns the schema version."""
    existing = set(inspect(conn).get_table_names())
    fresh = "task_executions" not in existing
    Base.metadata.create_all(conn)
    _meta.create_all(conn)
    current = conn.execute(select(schema_versions.c.version)).scalars().all()
    now = dt.datetime.now(dt.UTC)
    if fresh and not current:
        conn.execute(
            schema_versions.insert(),
            [{"version": v, "applied_at": now} for v in range(1, LATEST + 1)],
        )
        return LATEST
    done = set(current) or {1}
    if not current:
        conn.execute(schema_versions.insert(), [{"version": 1, "applied_at": now}])
    for version, step in MIGRATIONS:
        if version not in done:
            step(conn)
            conn.execute(schema_versions.insert(), [{"version": version, "applied_at": now}])
    return LATEST
