"""What the benchmarks share: their Redis, PostgreSQL administration, settings of a run
and the PASS/FAIL word."""

from __future__ import annotations

import os
import uuid
from typing import Any

import asyncpg

from agentsched.settings import Settings, load_settings

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")

PG_ADMIN = os.environ.get("BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


async def pg_admin(sql: str) -> None:
    """Run one statement (CREATE/DROP DATABASE) on the admin database."""
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def pg_url(database: str, driver: str = "postgresql+asyncpg") -> str:
    """The URL of `database` on the admin DSN's server (`postgresql` for asyncpg itself)."""
    return PG_ADMIN.rsplit("/", 1)[0].replace("postgresql", driver, 1) + "/" + database


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def bench_settings(database: str, app: str, **overrides: Any) -> Settings:
    """Settings of one bench run: a fresh key prefix on the bench's Redis (clean it up
    with `cleanup_redis(settings.redis_prefix)`), the bench tasks, `database` here."""
    return load_settings(
        redis_url=REDIS_URL,
        redis_prefix=f"bench:{uuid.uuid4().hex[:8]}:",
        app=app,
        database_url=pg_url(database),
        task_modules=["bench.bench_tasks"],
        **overrides,
    )
