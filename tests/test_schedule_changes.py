"""A scheduler loop reads SQL only when a schedule changed (told through Redis), when
the fire time it knows of has come, or after `changes.RECHECK` (scheduling/changes.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from agentsched.jobs.runtime import Runtime
from agentsched.registry import import_task_modules
from agentsched.scheduling.changes import counter_key
from agentsched.scheduling.service import Scheduler, SchedulerService
from agentsched.settings import Settings

TICK = 0.02  # s: a loop that read SQL every tick would read it ~15 times below


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    import_task_modules(settings.task_modules)
    async with Runtime(settings) as rt:
        yield rt


def counting_reads(service: SchedulerService) -> list[float]:
    """The times the loop reads the app's earliest fire time from SQL, from now on."""
    reads: list[float] = []
    store = service.scheduler.store
    real = store.next_due

    async def counted(app: str) -> dt.datetime | None:
        reads.append(time.monotonic())
        return await real(app)

    store.next_due = counted  # type: ignore[method-assign]
    return reads


async def wait_for(check: Callable[[], Any], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"not {what} within {within}s"
        await asyncio.sleep(0.01)


async def fired(scheduler: Scheduler, schedule_id: str) -> bool:
    return (await scheduler.get(schedule_id)).last_run_at is not None


async def test_an_idle_loop_reads_sql_only_after_a_change(runtime: Runtime) -> None:
    service = SchedulerService(runtime, tick=TICK)
    reads = counting_reads(service)
    await service.start()
    try:
        await wait_for(lambda: asyncio.sleep(0, bool(reads)), 5, "read once")
        await asyncio.sleep(15 * TICK)
        assert len(reads) == 1  # nothing changed: one GET a tick, no SQL
        # Another process's Scheduler (the API's), on its own runtime: the loop learns
        # of the new schedule through Redis and fires it when it is due.
        async with Runtime(runtime.settings) as api:
            schedule = await Scheduler(api).create(
                {"name": "soon", "function": "tests.noop", "interval": 1}
            )
        await wait_for(lambda: asyncio.sleep(0, len(reads) >= 2), 2, "read after the change")
        await wait_for(lambda: fired(service.scheduler, schedule.id), 5, "fired")
    finally:
        await service.stop()


@pytest.mark.parametrize("change", ["create", "update", "disable", "delete", "load"])
async def test_every_change_through_the_scheduler_is_told(
    runtime: Runtime, tmp_path: Path, change: str
) -> None:
    app = runtime.settings.app
    hourly = {"name": "hourly", "function": "tests.noop", "interval": 3600}
    existing = await Scheduler(runtime).create(hourly)
    service = SchedulerService(runtime, tick=TICK)
    reads = counting_reads(service)
    await service.start()
    try:
        await wait_for(lambda: asyncio.sleep(0, bool(reads)), 5, "read once")
        async with Runtime(runtime.settings) as api:  # another process's, as the API's
            other = Scheduler(api)
            if change == "create":
                await other.create({**hourly, "name": "another"})
            elif change == "update":
                await other.update(existing.id, {"interval": 60})
            elif change == "disable":
                await other.disable(existing.id)
            elif change == "delete":
                await other.delete(existing.id)
            else:
                path = tmp_path / "tasks.yaml"
                path.write_text(
                    f"app: {app}\ntasks:\n  - name: filed\n    function: tests.noop\n"
                    "    interval: 60\n"
                )
                await other.load_file(path)
        # Read again at once (a tick), not after the 30 s recheck.
        await wait_for(lambda: asyncio.sleep(0, len(reads) >= 2), 2, f"read after {change}")
    finally:
        await service.stop()


async def test_a_change_made_in_sql_by_hand_is_seen_within_the_recheck(
    runtime: Runtime,
) -> None:
    scheduler = Scheduler(runtime)
    later = await scheduler.create({"name": "later", "function": "tests.noop", "interval": 3600})
    service = SchedulerService(runtime, tick=TICK)
    service._due.recheck = 0.3
    reads = counting_reads(service)
    await service.start()
    try:
        await wait_for(lambda: asyncio.sleep(0, bool(reads)), 5, "read once")
        # Around the Scheduler: no counter bump, so only the recheck finds it.
        now = dt.datetime.now(dt.UTC)
        assert await scheduler.store.update(runtime.settings.app, later.id, {"next_run_at": now})
        await wait_for(lambda: fired(scheduler, later.id), 3, "fired after the recheck")
        assert reads[1] - reads[0] >= 0.25  # by the recheck, not by a tick
    finally:
        await service.stop()


async def test_a_change_redis_cannot_be_told_of_is_still_made(
    runtime: Runtime, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def down(*args: Any) -> None:
        raise RedisConnectionError("Connection refused")

    monkeypatch.setattr(runtime.redis, "incr", down)
    scheduler = Scheduler(runtime)
    with caplog.at_level(logging.WARNING, logger="agentsched.scheduler"):
        made = await scheduler.create({"name": "made", "function": "tests.noop", "interval": 60})
    assert (await scheduler.get(made.id)).name == "made"
    (line,) = [r.getMessage() for r in caplog.records if "could not be told" in r.getMessage()]
    assert "within 30 s" in line and "ConnectionError" in line


async def test_a_counter_redis_will_not_read_falls_back_to_sql(runtime: Runtime) -> None:
    # An error no retry cures (here a key of another type; an ACL without GET is
    # another): every tick reads SQL, as before the counter, and schedules still fire.
    scheduler = Scheduler(runtime)
    soon = await scheduler.create({"name": "soon", "function": "tests.noop", "interval": 1})
    key = counter_key(runtime, runtime.settings.app)
    await runtime.redis.delete(key)
    await runtime.redis.hset(key, "not", "a counter")
    service = SchedulerService(runtime, tick=TICK)
    reads = counting_reads(service)
    await service.start()
    try:
        await wait_for(lambda: fired(scheduler, soon.id), 5, "fired")
        assert len(reads) > 2
    finally:
        await service.stop()
