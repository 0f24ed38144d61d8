"""The bench's side of one system: its worker command, its client, its end of a run.

Each peer module has a `Driver` subclass; the harness only talks to this interface, so
every system gets the same workload and the same measurement.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import redis.asyncio as aioredis

from bench.peers.common import DONE_KEY, JOBS_ENV, REDIS_ENV

ROOT = Path(__file__).resolve().parent.parent.parent


@dataclass
class Run:
    """One run of one system: the private Redis (flushed before it), its N, its name."""

    redis_url: str
    redis: aioredis.Redis  # the bench's own client of that Redis
    jobs: int
    tag: str  # unique in the bench run: agentsched's app name, so SQL counts start at 0
    database: str  # the bench's PostgreSQL database (agentsched only)


class WorkerDied(RuntimeError):
    pass


class Driver:
    name = "?"
    distributions: tuple[str, ...] = ()

    def versions(self) -> str:
        return ", ".join(f"{d} {version(d)}" for d in self.distributions)

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self, run: Run) -> dict[str, str]:
        """The worker's environment on top of the bench's own."""
        return {REDIS_ENV: run.redis_url, JOBS_ENV: str(run.jobs), "PYTHONPATH": str(ROOT)}

    async def open(self, run: Run) -> None:
        """Open this run's client (its connections warmed up by the caller's first enqueue)."""

    async def close(self) -> None:
        pass

    async def enqueue_noop(self) -> None:
        raise NotImplementedError

    async def enqueue_stamp(self, t0: float) -> None:
        raise NotImplementedError

    async def wait_done(self, run: Run, alive: Callable[[], bool]) -> tuple[float, float]:
        """(first job start, N-th finish) in wall-clock seconds, as the worker recorded them."""
        deadline = time.monotonic() + done_timeout(run.jobs)
        while time.monotonic() < deadline:
            # BLPOP rather than polling: waiting costs the Redis nothing while jobs run.
            reply = await run.redis.blpop([DONE_KEY], timeout=1)
            if reply is not None:
                entry = json.loads(reply[1])
                return float(entry["first_start"]), float(entry["end"])
            if not alive():
                raise WorkerDied(f"{self.name} worker exited before finishing {run.jobs} jobs")
        raise TimeoutError(f"{self.name}: {run.jobs} jobs not finished in time")


def done_timeout(jobs: int) -> float:
    # Generous (50 jobs/s): a shared machine under load is slow, not broken.
    return 60 + jobs / 50


def child_env() -> dict[str, str]:
    """The bench's environment without settings of agentsched that would leak in."""
    return {k: v for k, v in os.environ.items() if not k.startswith("AGENTSCHED_")}
