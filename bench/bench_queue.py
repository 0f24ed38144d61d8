"""Queue benchmark: agentsched (tracked on PostgreSQL) against raw arq, in one run.

    python bench/bench_queue.py [--jobs 10000] [--latency-jobs 500]

Measures, against the same Redis and PostgreSQL and with the same poll delay:
  1. end-to-end throughput of N no-op jobs through one worker (raw arq vs agentsched,
     agentsched counted until every row is `success` in PostgreSQL; with
     --same-connections also raw arq on agentsched's faster Redis connection class, to
     show the cost of tracking alone);
  2. a single awaited enqueue (arq's `enqueue_job` vs `TaskQueue.enqueue`);
  3. enqueue-to-start latency of sequential jobs to an idle `arq agentsched.WorkerSettings`
     subprocess with default settings (p50 / p99), and that worker's memory.
Prints ratios against the baseline measured in the same run (the machine is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import uvloop
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.worker import Worker, create_worker
from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agentsched import TaskQueue
from agentsched.connections import connection_pool
from agentsched.db.models import TaskExecution
from agentsched.jobs.runtime import Runtime
from agentsched.settings import Settings, load_settings
from agentsched.worker import build_worker_settings
from bench.common import pg_admin, pg_url, verdict

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
PG_DB = f"agentsched_bench_{os.getpid()}"
POLL = 0.002


async def raw_noop(ctx: dict[str, Any]) -> None:
    return None


async def cleanup_redis(prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL)
    keys = [k async for k in client.scan_iter(match=prefix + "*", count=1000)]
    keys += [k async for k in client.scan_iter(match="arq:*", count=1000)]
    for i in range(0, len(keys), 1000):
        await client.delete(*keys[i : i + 1000])
    await client.aclose()


async def bench_raw_arq(n: int, queue_name: str, fast_connections: bool = False) -> float:
    """Raw arq; with `fast_connections`, on agentsched's connection class (for reference)."""
    pool = await create_pool(RedisSettings.from_dsn(REDIS_URL), default_queue_name=queue_name)
    for i in range(0, n, 500):
        await asyncio.gather(*(pool.enqueue_job("raw_noop") for _ in range(min(500, n - i))))
    settings: dict[str, Any] = {
        "functions": [raw_noop],
        "queue_name": queue_name,
        "poll_delay": POLL,
        "burst": True,
        "redis_settings": RedisSettings.from_dsn(REDIS_URL),
        "handle_signals": False,
        "keep_result": 0,
    }
    if fast_connections:
        settings["redis_pool"] = ArqRedis(connection_pool=connection_pool(REDIS_URL))
    worker: Worker = create_worker(settings)
    start = time.perf_counter()
    await worker.async_run()
    elapsed = time.perf_counter() - start
    assert worker.jobs_complete == n, worker.jobs_complete
    await worker.close()
    await pool.aclose()
    return n / elapsed


async def bench_tracked(n: int, settings: Settings) -> float:
    async with TaskQueue(settings) as queue:
        for i in range(0, n, 500):
            await asyncio.gather(*(queue.enqueue("bench.noop") for _ in range(min(500, n - i))))
    async with Runtime(settings) as runtime:
        worker = create_worker(build_worker_settings(settings), burst=True, handle_signals=False)
        start = time.perf_counter()
        await worker.async_run()
        await worker.close()  # on_shutdown drains the recorder into SQL
        async with runtime.engine.connect() as conn:
            done = await conn.scalar(
                select(func.count())
                .select_from(TaskExecution)
                .where(TaskExecution.app == settings.app, TaskExecution.status == "success")
            )
        elapsed = time.perf_counter() - start
    assert done == n, f"only {done} of {n} rows are success in SQL"
    return n / elapsed


async def bench_enqueue(n: int, settings: Settings, queue_name: str) -> tuple[float, float]:
    pool = await create_pool(RedisSettings.from_dsn(REDIS_URL), default_queue_name=queue_name)
    start = time.perf_counter()
    for _ in range(n):
        await pool.enqueue_job("raw_noop")
    raw = n / (time.perf_counter() - start)
    await pool.aclose()
    async with TaskQueue(settings) as queue:
        start = time.perf_counter()
        for _ in range(n):
            await queue.enqueue("bench.noop")
        ours = n / (time.perf_counter() - start)
    return raw, ours


def rss_kib(pid: int) -> tuple[int, int]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


