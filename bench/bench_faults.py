"""Redis-fault benchmark: what the fault handling costs, and how fast it heals.

    python bench/bench_faults.py [--jobs 3000] [--rounds 3] [--enqueues 2000]
                                 [--part throughput|durable|recovery]

In one run, against the same Redis and PostgreSQL:
  1. end-to-end throughput of N no-op jobs through one worker with the reconciler
     (period 1 s, so passes run during the drain and check the whole backlog) and
     without it: ratio, target >= 0.95x;
  2. durable enqueue against the default mode, 8 concurrent enqueuers and one
     sequential: ratios, target >= 0.5x for the concurrent ones;
  3. recovery times on private redis-servers: a worker resuming after Redis returns,
     one reconcile pass over 1,000 queued executions Redis lost, and a Sentinel
     failover to the first job that succeeds afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import uvloop
from arq.worker import create_worker

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agentsched import TaskQueue
from agentsched.jobs.reconciler import Reconciler
from agentsched.jobs.runtime import Runtime
from agentsched.serialization import now_ms
from agentsched.settings import Settings
from agentsched.worker import build_worker_settings
from bench.bench_queue import bench_tracked, cleanup_redis
from bench.common import bench_settings, pg_admin, verdict
from tests.redis_servers import PrivateRedis, SentinelGroup, wait_until

PG_DB = f"agentsched_bench_faults_{uuid.uuid4().hex[:6]}"


async def enqueue_rate(settings: Settings, n: int, concurrency: int) -> float:
    async with TaskQueue(settings) as queue:

        async def one_lane(count: int) -> None:
            for _ in range(count):
                await queue.enqueue("bench.noop")

        start = time.perf_counter()
        await asyncio.gather(*(one_lane(n // concurrency) for _ in range(concurrency)))
        return (n // concurrency * concurrency) / (time.perf_counter() - start)


async def run_until_done(settings: Settings, timeout: float = 60) -> float:
    """Seconds until one job enqueued now has succeeded (retrying while Redis is away)."""
    start = time.perf_counter()
    deadline = start + timeout
    while time.perf_counter() < deadline:
        try:
            async with TaskQueue(settings) as queue:
                execution = await queue.enqueue("bench.noop")
                left = max(1.0, deadline - time.perf_counter())
                await queue.get_result(execution.id, timeout=left)
                return time.perf_counter() - start
        except Exception:
            await asyncio.sleep(0.05)
    raise AssertionError("no job succeeded")


async def worker_task(settings: Settings) -> tuple[object, asyncio.Task[None]]:
    worker = create_worker(build_worker_settings(settings), handle_signals=False)
    return worker, asyncio.create_task(worker.async_run())


async def stop_worker(worker: object, task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await worker.close()  # type: ignore[attr-defined]


async def recovery_times(base: Settings, tmp: Path) -> None:
    server = PrivateRedis(tmp / "resume").start()
    settings = base.model_copy(update={"redis_url": server.url, "app": "resume"})
    worker, task = await worker_task(settings)
    try:
        await run_until_done(settings)
        server.stop()
        await asyncio.sleep(3)
        server.start()
        took = await run_until_done(settings)
        print(f"worker resume: first job done {took:.2f} s after Redis came back")
    finally:
        await stop_worker(worker, task)
        server.kill()

    server = PrivateRedis(tmp / "reconcile").start()
    settings = base.model_copy(
        update={"redis_url": server.url, "app": "reconcile", "durable_enqueue": True}
    )
    async with TaskQueue(settings) as queue:
        for _ in range(0, 1000, 100):
            await asyncio.gather(*(queue.enqueue("bench.noop") for _ in range(100)))
    server.client().flushdb()
    async with Runtime(settings) as runtime:
        tracker = runtime.tracker()
        await tracker.redis.set(
            f"{tracker.keys.prefix}reconcile-epoch:reconcile", now_ms() - 60_000
        )
        reconciler = Reconciler(runtime, tracker, owner="bench")
        reconciler.period = 0.0  # every row is old enough
        start = time.perf_counter()
        actions = await reconciler.reconcile_once()
        took = time.perf_counter() - start
    server.kill()
    print(f"reconcile of 1,000 lost queued executions: {took:.2f} s ({dict(actions)})")

    group = SentinelGroup(tmp / "sentinel").start()
    settings = base.model_copy(update={"redis_url": group.url, "app": "failover"})
    worker, task = await worker_task(settings)
    try:
        await run_until_done(settings)
        old = group.primary.port
        group.primary.kill()
        start = time.perf_counter()
        await asyncio.to_thread(
            wait_until, lambda: group.current_primary_port() != old, 30, "failover"
        )
        elected = time.perf_counter() - start
        took = await run_until_done(settings) + elected
        print(
            f"sentinel failover: new primary after {elected:.2f} s, first job done "
            f"{took:.2f} s after the primary was killed"
        )
    finally:
        await stop_worker(worker, task)
        group.stop()


async def main(args: argparse.Namespace) -> int:
    from bench import bench_tasks  # noqa: F401  registers bench.noop

    await pg_admin(f'CREATE DATABASE "{PG_DB}"')
    base = bench_settings(PG_DB, "bench", scheduler_enabled=False, lease_seconds=1.5)
    prefix = base.redis_prefix
    failures = 0
    try:
        parts = {args.part} if args.part else {"throughput", "durable", "recovery"}
        if "throughput" in parts:
            failures += await throughput(args, base)
        if "durable" in parts:
            failures += await durable(args, base)
        if "recovery" in parts:
            print("== recovery times (private redis-servers)")
            with tempfile.TemporaryDirectory() as tmp:
                await recovery_times(base, Path(tmp))
    finally:
        await cleanup_redis(prefix)
        await pg_admin(f'DROP DATABASE IF EXISTS "{PG_DB}" WITH (FORCE)')
    return 1 if failures else 0


async def throughput(args: argparse.Namespace, base: Settings) -> int:
    failures = 0
    print(f"== throughput with and without the reconciler: {args.jobs} no-op jobs")
    ratios = []
    for i in range(args.rounds):
        off = await bench_tracked(
            args.jobs, base.model_copy(update={"app": f"off{i}", "reconcile_seconds": 0})
        )
        on = await bench_tracked(
            args.jobs, base.model_copy(update={"app": f"on{i}", "reconcile_seconds": 1})
        )
        ratios.append(on / off)
        print(f"round {i + 1}: off {off:6.0f} jobs/s, on {on:6.0f} jobs/s: {on / off:.2f}x")
    ratio = statistics.median(ratios)
    failures += ratio < 0.95
    print(f"median {ratio:.2f}x   target >= 0.95x   {verdict(ratio >= 0.95)}")
    return failures


async def durable(args: argparse.Namespace, base: Settings) -> int:
    failures = 0
    print(f"== durable enqueue vs default, {args.enqueues} enqueues")
    for lanes, target in ((8, 0.5), (1, None)):
        rounds = []
        for i in range(args.rounds):
            plain = await enqueue_rate(
                base.model_copy(update={"app": f"e{lanes}{i}"}), args.enqueues, lanes
            )
            durable = await enqueue_rate(
                base.model_copy(update={"app": f"d{lanes}{i}", "durable_enqueue": True}),
                args.enqueues,
                lanes,
            )
            rounds.append(durable / plain)
            print(
                f"{lanes} enqueuer(s), round {i + 1}: default {plain:6.0f}/s, "
                f"durable {durable:6.0f}/s: {durable / plain:.2f}x"
            )
        ratio = statistics.median(rounds)
        if target is None:
            print(f"median {ratio:.2f}x (reported, no target)")
        else:
            failures += ratio < target
            print(f"median {ratio:.2f}x   target >= {target}x   {verdict(ratio >= target)}")
    return failures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--enqueues", type=int, default=2000)
    parser.add_argument("--part", choices=["throughput", "durable", "recovery"])
    uvloop.install()
    raise SystemExit(asyncio.run(main(parser.parse_args())))
