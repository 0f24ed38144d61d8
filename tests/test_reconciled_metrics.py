"""`agentsched_reconciled_total{app,action}`: what a worker's reconciler repaired, on its port.

An execution whose row is in SQL (durable enqueue) loses everything Redis knew of it
(its hash, arq's job key and queue entry), as after a Redis restart without
persistence; a real in-process worker's reconcile loop enqueues it again, and its
metrics port counts the repair under the action the reconciler logs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from agentsched import TaskQueue, TaskStatus
from agentsched.settings import Settings
from tests.test_api_support import eventually
from tests.test_metrics import free_port, samples, scrape, value

RECONCILED = "agentsched_reconciled_total"


async def test_a_requeued_execution_is_counted_on_the_worker_port(
    settings: Settings, run_worker: Callable[..., Any]
) -> None:
    async with TaskQueue(settings.model_copy(update={"durable_enqueue": True})) as queue:
        lost = await queue.enqueue("tests.sample_tasks.add", args=[2, 3])
        kept = await queue.enqueue("tests.sample_tasks.add", args=[4, 5], delay=3600)
        keys = queue.tracker.keys
        client = aioredis.Redis.from_url(settings.redis_url)
        try:
            assert await client.delete(keys.execution(lost.id), f"arq:job:{lost.id}") == 2
            assert await client.zrem(keys.queue, lost.id) == 1
        finally:
            await client.aclose()

        port = free_port()
        await run_worker(metrics_port=port, reconcile_seconds=0.5)
        assert await queue.get_result(lost.id, timeout=20) == 5  # enqueued again, and run
        text = await eventually(
            lambda: scrape(port), lambda t: value(t, RECONCILED, app=settings.app) is not None
        )
        assert value(text, RECONCILED, app=settings.app, action="requeued") == 1
        # Only the repair is counted: the execution Redis still knew is left alone.
        assert [
            (labels["action"], v)
            for name, labels, v in samples(text)
            if name == RECONCILED and labels["app"] == settings.app
        ] == [("requeued", 1.0)]
        assert await queue.get_status(kept.id) is TaskStatus.QUEUED
