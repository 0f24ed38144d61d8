"""The queue and the worker end to end: real Redis, real PostgreSQL (and SQLite)."""

from __future__ import annotations

import asyncio
import datetime as dt
import pickle
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from agentsched import TaskQueue, TaskStatus
from agentsched.errors import (
    ExecutionCancelled,
    ExecutionFailed,
    InvalidInput,
    NotFound,
    ResultTimeout,
    UnknownFunction,
)
from agentsched.execution import Execution
from agentsched.jobs.queue import new_execution_id, parse_execution_id
from agentsched.keys import Keys
from agentsched.serialization import from_ms, to_ms
from agentsched.settings import Settings
from tests import sample_tasks


async def wait_sql(
    queue: TaskQueue, execution_id: str, check: Callable[[Execution], bool], timeout: float = 10
) -> Execution:
    """Poll the SQL history until `check` holds for the row."""
    deadline = time.monotonic() + timeout
    row = None
    while time.monotonic() < deadline:
        row = await queue.runtime.executions.get(queue.app, execution_id)
        if row is not None and check(row):
            return row
        await asyncio.sleep(0.05)
    raise AssertionError(f"SQL row never satisfied the check; last: {row}")


async def wait_known(queue: TaskQueue, execution_id: str, timeout: float = 60) -> None:
    """Wait until a raw job's execution exists: the worker records it when it fails it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await queue.get_execution(execution_id)
            return
        except NotFound:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.05)


async def redis_keys(settings: Settings) -> list[bytes]:
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        return [k async for k in client.scan_iter(match=settings.redis_prefix + "*")]
    finally:
        await client.aclose()


@pytest.mark.parametrize("db_url", ["postgres", "sqlite"], indirect=True)
async def test_success_is_recorded_in_redis_and_sql(settings: Settings, run_worker: Any) -> None:
    await run_worker()
    async with TaskQueue(settings) as queue:
        execution = await queue.enqueue(sample_tasks.add, args=[2, 3], metadata={"by": "test"})
        assert execution.status is TaskStatus.QUEUED
        assert await queue.get_result(execution.id, timeout=10) == 5
        record = await queue.get_execution(execution.id)
        assert record.status is TaskStatus.SUCCESS
        assert record.attempt == 1 and record.metadata == {"by": "test"}
        assert record.enqueued_at and record.started_at and record.finished_at
        assert record.enqueued_at <= record.started_at <= record.finished_at
        row = await wait_sql(queue, execution.id, lambda r: r.status is TaskStatus.SUCCESS)
        assert row.result == 5 and row.args == [2, 3] and row.function == "tests.sample_tasks.add"


async def test_failure_stores_message_and_traceback(settings: Settings, run_worker: Any) -> None:
    await run_worker()
    async with TaskQueue(settings) as queue:
        execution = await queue.enqueue("tests.boom", kwargs={"message": "disk full"})
        with pytest.raises(ExecutionFailed, match="disk full"):
            await queue.get_result(execution.id, timeout=10)
        row = await wait_sql(queue, execution.id, lambda r: r.status is TaskStatus.FAILED)
        assert row.error is not None and row.error.startswith("ValueError: disk full")
        assert "sample_tasks.py" in row.error  # the short traceback
        assert row.error_kind is not None and row.error_kind.value == "exception"


async def test_retry_then_success(settings: Settings, run_worker: Any, tmp_path: Path) -> None:
    await run_worker()
    marker = str(tmp_path / "count")
    async with TaskQueue(settings) as queue:
        execution = await queue.enqueue("tests.flaky", kwargs={"marker": marker, "fail_times": 2})
        assert await queue.get_result(execution.id, timeout=15) == "ok after 3"
        record = await queue.get_execution(execution.id)
        assert record.attempt == 3 and record.status is TaskStatus.SUCCESS and record.error is None


async def test_retries_exhausted(settings: Settings, run_worker: Any) -> None:
    await run_worker()
    async with TaskQueue(settings) as queue:
        execution = await queue.enqueue("tests.always_fails")
        with pytest.raises(ExecutionFailed, match="always"):
            await queue.get_result(execution.id, timeout=15)
        record = await queue.get_execution(execution.id)
        assert record.attempt == 3  # max_retries=2 -> three attempts
        row = await wait_sql(queue, execution.id, lambda r: r.status is TaskStatus.FAILED)
        assert row.attempt == 3


async def test_timeout_is_failed_with_kind_timeout(settings: Settings, run_worker: Any) -> None:
    await run_worker()
    async with TaskQueue(settings) as queue:
        execution = await queue.enqueue("tests.slow", args=[5])
        with pytest.raises(ExecutionFailed, match="timeout"):
            await queue.get_result(execution.id, timeout=10)
        record = await queue.get_execution(execution.id)
        assert record.error_kind is not None and record.error_kind.value == "timeout"


async def test_sync_function_runs_in_a_thread(settings: Settings, run_worker: Any) -> None:
    await run_worker()
    async with TaskQueue(settings) as queue:
        execution = await queue.enqueue("tests.sync_mul", args=[6, 7])
        assert await queue.get_result(execution.id, timeout=10) == {"product": 42}


async def test_delayed_job_waits(settings: Settings, run_worker: Any) -> None:
    await run_worker()
    async with TaskQueue(settings) as queue:
        start = time.monotonic()
        execution = await queue.enqueue(sample_tasks.add, args=[1, 1], delay=0.6)
        assert await queue.get_result(execution.id, timeout=10) == 2
        record = await queue.get_execution(execution.id)
        assert time.monotonic() - start >= 0.6
        assert record.started_at and record.enqueued_at
        assert (record.started_at - record.enqueued_at).total_seconds() >= 0.55

        eta = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.3)
        later = await queue.enqueue(sample_tasks.add, args=[2, 2], eta=eta)
        assert await queue.get_result(later.id, timeout=10) == 4
        started = (await queue.get_execution(later.id)).started_at
        assert started is not None and started >= eta - dt.timedelta(milliseconds=20)


async def test_cancel_queued_job_never_runs(settings: Settings) -> None:
    async with TaskQueue(settings) as queue:  # no worker yet
        execution = await queue.enqueue(sample_tasks.add, args=[1, 2])
        assert await queue.cancel(execution.id) is True
        assert await queue.get_status(execution.id) is TaskStatus.CANCELLED
        assert await queue.cancel(execution.id) is False  # already finished
        with pytest.raises(ExecutionCancelled):
            await queue.get_result(execution.id, timeout=1)


async def test_cancel_deferred_job_never_runs(settings: Settings, run_worker: Any) -> None:
    await run_worker()
    async with TaskQueue(settings) as queue:
        execution = await queue.enqueue(sample_tasks.add, args=[1, 2], delay=0.5)
        assert await queue.cancel(execution.id) is True
        await asyncio.sleep(1.0)
        record = await queue.get_execution(execution.id)
        assert record.status is TaskStatus.CANCELLED and record.started_at is None


async def test_cancel_running_job(settings: Settings, run_worker: Any, tmp_path: Path) -> None:
    await run_worker()
    marker = tmp_path / "started"
    async with TaskQueue(settings) as queue:
        execution = await queue.enqueue("tests.sleep", args=[30], kwargs={"marker": str(marker)})
        for _ in range(200):
            if await queue.get_status(execution.id) is TaskStatus.RUNNING:
                break
            await asyncio.sleep(0.02)
        start = time.monotonic()
        assert await queue.cancel(execution.id) is True
        assert time.monotonic() - start < 1.0
        await asyncio.sleep(0.5)  # a cancelled job is not retried
        record = await queue.get_execution(execution.id)
        assert record.status is TaskStatus.CANCELLED and record.attempt == 1
        row = await wait_sql(queue, execution.id, lambda r: r.status is TaskStatus.CANCELLED)
        assert row.finished_at is not None


async def test_idempotency_key_dedups(settings: Settings) -> None:
    async with TaskQueue(settings) as queue:
        first = await queue.enqueue(sample_tasks.add, args=[1, 2], idempotency_key="order-42")
        second = await queue.enqueue(sample_tasks.add, args=[1, 2], idempotency_key="order-42")
        other = await queue.enqueue(sample_tasks.add, args=[1, 2], idempotency_key="order-43")
        assert first.id == second.id != other.id
        client = queue.runtime.redis
        assert await client.zcard(Keys(settings.redis_prefix, settings.app).queue) == 2


async def test_unregistered_name_writes_nothing(settings: Settings) -> None:
    async with TaskQueue(settings) as queue:
        with pytest.raises(UnknownFunction, match=r"os\.system"):
            await queue.enqueue("os.system", args=["echo hi"])
        with pytest.raises(InvalidInput, match="args"):
            await queue.enqueue(sample_tasks.add, args="12")
        with pytest.raises(InvalidInput, match="kwargs"):
            await queue.enqueue(sample_tasks.add, kwargs={"a": object()})
        with pytest.raises(InvalidInput, match="delay"):
            await queue.enqueue(sample_tasks.add, delay=-1)
        assert await redis_keys(settings) == []
        _items, total = await queue.list_executions()
        assert total == 0


async def test_status_answered_from_sql_after_redis_expired(
    settings: Settings, run_worker: Any
) -> None:
    await run_worker()
    async with TaskQueue(settings) as queue:
        execution = await queue.enqueue(sample_tasks.add, args=[20, 22])
        await queue.get_result(execution.id, timeout=10)
        await wait_sql(queue, execution.id, lambda r: r.status is TaskStatus.SUCCESS)
    for key in await redis_keys(settings):  # Redis forgets everything about it
        client = aioredis.Redis.from_url(settings.redis_url)
        await client.delete(key)
        await client.aclose()
    async with TaskQueue(settings) as queue:
        assert await queue.get_status(execution.id) is TaskStatus.SUCCESS
        assert await queue.get_result(execution.id, timeout=1) == 42
        with pytest.raises(NotFound):
            await queue.get_execution(str(uuid.uuid4()))
        with pytest.raises(NotFound):
            await queue.get_execution("not-a-uuid")


async def test_result_timeout(settings: Settings) -> None:
    async with TaskQueue(settings) as queue:
        execution = await queue.enqueue(sample_tasks.add, args=[1, 2])
        with pytest.raises(ResultTimeout):
            await queue.get_result(execution.id, timeout=0.1)


async def _raw_job(settings: Settings, payload: bytes) -> str:
    """Write a job straight into arq's keys, bypassing agentsched's enqueue."""
    job_id = str(uuid.uuid4())
    keys = Keys(settings.redis_prefix, settings.app)
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        await client.set(keys.job(job_id), payload, px=60_000)
        await client.zadd(keys.queue, {job_id: int(time.time() * 1000)})
    finally:
        await client.aclose()
    return job_id


async def test_pickle_payload_is_never_executed(
    settings: Settings, run_worker: Any, tmp_path: Path
) -> None:
    canary = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple[Any, ...]:
            return (Path.write_text, (canary, "executed"))

    payload = pickle.dumps({"t": 1, "f": "tests.noop", "a": [Exploit()], "k": {}, "et": 0})
    job_id = await _raw_job(settings, payload)
    await run_worker()
    async with TaskQueue(settings) as queue:
        await wait_known(queue, job_id)  # a busy machine may take a while to reach it
        with pytest.raises(ExecutionFailed, match="Deserialization"):
            await queue.get_result(job_id, timeout=30)
        record = await queue.get_execution(job_id)
        assert record.error_kind is not None and record.error_kind.value == "deserialization"
        # the worker keeps running
        assert await queue.get_result((await queue.enqueue("tests.noop")).id, timeout=10) is None
    assert not canary.exists()


async def test_unknown_function_in_redis_fails_with_kind(
    settings: Settings, run_worker: Any
) -> None:
    payload = b'{"t":1,"f":"os.system","a":["echo hi"],"k":{},"et":0}'
    job_id = await _raw_job(settings, payload)
    await run_worker()
    async with TaskQueue(settings) as queue:
        await wait_known(queue, job_id)
        with pytest.raises(ExecutionFailed):
            await queue.get_result(job_id, timeout=30)
        record = await queue.get_execution(job_id)
        assert record.function == "os.system"
        assert record.error_kind is not None and record.error_kind.value == "unknown_function"
        await wait_sql(queue, job_id, lambda r: r.status is TaskStatus.FAILED)


def test_new_execution_ids_are_random_version_4_uuids() -> None:
    ids = [new_execution_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for ident in ids:
        parsed = uuid.UUID(ident)
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
        assert parse_execution_id(ident) == ident  # already canonical: lower-case, dashed
    # Every bit outside the version and variant varies across ids.
    random_bits = 0xFFFFFFFF_FFFF_0FFF_3FFF_FFFFFFFFFFFF
    seen = 0
    for ident in ids:
        seen |= uuid.UUID(ident).int ^ uuid.UUID(ids[0]).int
    assert seen == random_bits


async def test_an_enqueue_answers_the_enqueued_at_its_record_keeps(settings: Settings) -> None:
    async with TaskQueue(settings) as queue:
        for durable in (False, True):
            execution = await queue.enqueue("tests.noop", durable=durable)
            assert execution.enqueued_at is not None
            assert execution.enqueued_at.microsecond % 1000 == 0  # whole ms, as stored
            assert (await queue.get_execution(execution.id)).enqueued_at == execution.enqueued_at
            if durable:
                row = await queue.runtime.executions.get(queue.app, execution.id)
                assert row is not None and row.enqueued_at == execution.enqueued_at


def test_ms_survive_the_round_trip_through_a_datetime() -> None:
    start = 1_765_000_000_000
    assert all(to_ms(from_ms(ms)) == ms for ms in range(start, start + 20_000))  # type: ignore[arg-type]
