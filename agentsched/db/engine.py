"""Opening the database: an async engine; tables created and migrated on start-up."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from agentsched.db.migrations import upgrade
from agentsched.errors import ServiceUnavailable
from agentsched.settings import mask_url

_LOCK = 0x61676E74  # 'agnt': advisory lock id for schema creation


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the API read while a worker's recorder writes; the busy timeout makes
    # several processes on one file wait for each other instead of failing.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
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
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


async def _create(engine: AsyncEngine, create_tables: bool) -> None:
    async with engine.begin() as conn:
        if create_tables:
            if engine.dialect.name == "postgresql":
                # Several processes start at once; the lock makes them create in turn.
                await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK})
            await conn.run_sync(upgrade)
        else:
            await conn.execute(text("SELECT 1"))


async def open_database(url: str, *, create_tables: bool = True) -> AsyncEngine:
    """Connect (and create missing tables); `ServiceUnavailable` naming the URL if it fails."""
    engine = create_engine(url)
    try:
        for attempt in range(3):
            try:
                await _create(engine, create_tables)
                break
            except OperationalError as exc:
                # SQLite has no schema lock: a process that lost the race to create a
                # table finds it there on the next try.
                if "already exists" not in str(exc) or attempt == 2:
                    raise
    except Exception as exc:
        await engine.dispose()
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ServiceUnavailable("database", mask_url(url), reason) from None
    return engine
