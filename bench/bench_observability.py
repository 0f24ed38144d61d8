"""Observability benchmark: the cost of metrics and tracing on the queue, and a scrape.

    python bench/bench_observability.py [--jobs 5000] [--rounds 5]

Measures, in one run:
  1. queue throughput with observability off (AGENTSCHED_METRICS_ENABLED=false,
     AGENTSCHED_TRACING=false), with metrics on (counting, a metrics port served) and
     with metrics plus tracing (an SDK provider whose batch processor feeds an exporter
     that drops everything, bench/otel_drop.py, in the producer and in the worker), as a
     deployment runs: the bench's client enqueues, one worker process
     (`python -m arq agentsched.WorkerSettings`) runs the jobs and records each in
     PostgreSQL, on a private redis-server (bench/harness.py, as bench/bench_queue.py):
       - worker only: N queued, then the worker starts; N / (N-th success row in SQL -
         first start);
       - end to end: a ready worker, N sequential enqueues, first enqueue -> N-th
         success row; with the CPU per job of the producer and of the worker;
     ratios against "off", the median of per-round ratios over rounds that rotate the
     order; a second "off" variant, the A/A control, shows how far the machine's noise
     alone moves such a ratio in the same run;
  2. a scrape of a worker with 100 functions registered (each having run, so every
     function has its series): HTTP GET of its metrics port, p50 / p99, and the
     rendering alone (agentsched's renderer and prometheus-client's, for reference).
Targets (issue 13): throughput with metrics >= 0.97x, with tracing >= 0.9x (worker
only and end to end), scrape < 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis
import uvloop
from arq.worker import create_worker
from prometheus_client import REGISTRY, generate_latest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agentsched import TaskQueue, task
from agentsched.observability import metrics, tracing
from agentsched.settings import Settings, load_settings
from agentsched.worker import build_worker_settings
from bench import otel_drop
from bench.common import pg_admin, pg_url, verdict
from bench.harness import Bench, end_to_end, worker_only
from bench.peers.agentsched_peer import AgentschedDriver
from bench.peers.processes import Worker
from tests.redis_servers import PrivateRedis

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
PG_DB = f"agentsched_bench_obs_{os.getpid()}"
POLL = 0.002
FUNCTIONS = 100
TARGETS = {"metrics": 0.97, "tracing": 0.9}


async def cleanup_redis(prefix: str) -> None:
    """Delete this run's keys only (other benchmarks may share the database)."""
    client = aioredis.Redis.from_url(REDIS_URL)
    keys = [k async for k in client.scan_iter(match=prefix + "*", count=1000)]
    for i in range(0, len(keys), 1000):
        await client.delete(*keys[i : i + 1000])
    await client.aclose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def variants() -> list[AgentschedDriver]:
    """off, metrics, tracing: the same worker and client, told apart by their settings."""
    return [
        AgentschedDriver("off", metrics_enabled=False, tracing=False),
        # "off" again: the A/A control, how far the machine's noise alone moves a ratio.
        AgentschedDriver("off-again", metrics_enabled=False, tracing=False),
        AgentschedDriver("metrics", metrics_enabled=True, tracing=False,
                         metrics_port=free_port()),
        AgentschedDriver("tracing", env={otel_drop.ENV: "drop"}, metrics_enabled=True,
                         tracing=True, metrics_port=free_port()),
    ]  # fmt: skip


async def throughput(args: argparse.Namespace, log_dir: Path) -> int:
    """Rounds of worker-only and end-to-end runs of each variant; prints ratios, returns
    the number of targets missed."""
    server = PrivateRedis(log_dir / "redis").start()
    redis = aioredis.Redis.from_url(server.url)
    assert server.proc is not None
    bench = Bench(server.url, redis, server.proc.pid, PG_DB, log_dir, args.jobs, 0, 0, 0)
    drivers = variants()
    rates: dict[str, dict[str, list[float]]] = {d.name: {"drain": [], "e2e": []} for d in drivers}
    cpus: dict[str, dict[str, list[float]]] = {
        d.name: {"producer": [], "worker": []} for d in drivers
    }
    try:
        for round_ in range(args.rounds):
            shift = round_ % len(drivers)  # no variant always first
            order = drivers[shift:] + drivers[:shift]
            line = []
            for driver in order:
                tag = f"{driver.name}-{round_}"
                drain = await worker_only(bench, driver, f"{tag}-drain")
                e2e, cpu = await end_to_end(bench, driver, f"{tag}-e2e")
                rates[driver.name]["drain"].append(drain)
                rates[driver.name]["e2e"].append(e2e)
                for part in ("producer", "worker"):
                    cpus[driver.name][part].append(cpu[part] * 1000)
                line.append(f"{driver.name} drain {drain:5.0f} e2e {e2e:5.0f} jobs/s "
                            f"(CPU/job µs: producer {cpu['producer'] * 1000:3.0f}, "
                            f"worker {cpu['worker'] * 1000:3.0f})")  # fmt: skip
            print(f"round {round_ + 1}: " + "; ".join(line), flush=True)
    finally:
        Worker.stop_all()
        await redis.aclose()
        server.kill()
    def median_ratio(name: str, kind: str, base: str = "off") -> float:
        pairs = zip(rates[name][kind], rates[base][kind], strict=True)
        return statistics.median(on / off for on, off in pairs)

    control = [median_ratio("off-again", kind) for kind in ("drain", "e2e")]
    print(f"A/A control, off-again vs off (no difference but the machine's noise): "
          f"worker only {control[0]:.3f}x, end to end {control[1]:.3f}x")  # fmt: skip
    failures = 0
    for name, target in TARGETS.items():
        for kind, label in (("drain", "worker only"), ("e2e", "end to end")):
            ratio = median_ratio(name, kind)
            ok = ratio >= target
            failures += not ok
            print(f"{name} on vs off, {label}: median ratio {ratio:.3f}x   "
                  f"target >= {target}x   {verdict(ok)}")  # fmt: skip
        for part in ("producer", "worker"):
            on, off = statistics.median(cpus[name][part]), statistics.median(cpus["off"][part])
            print(f"  {part} CPU per job: {on:.0f} vs {off:.0f} µs (+{on - off:.0f} µs), "
                  f"jobs per CPU-second {off / on:.3f}x")  # fmt: skip
    # The tracing variant counts metrics too: its spans alone, against metrics only.
    own = [median_ratio("tracing", kind, base="metrics") for kind in ("drain", "e2e")]
    print(f"  (tracing vs metrics only: worker only {own[0]:.3f}x, end to end {own[1]:.3f}x)")
    return failures


