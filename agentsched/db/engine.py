"""Opening the database: an async engine; tables created and migrated on start-up."""

from __future__ import annotations

import asyncio
import itertools
import os
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from agentsched.db.migrations import is_current, upgrade
from agentsched.errors import ServiceUnavailable
from agentsched.settings import mask_url

_LOCK = 0x61676E74  # 'agnt': advisory lock id for schema creation


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # The busy timeout makes several processes on one file wait for each other instead
    # of failing. (WAL is set once per file by `_sqlite_wal`.)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_engine(url: str) -> AsyncEngine:
    """An async engine for a `postgresql+asyncpg://` or `sqlite+aiosqlite://` URL."""
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_async_engine(url, connect_args={"timeout": 10})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    # JSONB stores 1e300 as an exact numeric and prints it back as 301 digits; json.loads
    # would make that an integer no payload can carry. orjson reads it as the float it was.
    return create_async_engine(
        url, pool_size=10, max_overflow=10, pool_pre_ping=True, json_deserializer=orjson.loads
    )


async def _sqlite_wal(engine: AsyncEngine) -> None:
    """WAL lets the API read while a worker's recorder writes; the file keeps the mode.

    Switching needs the file to itself, and SQLite does not wait for that (no busy
    handler), so connections opening a new file together retry here.
    """
    for attempt in itertools.count():
        try:
            async with engine.connect() as conn:
                mode = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar()
                if mode not in ("wal", "memory"):
                    await conn.exec_driver_sql("PRAGMA journal_mode=WAL")
            return
        except OperationalError as exc:
            if "locked" not in str(exc) or attempt >= 250:
                raise
            await asyncio.sleep(0.02)


async def _create(engine: AsyncEngine, create_tables: bool) -> None:
    if not create_tables:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return
    async with engine.connect() as conn:
        if await conn.run_sync(is_current):
            return  # the usual start: nothing to create, so no lock to wait for
    async with engine.begin() as conn:
        # Several processes start at once; a lock makes them create in turn, and the
        # ones that wait find the tables and versions there.
        if engine.dialect.name == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK})
        elif engine.dialect.name == "sqlite":
            # The write lock before the schema is read (SQLite's DDL is transactional;
            # pysqlite would otherwise begin only at the first INSERT).
            await conn.exec_driver_sql("BEGIN IMMEDIATE")
        await conn.run_sync(upgrade)


def _sqlite_place_problem(url: str) -> str | None:
    """Why SQLite cannot create or open the URL's file, judged before connecting.

    aiosqlite's thread outlives a failed connect and then writes a traceback of its own
    after the event loop has closed; a missing or read-only directory is caught here.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    if parsed.database == ":memory:" or parsed.database.startswith("file:"):
        return None
    place = Path(parsed.database).expanduser().resolve().parent
    if not place.is_dir():
        return f"directory {place} does not exist"
    if not os.access(place, os.W_OK | os.X_OK):
        return f"directory {place} is not writable"
    return None


async def open_database(url: str, *, create_tables: bool = True) -> AsyncEngine:
    """Connect (and create missing tables); `ServiceUnavailable` naming the URL if it fails."""
    problem = _sqlite_place_problem(url)
    if problem is not None:
        raise ServiceUnavailable("database", mask_url(url), problem)
    engine = create_engine(url)
    try:
        if engine.dialect.name == "sqlite":
            await _sqlite_wal(engine)
        await _create(engine, create_tables)
    except Exception as exc:
        await engine.dispose()
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ServiceUnavailable("database", mask_url(url), reason) from None
    return engine
