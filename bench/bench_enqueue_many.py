"""`enqueue_many` against one-at-a-time `enqueue`, in one run.

    python bench/bench_enqueue_many.py [--jobs 1000] [--rounds 3]

For N jobs (no worker running), against the same Redis and PostgreSQL: N sequential
awaited `TaskQueue.enqueue` calls, then one `TaskQueue.enqueue_many` of N items, in
the default mode and in durable mode (rows committed in SQL before the call returns).
Prints jobs/s and the ratio; target >= 10x for 1,000 jobs in both modes.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agentsched import TaskQueue
from agentsched.settings import Settings
from bench.bench_queue import cleanup_redis
from bench.common import bench_settings, pg_admin, verdict

PG_DB = f"agentsched_bench_many_{uuid.uuid4().hex[:6]}"
TARGET = 10.0


async def rates(settings: Settings, n: int) -> tuple[float, float]:
    """(one at a time, enqueue_many) in jobs/s."""
    async with TaskQueue(settings) as queue:
        await queue.enqueue("bench.noop")  # connections and scripts warm
        start = time.perf_counter()
        for _ in range(n):
            await queue.enqueue("bench.noop")
        single = n / (time.perf_counter() - start)
        items = [{"function": "bench.noop"} for _ in range(n)]
        start = time.perf_counter()
        done = await queue.enqueue_many(items)
        many = n / (time.perf_counter() - start)
        assert len(done) == n
    return single, many


async def main(args: argparse.Namespace) -> int:
    from bench import bench_tasks  # noqa: F401  registers bench.noop

    await pg_admin(f'CREATE DATABASE "{PG_DB}"')
    base = bench_settings(PG_DB, "many")
    prefix = base.redis_prefix
    failures = 0
    try:
        for durable in (False, True):
            mode = "durable" if durable else "default"
            ratios = []
            for i in range(args.rounds):
                settings = base.model_copy(update={"app": f"{mode}{i}", "durable_enqueue": durable})
                single, many = await rates(settings, args.jobs)
                ratios.append(many / single)
                print(
                    f"{mode:>7} round {i + 1}: enqueue {single:7.0f} jobs/s, "
                    f"enqueue_many {many:8.0f} jobs/s: {many / single:5.1f}x"
                )
            ratio = statistics.median(ratios)
            ok = ratio >= TARGET
            failures += not ok
            print(f"{mode:>7} median {ratio:.1f}x   target >= {TARGET:.0f}x   {verdict(ok)}")
    finally:
        await cleanup_redis(prefix)
        await pg_admin(f'DROP DATABASE IF EXISTS "{PG_DB}" WITH (FORCE)')
    return 1 if failures else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    uvloop.install()
    sys.exit(asyncio.run(main(parser.parse_args())))
