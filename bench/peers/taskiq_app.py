"""taskiq on taskiq-redis's ListQueueBroker:
`python -m taskiq worker bench.peers.taskiq_app:broker --workers 1`.

Default worker options; the broker's URL comes from `BENCH_PEER_REDIS_URL`, read at
import because the worker CLI imports `broker` by name.
"""

from __future__ import annotations

from typing import Any

from taskiq import TaskiqMessage, TaskiqMiddleware, TaskiqResult
from taskiq_redis import ListQueueBroker

from bench.peers.common import FinishCounter, push_done, push_stamp, redis_url
from bench.peers.driver import Driver, Run


class CountFinished(TaskiqMiddleware):
    """Counts finished no-op tasks in the worker; one Redis write when N are done."""

    def __init__(self) -> None:
        super().__init__()
        self.counter = FinishCounter()

    def pre_execute(self, message: TaskiqMessage) -> TaskiqMessage:
        if message.task_name == noop.task_name:
            self.counter.started()
        return message

    async def post_execute(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        if message.task_name == noop.task_name and not result.is_err:
            entry = self.counter.finished()
            if entry is not None:
                await push_done(entry)


broker = ListQueueBroker(redis_url()).with_middlewares(CountFinished())


@broker.task
async def noop() -> None:
    return None


@broker.task
async def stamp(t0: float) -> None:
    await push_stamp(t0)


class TaskiqDriver(Driver):
    name = "taskiq"
    distributions = ("taskiq", "taskiq-redis")

    def command(self) -> list[str]:
        return ["-m", "taskiq", "worker", f"{__name__}:broker", "--workers", "1"]

    async def open(self, run: Run) -> None:
        assert redis_url() == run.redis_url, "set BENCH_PEER_REDIS_URL before importing"
        await broker.startup()

    async def close(self) -> None:
        await broker.shutdown()

    async def enqueue_noop(self) -> None:
        await noop.kiq()

    async def enqueue_stamp(self, t0: float) -> None:
        await stamp.kiq(t0)
