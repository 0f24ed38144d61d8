"""Raw arq, poll delay 2 ms: `python -m arq bench.peers.arq_app.WorkerSettings`.

arq's defaults otherwise (results kept an hour, 10 jobs at a time); the URL comes from
`BENCH_PEER_REDIS_URL`, read at import because arq reads the settings class as it is.
"""

from __future__ import annotations

from typing import Any

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings

from bench.peers.common import FinishCounter, push_done, push_stamp, redis_url
from bench.peers.driver import Driver, Run

POLL_DELAY = 0.002  # what issue 16 compares agentsched's default against
_counter = FinishCounter()


async def noop(ctx: dict[str, Any]) -> None:
    # arq has no middleware: the count lives in the function, the write only at the N-th.
    _counter.started()
    entry = _counter.finished()
    if entry is not None:
        await push_done(entry)


async def stamp(ctx: dict[str, Any], t0: float) -> None:
    await push_stamp(t0)


class WorkerSettings:
    functions = [noop, stamp]
    redis_settings = RedisSettings.from_dsn(redis_url())
    poll_delay = POLL_DELAY


class ArqDriver(Driver):
    name = "arq"
    distributions = ("arq",)
    pool: ArqRedis

    def command(self) -> list[str]:
        return ["-m", "arq", f"{__name__}.WorkerSettings"]

    async def open(self, run: Run) -> None:
        self.pool = await create_pool(RedisSettings.from_dsn(run.redis_url))

    async def close(self) -> None:
        await self.pool.aclose()

    async def enqueue_noop(self) -> None:
        await self.pool.enqueue_job("noop")

    async def enqueue_stamp(self, t0: float) -> None:
        await self.pool.enqueue_job("stamp", t0)
