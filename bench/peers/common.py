"""What every benchmarked worker shares: its environment, the finish counter, the stamps.

Imported inside the worker processes (dramatiq, taskiq, arq, and agentsched's
bench.stamp), so it needs nothing but redis-py. The bench reads back two Redis lists:
`DONE_KEY` gets one entry when the worker has finished `BENCH_PEER_JOBS` no-op jobs,
`STAMPS_KEY` one entry per stamp job (its pickup latency in ms).
"""

from __future__ import annotations

import json
import os
import threading
import time

import redis
import redis.asyncio as aioredis

REDIS_ENV = "BENCH_PEER_REDIS_URL"
JOBS_ENV = "BENCH_PEER_JOBS"
DONE_KEY = "bench:done"
STAMPS_KEY = "bench:stamps"


def redis_url() -> str:
    return os.environ.get(REDIS_ENV, "redis://127.0.0.1:6379/0")


class FinishCounter:
    """Counts the no-op jobs a worker has finished, in the worker itself.

    Counting in-process keeps completion detection out of the jobs' own work: nothing
    is written per job, and one entry goes to Redis when the count reaches N. Thread
    safe, since dramatiq calls its middleware from its worker threads.
    """

    def __init__(self) -> None:
        self.target = int(os.environ.get(JOBS_ENV, "0"))
        self.first_start: float | None = None
        self.count = 0
        self._lock = threading.Lock()

    def started(self) -> None:
        if self.first_start is None:
            self.first_start = time.time()

    def finished(self) -> str | None:
        """The entry for DONE_KEY when this finish is the N-th one, else None."""
        with self._lock:
            self.count += 1
            if self.count != self.target:
                return None
        return json.dumps({"first_start": self.first_start, "end": time.time()})


_async_client: aioredis.Redis | None = None
_sync_client: redis.Redis | None = None


def _aclient() -> aioredis.Redis:
    # Created on first use, inside the worker's event loop (a worker has only one).
    global _async_client
    if _async_client is None:
        _async_client = aioredis.Redis.from_url(redis_url())
    return _async_client


def _client() -> redis.Redis:
    global _sync_client
    if _sync_client is None:
        _sync_client = redis.Redis.from_url(redis_url())
    return _sync_client


async def push_stamp(t0: float) -> None:
    """A stamp job's first act: how long after its enqueue (wall clock) it started, in ms."""
    await _aclient().rpush(STAMPS_KEY, (time.time() - t0) * 1000)


def push_stamp_sync(t0: float) -> None:
    _client().rpush(STAMPS_KEY, (time.time() - t0) * 1000)


async def push_done(entry: str) -> None:
    await _aclient().rpush(DONE_KEY, entry)


def push_done_sync(entry: str) -> None:
    _client().rpush(DONE_KEY, entry)