async def bench_latency(n: int, settings: Settings) -> tuple[list[float], tuple[int, int]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSCHED_")}
    env.update(
        AGENTSCHED_REDIS_URL=settings.redis_url,
        AGENTSCHED_DATABASE_URL=settings.database_url,
        AGENTSCHED_APP=settings.app,
        AGENTSCHED_REDIS_PREFIX=settings.redis_prefix,
        AGENTSCHED_TASK_MODULES="bench.bench_tasks",
        PYTHONPATH=str(ROOT),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "arq", "agentsched.WorkerSettings"], cwd=ROOT, env=env
    )
    latencies: list[float] = []
    try:
        async with TaskQueue(settings) as queue:
            first = await queue.enqueue("bench.noop")
            await queue.get_result(first.id, timeout=30)  # worker is up
            for _ in range(n):
                execution = await queue.enqueue("bench.noop")
                await queue.get_result(execution.id, timeout=10)
                record = await queue.get_execution(execution.id)
                assert record.started_at and record.enqueued_at
                latencies.append((record.started_at - record.enqueued_at).total_seconds() * 1000)
                await asyncio.sleep(0.01)  # idle worker between jobs
        memory = rss_kib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    return latencies, memory


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(args: argparse.Namespace) -> int:
    from bench import bench_tasks  # noqa: F401  registers bench.noop

    await pg_admin(f'CREATE DATABASE "{PG_DB}"')
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    settings = load_settings(
        redis_url=REDIS_URL,
        redis_prefix=prefix,
        app="bench",
        poll_delay=POLL,
        database_url=pg_url(PG_DB),
        task_modules=["bench.bench_tasks"],
        scheduler_enabled=False,
    )
    failures = 0
    try:
        print(f"== throughput: {args.jobs} no-op jobs, one worker, poll {POLL * 1000:.0f} ms")
        # Alternating rounds, median ratio: the machine is shared and load comes in bursts.
        ratios, same = [], []
        for round_ in range(args.rounds):
            raw = await bench_raw_arq(args.jobs, prefix + "rawq")
            tracked = await bench_tracked(
                args.jobs, settings.model_copy(update={"app": f"bench{round_}"})
            )
            ratios.append(tracked / raw)
            print(
                f"round {round_ + 1}: raw arq {raw:6.0f} jobs/s, agentsched tracked "
                f"{tracked:6.0f} jobs/s (rows success in PostgreSQL): {tracked / raw:.2f}x"
            )
            if args.same_connections:
                fast = await bench_raw_arq(args.jobs, prefix + "rawq", fast_connections=True)
                same.append(tracked / fast)
                print(
                    f"         raw arq on agentsched's connections {fast:6.0f} jobs/s: "
                    f"tracked {tracked / fast:.2f}x of it (for reference)"
                )
        ratio = statistics.median(ratios)
        ok = ratio >= 0.7
        failures += not ok
        print(f"median ratio {ratio:.2f}x   target >= 0.70x   {verdict(ok)}")
        if same:
            print(f"median ratio to raw arq on the same connections {statistics.median(same):.2f}x")

        print(f"== single awaited enqueue, {args.enqueues} sequential")
        raw_e, ours_e = await bench_enqueue(args.enqueues, settings, prefix + "rawq2")
        ok = ours_e / raw_e >= 0.5
        failures += not ok
        print(f"arq enqueue_job    {raw_e:8.0f} /s")
        print(f"TaskQueue.enqueue  {ours_e:8.0f} /s")
        print(f"ratio {ours_e / raw_e:.2f}x   target >= 0.50x   {verdict(ok)}")

        print(f"== enqueue-to-start, {args.latency_jobs} sequential jobs, idle worker subprocess")
        lat, (rss, hwm) = await bench_latency(args.latency_jobs, settings)
        p50, p99 = statistics.median(lat), pct(lat, 0.99)
        ok = p50 <= 10 and p99 <= 30
        failures += not ok
        print(f"p50 {p50:.1f} ms (target <= 10)  p99 {p99:.1f} ms (target <= 30)  {verdict(ok)}")
        print(f"worker memory: RSS {rss / 1024:.1f} MiB, peak {hwm / 1024:.1f} MiB")
    finally:
        await cleanup_redis(prefix)
        await pg_admin(f'DROP DATABASE IF EXISTS "{PG_DB}" WITH (FORCE)')
    return 1 if failures else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--enqueues", type=int, default=2_000)
    parser.add_argument("--latency-jobs", type=int, default=500)
    parser.add_argument(
        "--same-connections",
        action="store_true",
        help="also run raw arq on agentsched's Redis connection class, for reference",
    )
    uvloop.install()
    sys.exit(asyncio.run(main(parser.parse_args())))
