"""Does the size of the history slow the queue? End to end against an empty and a full table.

    python bench/bench_history.py [--rows 1000000] [--jobs 5000] [--rounds 3]

Two PostgreSQL databases in one run: one with an empty `task_executions`, one with
`--rows` finished executions of another app already in it (spread over 30 days, every
status and index as the recorder writes them, then VACUUM ANALYZE). Each round runs
the same N no-op jobs through one in-process worker against each (interleaved), until
every row is `success` in SQL. Prints jobs/s and the ratio full / empty; target >= 0.9x.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agentsched.db.engine import open_database
from agentsched.settings import load_settings
from bench.bench_queue import REDIS_URL, bench_tracked, cleanup_redis
from bench.common import pg_admin, pg_url, verdict

TARGET = 0.9
FILL = """
INSERT INTO task_executions (id, task_id, app, function, status, args, kwargs, result,
    error, error_kind, attempt, max_tries, enqueued_at, started_at, finished_at,
    metadata, seq)
SELECT md5(($1::bigint + i)::text)::uuid::text, NULL, 'history', 'bench.noop',
    (ARRAY['success', 'success', 'success', 'failed', 'cancelled'])[1 + i % 5],
    '[]'::jsonb, '{"n": 1}'::jsonb, 'null'::jsonb, NULL, NULL, 1, 1,
    now() - (i % 2592000) * interval '1 second',
    now() - (i % 2592000) * interval '1 second' + interval '2 ms',
    now() - (i % 2592000) * interval '1 second' + interval '5 ms',
    '{}'::jsonb, 3
FROM generate_series(1, $2) AS i
"""


async def fill(database: str, rows: int) -> float:
    engine = await open_database(pg_url(database))  # creates the tables and indexes
    await engine.dispose()
    conn = await asyncpg.connect(pg_url(database, "postgresql"))
    try:
        start = time.perf_counter()
        for done in range(0, rows, 250_000):
            await conn.execute(FILL, done, min(250_000, rows - done))
        await conn.execute("VACUUM ANALYZE task_executions")
        return time.perf_counter() - start
    finally:
        await conn.close()


async def main(args: argparse.Namespace) -> int:
    from bench import bench_tasks  # noqa: F401  registers bench.noop

    tag = uuid.uuid4().hex[:6]
    empty, full = f"agentsched_hist_empty_{tag}", f"agentsched_hist_full_{tag}"
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    try:
        for database in (empty, full):
            await pg_admin(f'CREATE DATABASE "{database}"')
        took = await fill(full, args.rows)
        print(f"filled {args.rows:,} rows in {took:.1f} s")
        ratios = []
        for i in range(args.rounds):
            rates = {}
            for name, database in (("empty", empty), ("full", full)):
                settings = load_settings(
                    redis_url=REDIS_URL, redis_prefix=prefix, app=f"{name}{i}",
                    database_url=pg_url(database), task_modules=["bench.bench_tasks"],
                    scheduler_enabled=False, reconcile_seconds=0, history_days=0,
                )  # fmt: skip
                rates[name] = await bench_tracked(args.jobs, settings)
            ratios.append(rates["full"] / rates["empty"])
            print(
                f"round {i + 1}: empty table {rates['empty']:6.0f} jobs/s, "
                f"{args.rows:,} rows {rates['full']:6.0f} jobs/s: {ratios[-1]:.2f}x"
            )
        ratio = statistics.median(ratios)
        print(f"median {ratio:.2f}x   target >= {TARGET}x   {verdict(ratio >= TARGET)}")
        return 0 if ratio >= TARGET else 1
    finally:
        await cleanup_redis(prefix)
        for database in (empty, full):
            await pg_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    uvloop.install()
    sys.exit(asyncio.run(main(parser.parse_args())))
