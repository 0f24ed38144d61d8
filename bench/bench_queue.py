"""Queue benchmark: agentsched (tracked on PostgreSQL) side by side with dramatiq, taskiq, arq.

    pip install -e '.[dev,bench]'        # dramatiq, taskiq and taskiq-redis live in `bench`
    python bench/bench_queue.py [--jobs 10000] [--rounds 3] [--systems agentsched,dramatiq]
    python bench/bench_queue.py --quick  # 2,000 jobs, one round, 5 s idle: a smoke run

The same workload for every system (issue 16): a private redis-server on a free port,
flushed before each run; one worker process, the system's own CLI as a subprocess
(bench/peers/); no-op jobs; agentsched records every execution in a fresh PostgreSQL
database and counts as done only when N rows are `success` there. Measures:
  1. enqueue, one at a time: sequential awaited enqueues, no worker running;
  2. end to end: a ready worker, then N sequential enqueues, first enqueue -> last
     completion (the N-th finish as the worker recorded it; agentsched: SQL count = N);
  3. worker only: N queued, then the worker starts; N / (N-th finish - first start);
  4. pickup: one stamp job at a time to an idle worker, which records the time from its
     enqueue to its start; p50 / p99;
  5. CPU per job of each process (bench, worker, redis-server, PostgreSQL) end to end;
  6. CPU of an idle worker, % of one core.
Rounds are interleaved (round 1 of every system, then round 2...) and reported as
medians, ratios as the median of the per-round ratios: the machine is shared, so only
ratios within one run mean much. Exit code 1 if a target of issue 16 is missed.

`bench_tracked`, `cleanup_redis` and `REDIS_URL` are bench/bench_faults.py's: an
in-process burst worker on the shared Redis, kept for it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis
import uvloop
from arq.worker import create_worker
from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agentsched import TaskQueue
from agentsched.db.models import TaskExecution
from agentsched.jobs.runtime import Runtime
from agentsched.settings import Settings
from agentsched.worker import build_worker_settings
from bench.common import PG_ADMIN, REDIS_URL, pg_admin, verdict
from bench.harness import Bench, Round, one_round
from bench.peers import SYSTEMS, load
from bench.peers.common import REDIS_ENV
from bench.peers.driver import Driver
from bench.peers.processes import Worker
from tests.redis_servers import PrivateRedis

PG_DB = f"agentsched_bench_{os.getpid()}"


async def cleanup_redis(prefix: str) -> None:
    """Delete a bench's keys (and arq's) from the shared Redis at REDIS_URL."""
    client = aioredis.Redis.from_url(REDIS_URL)
    keys = [k async for k in client.scan_iter(match=prefix + "*", count=1000)]
    keys += [k async for k in client.scan_iter(match="arq:*", count=1000)]
    for i in range(0, len(keys), 1000):
        await client.delete(*keys[i : i + 1000])
    await client.aclose()


async def bench_tracked(n: int, settings: Settings) -> float:
    """jobs/s of N no-ops through an in-process burst worker, until all are `success` in SQL."""
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


def med(rounds: list[Round], metric: str) -> float:
    return statistics.median(getattr(r, metric) for r in rounds)


def print_round(number: int, name: str, r: Round) -> None:
    print(
        f"round {number} {name:<10} enqueue {r.enqueue:6.0f}/s  e2e {r.e2e:6.0f}/s  "
        f"worker-only {r.worker_only:6.0f}/s  pickup {r.p50:.1f}/{r.p99:.1f} ms  "
        f"worker CPU {r.cpu['worker']:.2f} ms/job  idle {r.idle:.1f}% of a core",
        flush=True,
    )


def print_tables(results: dict[str, list[Round]], n: int) -> None:
    names = list(results)

    def row(label: str, show: Callable[[list[Round]], str]) -> None:
        print(f"| {label} | " + " | ".join(show(results[s]) for s in names) + " |")

    def cpu(part: str) -> Callable[[list[Round]], str]:
        return lambda rounds: f"{statistics.median(r.cpu[part] for r in rounds):.3f}"

    print(f"\n== medians of {len(results[names[0]])} round(s), {n:,} no-op jobs")
    print("| | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names))
    row("enqueue, one at a time (jobs/s)", lambda r: f"{med(r, 'enqueue'):,.0f}")
    row("end to end: first enqueue → last completion (jobs/s)", lambda r: f"{med(r, 'e2e'):,.0f}")
    row(
        f"worker only: {n:,} queued, then the worker starts (jobs/s)",
        lambda r: f"{med(r, 'worker_only'):,.0f}",
    )
    row(
        "enqueue → start, idle worker, p50 / p99 (ms)",
        lambda r: f"{med(r, 'p50'):.1f} / {med(r, 'p99'):.1f}",
    )
    row("worker CPU per job (ms)", lambda r: f"{statistics.median(x.cpu['worker'] for x in r):.2f}")
    row("idle worker CPU (% of one core)", lambda r: f"{med(r, 'idle'):.1f}")
    row("idle redis-server CPU (% of one core)", lambda r: f"{med(r, 'redis_idle'):.1f}")
    row("worker RSS after the pickup run (MiB)", lambda r: f"{med(r, 'rss'):.0f}")

    print("\n== where the CPU of one job goes, end to end (ms per job, medians)")
    print("| process | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names))
    row("producer (the bench process: enqueues, waiting)", cpu("producer"))
    row("worker (the CLI process and its children)", cpu("worker"))
    row("redis-server (private)", cpu("redis"))
    row("PostgreSQL (whole cluster*)", cpu("postgres"))
    row("total", lambda r: f"{statistics.median(sum(x.cpu.values()) for x in r):.3f}")
    print(
        "* every `postgres` process of the cluster, so other users' queries count too; for\n"
        "  agentsched the producer and PostgreSQL rows include the bench's SQL count every 20 ms."
    )


def ratio(a: list[Round], b: list[Round], metric: str) -> float:
    """Median of the per-round ratios: each pair ran minutes apart, not a run apart."""
    return statistics.median(
        getattr(x, metric) / getattr(y, metric) for x, y in zip(a, b, strict=True)
    )


def verdicts(results: dict[str, list[Round]]) -> int:
    """Issue 16's targets that this run can judge; the number missed."""
    print("\n== issue 16 targets (agentsched against the peers, in this run)")
    ours = results.get("agentsched")
    if ours is None:
        print("agentsched not run: no targets to judge")
        return 0
    checks: list[tuple[str, bool]] = []
    if (dramatiq := results.get("dramatiq")) is not None:
        for metric, label in (
            ("e2e", "end to end"),
            ("worker_only", "worker only"),
            ("enqueue", "enqueue one at a time"),
        ):
            value = ratio(ours, dramatiq, metric)
            checks.append((f"{label}: {value:.2f}x dramatiq   target >= 1.00x", value >= 1.0))
    if (taskiq := results.get("taskiq")) is not None:
        p50, theirs = med(ours, "p50"), med(taskiq, "p50")
        checks.append(
            (f"pickup p50: {p50:.2f} ms, taskiq {theirs:.2f} ms   target <= taskiq", p50 <= theirs)
        )
    p50, p99 = med(ours, "p50"), med(ours, "p99")
    checks.append(
        (f"pickup p99: {p99:.1f} ms = {p99 / p50:.1f}x p50   target <= 3x", p99 <= 3 * p50)
    )
    idle = med(ours, "idle")
    checks.append((f"idle worker: {idle:.1f}% of a core   target <= 1%", idle <= 1.0))
    if (arq := results.get("arq")) is not None:
        value = ratio(ours, arq, "e2e")
        checks.append(
            (f"tracked vs raw arq, end to end: {value:.2f}x   target >= 0.70x", value >= 0.7)
        )
    for text, ok in checks:
        print(f"{text:<70} {verdict(ok)}")
    return sum(not ok for _, ok in checks)


