"""An idle worker waits for work instead of polling, and is woken at once when it comes.

Each test sets `idle_poll` far above what it tolerates, so a worker that only polls
(a lost wake-up, a missed shape of arq's transactions) fails it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from arq.worker import create_worker

from agentsched import TaskQueue
from agentsched.connections import redis_client
from agentsched.jobs.wake import Waker
from agentsched.settings import Settings
from agentsched.status import TaskStatus
from agentsched.worker import build_worker_settings
from tests.redis_servers import PrivateRedis

SLOW_POLL = 20.0  # seconds: far longer than any wait below


async def wait_status(queue: TaskQueue, ident: str, status: TaskStatus, within: float) -> float:
    start = time.monotonic()
    while (await queue.get_status(ident)) is not status:
        assert time.monotonic() - start < within, f"{ident} not {status.value} in {within}s"
        await asyncio.sleep(0.005)
    return time.monotonic() - start


async def test_an_idle_worker_is_woken_by_an_enqueue(settings: Settings, run_worker: Any) -> None:
    await run_worker(idle_poll=SLOW_POLL)
    async with TaskQueue(settings) as queue:
        first = await queue.enqueue("tests.noop")
        await queue.get_result(first.id, timeout=10)
        await asyncio.sleep(0.5)  # idle now: waiting for a wake-up
        for _ in range(5):
            execution = await queue.enqueue("tests.noop")
            assert await wait_status(queue, execution.id, TaskStatus.SUCCESS, 3) < 3


async def test_a_deferred_job_runs_when_due_without_a_wake_up(
    settings: Settings, run_worker: Any
) -> None:
    await run_worker(idle_poll=SLOW_POLL)
    async with TaskQueue(settings) as queue:
        warm = await queue.enqueue("tests.noop")
        await queue.get_result(warm.id, timeout=10)
        execution = await queue.enqueue("tests.noop", delay=1.0)
        took = await wait_status(queue, execution.id, TaskStatus.SUCCESS, 6)
        assert 0.9 <= took < 6


async def test_a_busy_worker_starts_the_next_job_when_a_slot_frees(
    settings: Settings, run_worker: Any, tmp_path: Path
) -> None:
    # One slot: while it runs, arq skips the poll and its abort check waits instead.
    await run_worker(idle_poll=SLOW_POLL, max_jobs=1)
    gate = tmp_path / "gate"
    async with TaskQueue(settings) as queue:
        long = await queue.enqueue("tests.staged", kwargs={"gate": str(gate)})
        await wait_status(queue, long.id, TaskStatus.RUNNING, 10)
        waiting = await queue.enqueue("tests.noop")
        await asyncio.sleep(0.5)
        assert await queue.get_status(waiting.id) is TaskStatus.QUEUED
        gate.write_text("go")
        await wait_status(queue, long.id, TaskStatus.SUCCESS, 10)
        assert await wait_status(queue, waiting.id, TaskStatus.SUCCESS, 3) < 3


async def test_cancel_reaches_a_busy_worker_at_once(
    settings: Settings, run_worker: Any, tmp_path: Path
) -> None:
    await run_worker(idle_poll=SLOW_POLL, max_jobs=1)
    async with TaskQueue(settings) as queue:
        execution = await queue.enqueue("tests.staged", kwargs={"gate": str(tmp_path / "g")})
        await wait_status(queue, execution.id, TaskStatus.RUNNING, 10)
        start = time.monotonic()
        assert await queue.cancel(execution.id, wait=4)
        assert time.monotonic() - start < 3  # the worker confirmed; no forced cancel
        assert await queue.get_status(execution.id) is TaskStatus.CANCELLED


async def test_a_burst_worker_never_waits(settings: Settings) -> None:
    slow = settings.model_copy(update={"idle_poll": SLOW_POLL})
    async with TaskQueue(slow) as queue:
        for _ in range(3):
            await queue.enqueue("tests.noop")
    worker = create_worker(build_worker_settings(slow), burst=True, handle_signals=False)
    start = time.monotonic()
    await asyncio.wait_for(worker.async_run(), 15)
    await worker.close()
    assert worker.jobs_complete == 3
    assert time.monotonic() - start < SLOW_POLL / 2


async def test_a_worker_with_a_long_job_running_does_not_spin(
    settings: Settings, run_worker: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    # arq keeps a running job in its queue: a poll that offered it again and again made
    # the worker look at its queue every poll_delay (2 ms) for as long as the job ran.
    from agentsched.jobs import arq_pool

    polls = 0
    original = arq_pool.RidingArqRedis._poll

    async def counted(self: Any, *args: Any) -> Any:
        nonlocal polls
        polls += 1
        return await original(self, *args)

    monkeypatch.setattr(arq_pool.RidingArqRedis, "_poll", counted)
    await run_worker(idle_poll=0.5)
    gate = tmp_path / "gate"
    async with TaskQueue(settings) as queue:
        long = await queue.enqueue("tests.staged", kwargs={"gate": str(gate)})
        await wait_status(queue, long.id, TaskStatus.RUNNING, 10)
        before = polls
        await asyncio.sleep(2.0)
        assert polls - before <= 12, f"{polls - before} polls in 2 s while one job ran"
        gate.write_text("go")
        await wait_status(queue, long.id, TaskStatus.SUCCESS, 10)


async def test_a_waker_on_a_script_line_subscribes_again_after_losing_its_connection(
    tmp_path: Path,
) -> None:
    server = PrivateRedis(tmp_path / "redis").start()
    client = redis_client(server.url)
    waker = Waker()
    job_id = "0" * 36

    async def published(count: int) -> None:
        deadline = time.monotonic() + 10
        while waker.published < count:
            assert time.monotonic() < deadline, f"{waker.published} wake-ups, not {count}"
            await asyncio.sleep(0.01)

    try:
        assert client.connection_pool.script_line() is not None  # type: ignore[attr-defined]
        waker.start(client, "wake")
        await published(1)  # its own wake-up once subscribed
        await client.publish("wake", job_id)
        await published(2)
        assert waker.take_hints() == [job_id.encode()]
        await client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        await published(3)  # subscribed again: anything published meanwhile is looked at
        await client.publish("wake", "jobs")
        await published(4)
        assert waker.take_hints() == []  # "jobs" names no job
    finally:
        await waker.stop()
        await client.aclose()
        server.kill()
