"""An idle worker asks Redis as little as it can, and still hears work and cancels."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentsched import TaskQueue
from agentsched.settings import Settings
from agentsched.status import TaskStatus
from tests.redis_servers import PrivateRedis


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis").start()
    yield server
    server.kill()


async def test_an_idle_worker_sends_no_abort_check_and_still_cancels(
    settings: Settings, private_redis: PrivateRedis, run_worker: Any
) -> None:
    own = settings.model_copy(update={"redis_url": private_redis.url})
    client = private_redis.client()
    await run_worker(redis_url=private_redis.url)
    async with TaskQueue(own) as queue:
        await queue.get_result((await queue.enqueue("tests.noop")).id, timeout=10)
        client.config_resetstat()
        await asyncio.sleep(1.6)  # three idle polls of 0.5 s
        stats = client.info("commandstats")
        assert "cmdstat_zrange" not in stats  # arq's abort check: ZRANGE arq:abort
        assert stats["cmdstat_evalsha"]["calls"] >= 3  # its polls go on
        # With a job running, the check goes to Redis and a cancel reaches the job.
        running = await queue.enqueue("tests.sleep", kwargs={"seconds": 30})
        for _ in range(200):
            if (await queue.get_status(running.id)) is TaskStatus.RUNNING:
                break
            await asyncio.sleep(0.02)
        asked = time.monotonic()
        assert await queue.cancel(running.id)
        assert time.monotonic() - asked < 3  # the worker confirmed: not forced after 5 s
        assert "cmdstat_zrange" in client.info("commandstats")