async def print_versions(drivers: list[Driver], redis: aioredis.Redis) -> None:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        pg = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    server = (await redis.info("server"))["redis_version"]
    print(f"python {platform.python_version()}, redis-server {server}, PostgreSQL {pg}, "
          f"redis-py {version('redis')}")  # fmt: skip
    for driver in drivers:
        print(f"  {driver.name}: {driver.versions()}")


async def run(args: argparse.Namespace, server: PrivateRedis, log_dir: Path) -> int:
    os.environ[REDIS_ENV] = server.url  # the peer modules build their brokers from it
    drivers = [load(name) for name in args.systems]
    assert server.proc is not None
    redis = aioredis.Redis.from_url(server.url)
    bench = Bench(
        server.url, redis, server.proc.pid, PG_DB, log_dir,
        args.jobs, args.enqueues, args.latency_jobs, args.idle_seconds,
    )  # fmt: skip
    await pg_admin(f'CREATE DATABASE "{PG_DB}"')
    try:
        await print_versions(drivers, redis)
        print(
            f"== {args.jobs} no-op jobs, one worker process, {args.rounds} interleaved round(s); "
            f"enqueues sequential (one awaited at a time), {args.enqueues} for the enqueue rate; "
            f"pickup over {args.latency_jobs} jobs; idle over {args.idle_seconds:g} s",
            flush=True,
        )
        results: dict[str, list[Round]] = {d.name: [] for d in drivers}
        for number in range(1, args.rounds + 1):
            for driver in drivers:
                result = await one_round(bench, driver, number)
                results[driver.name].append(result)
                print_round(number, driver.name, result)
        print_tables(results, args.jobs)
        return 1 if verdicts(results) else 0
    finally:
        Worker.stop_all()
        await redis.aclose()
        await pg_admin(f'DROP DATABASE IF EXISTS "{PG_DB}" WITH (FORCE)')


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, help="N no-op jobs per run (10000)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (3)")
    parser.add_argument("--enqueues", type=int, help="jobs of the enqueue rate (10000)")
    parser.add_argument("--latency-jobs", type=int, help="stamp jobs of the pickup (300)")
    parser.add_argument("--idle-seconds", type=float, help="idle-CPU window (30)")
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"comma-separated subset of {','.join(SYSTEMS)}",
    )
    parser.add_argument(
        "--quick", action="store_true", help="jobs 2000, rounds 1, idle 5 s, latency 100"
    )
    args = parser.parse_args()
    defaults = (
        {"jobs": 2000, "rounds": 1, "enqueues": 2000, "latency_jobs": 100, "idle_seconds": 5}
        if args.quick
        else {
            "jobs": 10_000,
            "rounds": 3,
            "enqueues": 10_000,
            "latency_jobs": 300,
            "idle_seconds": 30,
        }
    )
    for name, value in defaults.items():
        if getattr(args, name) is None:  # an explicit option wins over --quick
            setattr(args, name, value)
    if min(args.jobs, args.rounds, args.enqueues, args.latency_jobs, args.idle_seconds) <= 0:
        parser.error("--jobs, --rounds, --enqueues, --latency-jobs, --idle-seconds must be > 0")
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if unknown := set(args.systems) - set(SYSTEMS):
        parser.error(f"unknown system(s): {', '.join(sorted(unknown))}")
    return args


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-queue-") as tmp:
        server = PrivateRedis(Path(tmp) / "redis").start()
        try:
            return uvloop.run(run(args, server, Path(tmp)))
        finally:
            Worker.stop_all()  # also on Ctrl-C, before the Redis they use goes away
            server.kill()


if __name__ == "__main__":
    sys.exit(main())
