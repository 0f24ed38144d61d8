"""Task progress: `agentsched.progress` from async and thread tasks, coalesced, durable."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from agentsched import TaskQueue, TaskStatus, progress
from agentsched.errors import ExecutionFailed
from agentsched.jobs.progress import Reporter, current
from agentsched.keys import Keys
from agentsched.settings import Settings
from tests.test_api_support import build_app, eventually, serve
from tests.test_queue import wait_sql


# --- the function and the reporter ---------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "error", "text"),
    [
        ((1.5,), ValueError, "between 0 and 1"),
        ((-0.1,), ValueError, "between 0 and 1"),
        ((float("nan"),), ValueError, "between 0 and 1"),
        (("half",), TypeError, "fraction must be a number"),
        ((True,), TypeError, "fraction must be a number"),
        ((0.5, 42), TypeError, "message must be a string"),
    ],
)
def test_bad_reports_say_what_is_wrong(args: tuple[Any, ...], error: type, text: str) -> None:
    with pytest.raises(error, match=text):
        progress(*args)


def test_outside_a_task_it_does_nothing() -> None:
    assert current.get() is None
    progress(0.5, "nobody listens")  # no error, no effect


async def test_reports_are_coalesced_and_the_last_one_is_written_on_close() -> None:
    sent: list[tuple[float | None, str | None]] = []

    async def send(fraction: float | None, message: str | None) -> None:
        sent.append((fraction, message))

    reporter = Reporter(send, asyncio.get_running_loop())
    token = current.set(reporter)
    try:
        for i in range(1, 101):
            progress(i / 100, f"item {i}")
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        assert sent == [(0.01, "item 1")]  # the first at once, the rest wait their turn
        progress(message="wrapping up")  # keeps the last fraction
        await reporter.close()
    finally:
        current.reset(token)
    assert sent == [(0.01, "item 1"), (1.0, "wrapping up")]


async def test_reports_from_a_thread_are_merged_before_they_reach_the_loop() -> None:
    sent: list[tuple[float | None, str | None]] = []

    async def send(fraction: float | None, message: str | None) -> None:
        sent.append((fraction, message))

    reporter = Reporter(send, asyncio.get_running_loop())
    calls = 0
    original = reporter.report

    def counting(fraction: float | None, message: str | None) -> None:
        nonlocal calls
        calls += 1
        original(fraction, message)

    reporter.report = counting  # type: ignore[method-assign]

    def work() -> None:
        for i in range(1, 2001):
            progress(i / 2000)
        progress(message="done")

    token = current.set(reporter)
    try:
        await asyncio.to_thread(work)
    finally:
        current.reset(token)
    await reporter.close()
    assert calls < 2001  # merged in the thread, not one loop callback per call
    assert sent[-1] == (1.0, "done")


async def test_a_hanging_write_holds_the_ending_up_for_a_bounded_time() -> None:
    async def send(fraction: float | None, message: str | None) -> None:
        await asyncio.sleep(60)  # Redis accepted the command and never answered

    reporter = Reporter(send, asyncio.get_running_loop())
    reporter.report(0.5, "stuck")
    started = asyncio.get_running_loop().time()
    await reporter.close(wait=0.2)
    assert asyncio.get_running_loop().time() - started < 1
    reporter.report(0.9, "after the end")  # ignored once closed
    assert reporter._task is None


async def test_a_failing_write_does_not_reach_the_task() -> None:
    async def send(fraction: float | None, message: str | None) -> None:
        raise ConnectionError("redis went away")

    reporter = Reporter(send, asyncio.get_running_loop())
    reporter.report(0.5, None)
    await reporter.close()  # logged, not raised


# --- through a real worker --------------------------------------------------------------
async def progress_events(settings: Settings, execution_id: str) -> list[dict[str, Any]]:
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        entries = await client.xrange(Keys(settings.redis_prefix, settings.app).events)
    finally:
        await client.aclose()
    events = [orjson.loads(fields[b"data"]) for _, fields in entries]
    return [
        e
        for e in events
        if e["event_type"] == "task.progress" and e["payload"]["execution_id"] == execution_id
    ]


@pytest.mark.parametrize("db_url", ["postgres", "sqlite"], indirect=True)
async def test_progress_of_a_running_task_is_visible_then_durable(
    settings: Settings, run_worker: Any, tmp_path: Path
) -> None:
    await run_worker()
    gate = tmp_path / "gate"
    async with TaskQueue(settings) as queue:
        execution = await queue.enqueue("tests.staged", args=[str(gate)])
        running = await eventually(
            lambda: queue.get_execution(execution.id), lambda e: e.progress == 0.5
        )
        assert running.status is TaskStatus.RUNNING
        assert running.progress_message == "halfway"
        gate.touch()
        assert await queue.get_result(execution.id, timeout=10) == "staged"
        done = await queue.get_execution(execution.id)
        assert (done.progress, done.progress_message) == (1.0, "finishing")
        row = await wait_sql(queue, execution.id, lambda r: r.status is TaskStatus.SUCCESS)
        assert (row.progress, row.progress_message) == (1.0, "finishing")
    events = await progress_events(settings, execution.id)
    assert {e["payload"]["progress"] for e in events} >= {0.5}
    assert events[0]["payload"]["progress_message"] in ("starting", "halfway")


async def test_a_thread_task_reports_and_a_failure_keeps_the_last_report(
    settings: Settings, run_worker: Any
) -> None:
    await run_worker()
    async with TaskQueue(settings) as queue:
        execution = await queue.enqueue("tests.sync_staged", args=[3])
        with pytest.raises(ExecutionFailed, match="after the last step"):
            await queue.get_result(execution.id, timeout=10)
        failed = await queue.get_execution(execution.id)
        assert (failed.progress, failed.progress_message) == (0.75, "step 3 of 3")
        row = await wait_sql(queue, execution.id, lambda r: r.status is TaskStatus.FAILED)
        assert (row.progress, row.progress_message) == (0.75, "step 3 of 3")


async def test_a_timed_out_threads_late_reports_do_not_reach_the_retry(
    settings: Settings, run_worker: Any, tmp_path: Path
) -> None:
    await run_worker()
    async with TaskQueue(settings) as queue:
        execution = await queue.enqueue("tests.overrun", args=[str(tmp_path / "marker")])
        assert await queue.get_result(execution.id, timeout=15) == "attempt 2"
        done = await queue.get_execution(execution.id)
        assert done.attempt == 2
        assert (done.progress, done.progress_message) == (None, None)


async def test_the_api_shows_progress(settings: Settings, run_worker: Any, tmp_path: Path) -> None:
    await run_worker()
    gate = tmp_path / "gate"
    async with serve(build_app("create_app", settings)) as client:
        response = await client.post(
            "/executions", json={"function": "tests.staged", "args": [str(gate)]}
        )
        assert response.status_code == 202, response.text
        ident = response.json()["id"]

        async def read() -> dict[str, Any]:
            reply: httpx.Response = await client.get(f"/executions/{ident}")
            return dict(reply.json())

        running = await eventually(read, lambda e: e["progress"] == 0.5)
        assert running["status"] == "running" and running["progress_message"] == "halfway"
        gate.touch()
        done = await eventually(read, lambda e: e["status"] == "success")
        assert done["progress"] == 1.0
