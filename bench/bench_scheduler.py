"""Scheduler benchmark: how late fire times are enqueued, and what one loop costs.

    python bench/bench_scheduler.py [--seconds 20] [--schedules 1000]

1. A handful of 1 s interval schedules through one `SchedulerService` (default tick):
   lag = the execution's `enqueued_at` minus its `scheduled_for`, p50 / p99.
2. 1,000 schedules at 1 s intervals, all due on the same second boundary (the worst
   case: one tick claims and enqueues 1,000 fire times), through one loop for ~20 s:
   lag p50 / p99, missing and duplicate fire times, and the loop's CPU
   (process time / wall time of a process running nothing else).
No worker consumes the jobs, so lag is the scheduler's alone. Uses its own Redis key
prefix on DB 9 and its own PostgreSQL database, both removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import statistics
import sys
import time
import uuid
from itertools import pairwise
from pathlib import Path

import redis.asyncio as aioredis
from sqlalchemy import update

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agentsched.db.schedules import T
from agentsched.jobs.runtime import Runtime
from agentsched.registry import import_task_modules
from agentsched.scheduling.service import Scheduler, SchedulerService
from agentsched.settings import load_settings
from bench.common import pg_admin, pg_url, verdict

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")
PG_DB = f"agentsched_bench_sched_{os.getpid()}"
PREFIX = f"bench-sched:{uuid.uuid4().hex[:8]}:"


def pct(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def align(runtime: Runtime, app: str, at: dt.datetime) -> None:
    """Make every schedule of `app` due at the same instant (the worst case)."""
    async with runtime.engine.begin() as conn:
        await conn.execute(update(T).where(T.c.app == app).values(next_run_at=at))


async def collect(runtime: Runtime, app: str) -> tuple[list[int], dict[str, list[int]]]:
    """Lag in ms of every queued fire time of `app`, and the fire times per schedule."""
    ids = [i.decode() for i in await runtime.redis.zrange(f"{PREFIX}queue:{app}", 0, -1)]
    lag: list[int] = []
    fires: dict[str, list[int]] = {}
    for start in range(0, len(ids), 1000):
        async with runtime.redis.pipeline(transaction=False) as pipe:
            for ident in ids[start : start + 1000]:
                pipe.hmget(f"{PREFIX}x:{ident}", ["task_id", "enqueued_at", "scheduled_for"])
            rows = await pipe.execute()
        for task_id, enqueued, scheduled in rows:
            fires.setdefault(task_id.decode(), []).append(int(scheduled))
            lag.append(int(enqueued) - int(scheduled))
    return lag, fires


def gaps_report(fires: dict[str, list[int]]) -> tuple[int, int]:
    """(missing, duplicate) fire times over every schedule's queued fire times."""
    missing = duplicate = 0
    for times in fires.values():
        ordered = sorted(times)
        duplicate += len(ordered) - len(set(ordered))
        missing += sum((b - a) // 1000 - 1 for a, b in pairwise(ordered) if b > a)
    return missing, duplicate


async def run_loop(runtime: Runtime, app: str, seconds: float) -> tuple[float, float]:
    """Run one loop for `seconds`; returns (wall, cpu) seconds."""
    service = SchedulerService(runtime, app=app)
    wall, cpu = time.perf_counter(), time.process_time()
    await service.start()
    await asyncio.sleep(seconds)
    await service.stop()
    return time.perf_counter() - wall, time.process_time() - cpu


async def create(runtime: Runtime, app: str, count: int) -> None:
    scheduler = Scheduler(runtime, app=app)
    for i in range(count):
        await scheduler.create({"name": f"s{i:04d}", "function": "tests.noop", "interval": 1,
                                "overlap": "allow"})  # fmt: skip


async def cleanup(runtime: Runtime, apps: list[str]) -> None:
    for app in apps:  # arq's job keys live outside our prefix
        ids = [i.decode() for i in await runtime.redis.zrange(f"{PREFIX}queue:{app}", 0, -1)]
        for start in range(0, len(ids), 1000):
            await runtime.redis.delete(*[f"arq:job:{i}" for i in ids[start : start + 1000]])
    client = aioredis.Redis.from_url(REDIS_URL)
    keys = [k async for k in client.scan_iter(match=PREFIX + "*", count=1000)]
    for start in range(0, len(keys), 1000):
        await client.delete(*keys[start : start + 1000])
    await client.aclose()


async def main(args: argparse.Namespace) -> int:
    import_task_modules(["tests.sample_tasks"])
    await pg_admin(f'CREATE DATABASE "{PG_DB}"')
    settings = load_settings(redis_url=REDIS_URL, database_url=pg_url(PG_DB),
                             app="bench-few", redis_prefix=PREFIX)  # fmt: skip
    ok = True
    runtime = await Runtime(settings).open()
    try:
        start = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=2)
        await create(runtime, "bench-few", 5)
        await align(runtime, "bench-few", start)
        await run_loop(runtime, "bench-few", args.few_seconds)
        few, _ = await collect(runtime, "bench-few")
        p50, p99 = statistics.median(few), pct(few, 0.99)
        good = p99 <= 250
        ok &= good
        print(f"== 5 schedules, 1 s interval, {args.few_seconds:.0f} s, one loop "
              f"({len(few)} fire times)")  # fmt: skip
        print(f"tick lag p50 {p50:.0f} ms  p99 {p99:.0f} ms (target p99 <= 250 ms)  "
              f"{verdict(good)}")  # fmt: skip

        made = time.perf_counter()
        await create(runtime, "bench-many", args.schedules)
        made = time.perf_counter() - made
        start = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=2)
        await align(runtime, "bench-many", start)
        wall, cpu = await run_loop(runtime, "bench-many", args.seconds)
        many, fires = await collect(runtime, "bench-many")
        missing, duplicate = gaps_report(fires)
        p50, p99 = statistics.median(many), pct(many, 0.99)
        expected = args.schedules * int(args.seconds - 2)
        print(f"== {args.schedules} schedules, 1 s interval, all due on the same second, "
              f"{args.seconds:.0f} s, one loop (created in {made:.1f} s)")  # fmt: skip
        good = p99 <= 1000
        print(f"lag p50 {p50:.0f} ms  p99 {p99:.0f} ms (target p99 <= 1000 ms)  {verdict(good)}")
        ok &= good
        fired = len(many)
        good = missing == 0 and duplicate == 0 and fired >= expected
        print(f"fire times enqueued {fired} (>= {expected} expected), missing {missing}, "
              f"duplicate {duplicate} (target 0 / 0)  {verdict(good)}")  # fmt: skip
        ok &= good
        share = cpu / wall
        good = share <= 0.5
        print(f"loop CPU {share * 100:.0f}% of one core ({cpu:.1f} s CPU in {wall:.1f} s) "
              f"(target <= 50%)  {verdict(good)}")  # fmt: skip
        ok &= good
    finally:
        await cleanup(runtime, ["bench-few", "bench-many"])
        await runtime.close()
        await pg_admin(f'DROP DATABASE IF EXISTS "{PG_DB}" WITH (FORCE)')
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--few-seconds", type=float, default=10.0)
    parser.add_argument("--schedules", type=int, default=1000)
    try:
        import uvloop  # what the worker runs on
    except ImportError:  # pragma: no cover - uvloop is not on Windows
        raise SystemExit(asyncio.run(main(parser.parse_args()))) from None
    raise SystemExit(uvloop.run(main(parser.parse_args())))
