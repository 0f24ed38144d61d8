"""agentsched, every execution recorded in PostgreSQL: `python -m arq agentsched.WorkerSettings`.

The tasks are bench/bench_tasks.py; the worker runs with default settings except for
where it connects (and any `overrides`, given to the worker as `AGENTSCHED_*` variables
and to the bench's client as settings). Its end of a run is stricter than the peers':
the N-th row of the run's app that reaches `success` in SQL, counted every 20 ms from
the bench.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

from sqlalchemy import func, select

from agentsched import TaskQueue
from agentsched.db.models import TaskExecution
from agentsched.observability import metrics, tracing
from agentsched.settings import Settings, load_settings
from bench.common import pg_url
from bench.peers.driver import Driver, Run, WorkerDied, done_timeout

PREFIX = "bench:"
SQL_POLL = 0.02


def settings_for(run: Run, **overrides: Any) -> Settings:
    return load_settings(
        redis_url=run.redis_url,
        redis_prefix=PREFIX,
        app=run.tag,
        database_url=pg_url(run.database),
        task_modules=["bench.bench_tasks"],
        **overrides,
    )


def env_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


class AgentschedDriver(Driver):
    name = "agentsched"
    distributions = ("agentsched", "arq")
    queue: TaskQueue
    stamps = 0  # stamp jobs of this run: each one is a success row too

    def __init__(self, name: str = "agentsched", env: dict[str, str] | None = None,
                 **overrides: Any) -> None:  # fmt: skip
        self.name, self.extra_env, self.overrides = name, env or {}, overrides

    def command(self) -> list[str]:
        return ["-m", "arq", "agentsched.WorkerSettings"]

    def env(self, run: Run) -> dict[str, str]:
        settings = settings_for(run, **self.overrides)
        own = {f"AGENTSCHED_{k.upper()}": env_value(v) for k, v in self.overrides.items()}
        return (
            super().env(run)
            | own
            | self.extra_env
            | {
                "AGENTSCHED_REDIS_URL": settings.redis_url,
                "AGENTSCHED_DATABASE_URL": settings.database_url,
                "AGENTSCHED_APP": settings.app,
                "AGENTSCHED_REDIS_PREFIX": settings.redis_prefix,
                "AGENTSCHED_TASK_MODULES": ",".join(settings.task_modules),
            }
        )

    async def open(self, run: Run) -> None:
        self._stack = AsyncExitStack()
        settings = settings_for(run, **self.overrides)
        # A TaskQueue follows the process' observability switches (set once at start-up
        # by a worker or an API): the bench's client takes this run's.
        metrics.configure(settings.metrics_enabled)
        tracing.configure(settings.tracing)
        queue = TaskQueue(settings)
        self.queue = await self._stack.enter_async_context(queue)
        self.stamps = 0

    async def close(self) -> None:
        await self._stack.aclose()

    async def enqueue_noop(self) -> None:
        await self.queue.enqueue("bench.noop")

    async def enqueue_stamp(self, t0: float) -> None:
        self.stamps += 1
        await self.queue.enqueue("bench.stamp", [t0])

    async def wait_done(self, run: Run, alive: Callable[[], bool]) -> tuple[float, float]:
        """(first `started_at` of a no-op in SQL, when the success count first reached N)."""
        target = run.jobs + self.stamps
        success = (
            select(func.count())
            .select_from(TaskExecution)
            .where(TaskExecution.app == run.tag, TaskExecution.status == "success")
        )
        engine = self.queue.runtime.engine
        deadline = time.monotonic() + done_timeout(run.jobs)
        async with engine.connect() as conn:
            # READ COMMITTED: each count sees the rows committed before it.
            while (await conn.scalar(success) or 0) < target:
                if not alive():
                    raise WorkerDied(f"agentsched worker exited before {target} rows were success")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"agentsched: {target} rows not success in time")
                await asyncio.sleep(SQL_POLL)
            end = time.time()
            first = await conn.scalar(
                select(func.min(TaskExecution.started_at)).where(
                    TaskExecution.app == run.tag, TaskExecution.function == "bench.noop"
                )
            )
        assert first is not None
        return first.timestamp(), end
