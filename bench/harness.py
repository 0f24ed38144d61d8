"""The measurements of bench/bench_queue.py, the same for every system.

Each run starts from a flushed private Redis and a fresh tag (agentsched's app), and
runs the system's own worker CLI as a subprocess (bench/peers/processes.py).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as aioredis

from bench.peers.common import STAMPS_KEY
from bench.peers.driver import Driver, Run, WorkerDied
from bench.peers.processes import (
    Worker,
    cpu_seconds,
    own_cpu,
    postgres_pids,
    rss_mib,
    tree,
)

CPU_PARTS = ("producer", "worker", "redis", "postgres")


@dataclass
class Bench:
    """What every run of the bench shares."""

    redis_url: str
    redis: aioredis.Redis
    redis_pid: int
    database: str
    log_dir: Path
    jobs: int
    enqueues: int
    latency_jobs: int
    idle_seconds: float


@dataclass
class Round:
    """One round of one system."""

    enqueue: float = 0.0  # jobs/s
    e2e: float = 0.0
    worker_only: float = 0.0
    p50: float = 0.0  # ms
    p99: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # ms per job, by process
    idle: float = 0.0  # % of one core
    redis_idle: float = 0.0
    rss: float = 0.0  # MiB, the worker and its children


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Session:
    """One run of one system: flushed Redis, a client open, at most one worker."""

    def __init__(self, bench: Bench, driver: Driver, tag: str, jobs: int) -> None:
        self.bench, self.driver = bench, driver
        self.run = Run(bench.redis_url, bench.redis, jobs, tag, bench.database)
        self.worker: Worker | None = None

    async def __aenter__(self) -> Session:
        await self.bench.redis.flushall()  # the private server's only: nothing else is on it
        await self.driver.open(self.run)
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self.worker is not None:
                self.worker.stop()
        finally:
            await self.driver.close()

    def start_worker(self) -> Worker:
        self.worker = Worker(self.driver, self.run, self.bench.log_dir)
        return self.worker

    def alive(self) -> bool:
        if self.worker is None or self.worker.alive():
            return True
        print(f"--- {self.worker.log} ---\n{self.worker.tail()}")
        return False

    async def stamp(self, timeout: float = 10) -> float:
        """Enqueue one stamp job and wait for its stamp: its pickup latency in ms."""
        await self.driver.enqueue_stamp(time.time())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = await self.run.redis.blpop([STAMPS_KEY], timeout=1)
            if reply is not None:
                return float(reply[1])
            if not self.alive():
                raise WorkerDied(f"{self.driver.name} worker exited")
        raise TimeoutError(f"{self.driver.name}: no stamp within {timeout} s")

    async def ready(self) -> None:
        """Start the worker and wait until it has run one (stamp) job."""
        self.start_worker()
        await self.stamp(timeout=60)

    async def enqueue(self, count: int) -> None:
        for _ in range(count):
            await self.driver.enqueue_noop()

    def cpu(self) -> dict[str, float]:
        assert self.worker is not None
        return {
            "producer": own_cpu(),
            "worker": cpu_seconds(tree(self.worker.pid)),
            "redis": cpu_seconds([self.bench.redis_pid]),
            "postgres": cpu_seconds(postgres_pids()),
        }


async def enqueue_rate(bench: Bench, driver: Driver, tag: str) -> float:
    """Sequential awaited enqueues with the system's own client, no worker running."""
    async with Session(bench, driver, tag, 0) as s:
        await driver.enqueue_noop()  # connections open outside the timing
        start = time.perf_counter()
        await s.enqueue(bench.enqueues)
        return bench.enqueues / (time.perf_counter() - start)


async def worker_only(bench: Bench, driver: Driver, tag: str) -> float:
    """N jobs queued, then the worker starts: N / (N-th finish - first start)."""
    async with Session(bench, driver, tag, bench.jobs) as s:
        await s.enqueue(bench.jobs)
        s.start_worker()
        first, end = await driver.wait_done(s.run, s.alive)
        return bench.jobs / (end - first)


async def end_to_end(bench: Bench, driver: Driver, tag: str) -> tuple[float, dict[str, float]]:
    """A ready worker, N sequential enqueues: jobs/s first enqueue -> last completion,
    and the CPU each process spent per job (ms) over that window."""
    async with Session(bench, driver, tag, bench.jobs) as s:
        await s.ready()
        before = s.cpu()
        start = time.time()
        await s.enqueue(bench.jobs)
        _, end = await driver.wait_done(s.run, s.alive)
        after = s.cpu()
        per_job = {k: (after[k] - before[k]) * 1000 / bench.jobs for k in CPU_PARTS}
        return bench.jobs / (end - start), per_job


async def pickup_and_idle(bench: Bench, driver: Driver, tag: str) -> Round:
    """Pickup latency of one job at a time to an idle worker, then that worker idle."""
    result = Round()
    async with Session(bench, driver, tag, 0) as s:
        await s.ready()
        assert s.worker is not None
        latencies = []
        for _ in range(bench.latency_jobs):
            latencies.append(await s.stamp())
            await asyncio.sleep(0.01)  # the worker goes idle between jobs
        result.p50, result.p99 = statistics.median(latencies), pct(latencies, 0.99)
        result.rss = rss_mib(tree(s.worker.pid))
        await asyncio.sleep(1)  # the last jobs' bookkeeping is not idle time
        before = s.cpu()
        await asyncio.sleep(bench.idle_seconds)
        after = s.cpu()
        result.idle = (after["worker"] - before["worker"]) * 100 / bench.idle_seconds
        result.redis_idle = (after["redis"] - before["redis"]) * 100 / bench.idle_seconds
    return result


async def one_round(bench: Bench, driver: Driver, round_: int) -> Round:
    tag = f"{driver.name}-{round_}"
    result = await pickup_and_idle(bench, driver, f"{tag}-pickup")
    result.enqueue = await enqueue_rate(bench, driver, f"{tag}-enqueue")
    result.worker_only = await worker_only(bench, driver, f"{tag}-drain")
    result.e2e, result.cpu = await end_to_end(bench, driver, f"{tag}-e2e")
    return result