def register_functions() -> list[str]:
    names = []
    for i in range(FUNCTIONS):

        async def job() -> None:
            return None

        job.__qualname__ = job.__name__ = f"f{i:03d}"
        names.append(f"bench.obs.f{i:03d}")
        task(name=names[-1])(job)
    return names


async def scrape_times(settings: Settings, names: list[str], scrapes: int) -> list[float]:
    port = free_port()
    s = settings.model_copy(
        update={"metrics_port": port, "app": "bench-scrape", "metrics_enabled": True}
    )
    metrics.configure(True)
    tracing.configure(False)
    worker = create_worker(build_worker_settings(s), handle_signals=False)
    running = asyncio.create_task(worker.async_run())
    try:
        async with TaskQueue(s) as queue:
            executions = [await queue.enqueue(name) for name in names for _ in range(2)]
            for execution in executions:
                await queue.get_result(execution.id, timeout=30)
        times = []
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            first = await client.get("/metrics")
            series = sum(1 for line in first.text.splitlines() if not line.startswith("#"))
            assert 'function="bench.obs.f099"' in first.text
            cpu = time.process_time()
            for _ in range(scrapes):
                start = time.perf_counter()
                response = await client.get("/metrics")
                times.append((time.perf_counter() - start) * 1000)
                assert response.status_code == 200
            cpu_ms = (time.process_time() - cpu) * 1000 / scrapes
            # Wall time moves with the machine's load; CPU time much less.
            print(f"process CPU per scrape (server and client, idle worker included): "
                  f"{cpu_ms:.1f} ms")  # fmt: skip
            # The text alone, after the scrapes (its garbage must not land in their GC).
            render = [timed(metrics.render) for _ in range(scrapes)]
            reference = [timed(lambda: generate_latest(REGISTRY)) for _ in range(10)]
            print(f"rendering alone (no HTTP, Redis gauges included): p50 "
                  f"{statistics.median(render):.1f} ms; prometheus-client's generate_latest "
                  f"{statistics.median(reference):.1f} ms")  # fmt: skip
        print(f"{len(names)} functions registered and run, {series} samples per scrape")
        return times
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await running
        await worker.close()


def timed(call: Any) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(args: argparse.Namespace) -> int:
    from bench import bench_tasks  # noqa: F401  registers bench.noop

    names = register_functions()
    # The bench's Redis has no persistence on purpose: not a warning per worker here.
    logging.getLogger("agentsched.redis").setLevel(logging.ERROR)
    provider = otel_drop.install()  # the producer's spans (the "tracing" variant only)
    await pg_admin(f'CREATE DATABASE "{PG_DB}"')
    failures = 0
    # How busy the shared machine is: compare runs of this benchmark by this line too.
    reference = min(timeit.repeat("sum(range(10**6))", number=3, repeat=5)) / 3 * 1000
    print(f"machine speed: sum(range(10**6)) takes {reference:.0f} ms")
    try:
        if args.jobs:
            print(f"== queue throughput: {args.jobs} no-op jobs, one worker process, "
                  f"{args.rounds} rounds")  # fmt: skip
            with tempfile.TemporaryDirectory(prefix="bench-obs-") as tmp:
                failures += await throughput(args, Path(tmp))

        print(f"== scrape of a worker with {FUNCTIONS} functions, {args.scrapes} scrapes")
        prefix = f"bench:{os.urandom(4).hex()}:"
        base = load_settings(
            redis_url=REDIS_URL,
            redis_prefix=prefix,
            app="bench",
            poll_delay=POLL,
            database_url=pg_url(PG_DB),
            task_modules=["bench.bench_tasks"],
            scheduler_enabled=False,
            metrics_enabled=False,
            tracing=False,
        )
        try:
            times = await scrape_times(base, names, args.scrapes)
        finally:
            await cleanup_redis(prefix)
        p50, p99 = statistics.median(times), pct(times, 0.99)
        ok = p99 < 50
        failures += not ok
        print(f"p50 {p50:.1f} ms  p99 {p99:.1f} ms   target < 50 ms   {verdict(ok)}")
    finally:
        provider.shutdown()
        await pg_admin(f'DROP DATABASE IF EXISTS "{PG_DB}" WITH (FORCE)')
    return 1 if failures else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scrapes", type=int, default=50)
    uvloop.install()
    sys.exit(asyncio.run(main(parser.parse_args())))
