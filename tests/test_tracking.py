"""Status scripts against real Redis: races between a lost worker, the reaper and cancel."""

from __future__ import annotations

import redis.asyncio as aioredis

from agentsched import TaskQueue, TaskStatus
from agentsched.jobs.tracker import Tracker
from agentsched.settings import Settings


async def _running(queue: TaskQueue, worker: str) -> tuple[Tracker, str]:
    execution = await queue.enqueue("tests.sample_tasks.add", args=[1, 2])
    tracker = queue.tracker
    status = await tracker.start(
        execution.id, worker=worker, attempt=1, function="tests.sample_tasks.add",
        args=[1, 2], kwargs={}, enqueued_ms=0, max_tries=2,
    )  # fmt: skip
    assert status == "running"
    return tracker, execution.id


async def test_late_finish_of_a_lost_worker_does_not_touch_the_new_run(settings: Settings) -> None:
    async with TaskQueue(settings) as queue:
        tracker, ident = await _running(queue, "worker-a")
        # tests.sample_tasks.add has max_retries=0; give this one a retry to requeue
        await tracker.redis.hset(tracker.keys.execution(ident), "max_tries", "2")  # type: ignore[misc]
        await tracker.redis.delete(tracker.keys.lease(ident))  # worker A stalls
        assert await tracker.reap() == [ident]
        record = await queue.get_execution(ident)
        assert record.status is TaskStatus.QUEUED and record.attempt == 2
        assert await tracker.start(
            ident, worker="worker-b", attempt=2, function="tests.sample_tasks.add",
            args=[1, 2], kwargs={}, enqueued_ms=0, max_tries=2,
        ) == "running"  # fmt: skip
        assert await tracker.finish(ident, "success", result=3, worker="worker-a") == "stale"
        record = await queue.get_execution(ident)
        assert record.status is TaskStatus.RUNNING
        assert await tracker.redis.exists(tracker.keys.lease(ident)) == 1
        assert await tracker.finish(ident, "success", result=3, worker="worker-b") == "success"
        assert await queue.get_result(ident, timeout=1) == 3


async def test_reaper_fails_a_job_arq_already_removed(settings: Settings) -> None:
    async with TaskQueue(settings) as queue:
        tracker, ident = await _running(queue, "worker-a")
        await tracker.redis.hset(tracker.keys.execution(ident), "max_tries", "3")  # type: ignore[misc]
        await tracker.redis.delete(tracker.keys.lease(ident), tracker.keys.job(ident))
        assert await tracker.reap() == [ident]
        record = await queue.get_execution(ident)
        assert record.status is TaskStatus.FAILED
        assert record.error_kind is not None and record.error_kind.value == "worker_lost"


async def test_forced_cancel_leaves_nothing_in_arqs_abort_set(settings: Settings) -> None:
    async with TaskQueue(settings) as queue:
        tracker, ident = await _running(queue, "worker-a")
        assert await tracker.cancel(ident) == "cancelling"
        client: aioredis.Redis = tracker.redis
        assert await client.zscore(tracker.keys.abort, ident) is not None
        assert await tracker.cancel(ident, force=True) == "cancelled"
        assert await client.zscore(tracker.keys.abort, ident) is None
        assert await queue.get_status(ident) is TaskStatus.CANCELLED
