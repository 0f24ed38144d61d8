"""The handoff: an enqueue that finds a worker idle claims the job for it in the same
script, so the worker starts it without a claim of its own; a job handed to a worker
that never takes it up is queued again without counting an attempt."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from arq.worker import Worker

from agentsched import TaskQueue
from agentsched.connections import redis_client
from agentsched.keys import Keys
from agentsched.settings import Settings
from agentsched.status import TaskStatus

SLOW_POLL = 20.0  # s: a worker that only polls fails every wait below
ADD = "tests.sample_tasks.add"


def claims_of(worker: Worker) -> list[str]:
    """Count the claim scripts this worker sends from now on (the job ids)."""
    tracker = worker.pool.rides.tracker  # type: ignore[attr-defined]
    claimed: list[str] = []
    build = tracker.claim_start_command

    def counting(execution_id: str, *args: Any) -> tuple[Any, ...]:
        claimed.append(execution_id)
        return build(execution_id, *args)  # type: ignore[no-any-return]

    tracker.claim_start_command = counting
    return claimed


async def idle_members(settings: Settings) -> list[str]:
    async with redis_client(settings.redis_url) as redis:
        keys = Keys(settings.redis_prefix, settings.app)
        return [m.decode() for m in await redis.zrange(keys.idle, 0, -1)]


async def record(settings: Settings, execution_id: str) -> tuple[str, str, str]:
    """(status, attempt, worker) of an execution as its Redis record has them."""
    async with redis_client(settings.redis_url) as redis:
        key = Keys(settings.redis_prefix, settings.app).execution(execution_id)
        raw = await redis.hmget(key, ["status", "attempt", "worker"])  # type: ignore[misc]
        return tuple(v.decode() for v in raw)  # type: ignore[return-value]


async def wait_for(check: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"not {what} within {within}s"
        await asyncio.sleep(0.01)


async def test_an_idle_worker_is_handed_the_job_and_claims_nothing(
    settings: Settings, run_worker: Any
) -> None:
    worker = await run_worker(idle_poll=SLOW_POLL)
    async with TaskQueue(settings) as queue:
        warm = await queue.enqueue("tests.noop")
        await queue.get_result(warm.id, timeout=10)
        worker_id = worker.pool.rides.worker  # type: ignore[attr-defined]  # started now

        async def registered() -> bool:
            return any(m.startswith(worker_id + "|") for m in await idle_members(settings))

        await wait_for(registered, 5, "registered as idle")
        claimed = claims_of(worker)
        for _ in range(3):
            execution = await queue.enqueue(ADD, [2, 3])
            assert await queue.get_result(execution.id, timeout=5) == 5
            assert await record(settings, execution.id) == ("success", "1", worker_id)
            await wait_for(registered, 5, "registered as idle again")
        assert claimed == []


async def test_a_busy_worker_is_not_handed_jobs_until_its_last_job_ends(
    settings: Settings, run_worker: Any, tmp_path: Any
) -> None:
    worker = await run_worker(idle_poll=SLOW_POLL, max_jobs=4)
    async with TaskQueue(settings) as queue:
        gate = tmp_path / "gate"
        long = await queue.enqueue("tests.staged", kwargs={"gate": str(gate)})

        async def running() -> bool:
            return await queue.get_status(long.id) is TaskStatus.RUNNING

        await wait_for(running, 10, "running")
        worker_id = worker.pool.rides.worker  # type: ignore[attr-defined]
        claimed = claims_of(worker)
        await asyncio.sleep(0.2)
        assert await idle_members(settings) == []  # a job of its own runs
        other = await queue.enqueue(ADD, [1, 1])
        assert await queue.get_result(other.id, timeout=5) == 2
        assert claimed == [other.id]  # claimed the usual way
        gate.write_text("go")
        await queue.get_result(long.id, timeout=10)

        async def registered() -> bool:
            return any(m.startswith(worker_id + "|") for m in await idle_members(settings))

        # Its last job ended while its poll waited: it registers then, not a poll later.
        await wait_for(registered, 2, "registered once its last job ended")


async def test_a_one_slot_worker_never_registers_as_idle(
    settings: Settings, run_worker: Any
) -> None:
    # Its one slot could be taken by a claim already on its way when a job is handed.
    await run_worker(idle_poll=0.2, max_jobs=1)
    async with TaskQueue(settings) as queue:
        warm = await queue.enqueue("tests.noop")
        await queue.get_result(warm.id, timeout=10)
        await asyncio.sleep(0.6)  # a few empty polls
        assert await idle_members(settings) == []


async def test_a_job_handed_to_a_gone_worker_runs_elsewhere_as_its_first_attempt(
    settings: Settings, run_worker: Any
) -> None:
    keys = Keys(settings.redis_prefix, settings.app)
    async with redis_client(settings.redis_url) as redis, TaskQueue(settings) as queue:
        # A worker that registered as idle and died: its registration is still good.
        until = int(time.time() * 1000) + 60_000
        await redis.zadd(keys.idle, {"ghost:1|500": until})
        execution = await queue.enqueue(ADD, [20, 22])  # max_tries 1
        assert await record(settings, execution.id) == ("running", "1", "ghost:1")
        assert await redis.zcard(keys.idle) == 0  # one job per registration
        worker = await run_worker(idle_poll=0.2)
        assert await queue.get_result(execution.id, timeout=15) == 42
        worker_id = worker.pool.rides.worker  # type: ignore[attr-defined]
        assert await record(settings, execution.id) == ("success", "1", worker_id)


async def test_a_handed_job_begins_before_the_worker_checks_for_aborts(
    settings: Settings, run_worker: Any
) -> None:
    # arq's loop sends its abort check right after starting jobs; for a handed job that
    # round trip's write would come before the job's function (its pickup latency).
    worker = await run_worker(idle_poll=SLOW_POLL)
    pool = worker.pool
    rides = pool.rides  # type: ignore[attr-defined]
    async with TaskQueue(settings) as queue:
        warm = await queue.enqueue("tests.noop")
        await queue.get_result(warm.id, timeout=10)
        worker_id = rides.worker

        async def registered() -> bool:
            return any(m.startswith(worker_id + "|") for m in await idle_members(settings))

        await wait_for(registered, 5, "registered as idle")
        pending_at_checks: list[set[str]] = []
        check = pool.abort_check_wait  # type: ignore[attr-defined]

        async def spying() -> None:
            await check()
            pending_at_checks.append(set(rides.started))  # claimed, function not begun

        pool.abort_check_wait = spying  # type: ignore[attr-defined]
        claimed = claims_of(worker)
        handed = []
        for _ in range(3):
            execution = await queue.enqueue(ADD, [2, 3])
            assert await queue.get_result(execution.id, timeout=5) == 5
            handed.append(execution.id)
            await wait_for(registered, 5, "registered as idle again")
        assert claimed == []  # all three were handed
        assert pending_at_checks, "no abort check ran"
        assert all(not (pending & set(handed)) for pending in pending_at_checks)
