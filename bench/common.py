"""What the benchmarks share: PostgreSQL administration and the PASS/FAIL word."""

from __future__ import annotations

import os

import asyncpg

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
