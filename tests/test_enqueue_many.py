"""`enqueue_many` and `POST /executions/batch`: many jobs in one round trip, all or none."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from agentsched import TaskQueue
from agentsched.errors import InvalidInput
from agentsched.settings import Settings
from agentsched.status import TaskStatus
from tests.test_api_support import build_app, serve


async def test_many_jobs_in_one_call_all_run(settings: Settings, run_worker: Any) -> None:
    await run_worker()
    async with TaskQueue(settings) as queue:
        executions = await queue.enqueue_many(
            [{"function": "tests.sample_tasks.add", "args": [i, i]} for i in range(200)]
        )
        assert [e.status for e in executions] == [TaskStatus.QUEUED] * 200
        assert len({e.id for e in executions}) == 200
        results = [await queue.get_result(e.id, timeout=30) for e in executions]
    assert results == [2 * i for i in range(200)]


async def test_one_bad_item_queues_nothing(settings: Settings) -> None:
    async with TaskQueue(settings) as queue:
        items = [
            {"function": "tests.sample_tasks.add", "args": [1, 2]},
            {"function": "tests.sample_tasks.add", "args": [1], "kwargs": {"c": 3}},
        ]
        with pytest.raises(InvalidInput) as raised:
            await queue.enqueue_many(items)
        assert raised.value.field.startswith("items[1].")
        with pytest.raises(InvalidInput, match=r"items\[0\]\.colour"):
            await queue.enqueue_many([{"function": "tests.noop", "colour": "red"}])
        assert await queue.tracker.redis.zcard(queue.tracker.keys.queue) == 0
        assert await queue.enqueue_many([]) == []


async def test_idempotency_keys_dedup_inside_and_across_batches(settings: Settings) -> None:
    async with TaskQueue(settings) as queue:
        first = await queue.enqueue("tests.noop", idempotency_key="k1")
        again = await queue.enqueue_many(
            [{"function": "tests.noop", "idempotency_key": "k1"}, {"function": "tests.noop"}]
        )
    assert again[0].id == first.id and again[1].id != first.id


@pytest.mark.parametrize("db_url", ["postgres", "sqlite"], indirect=True)
async def test_durable_batch_rows_are_in_sql_on_return(settings: Settings) -> None:
    async with TaskQueue(settings) as queue:
        executions = await queue.enqueue_many(
            [{"function": "tests.noop", "delay": 60} for _ in range(50)], durable=True
        )
        for execution in executions:
            row = await queue.runtime.executions.get(settings.app, execution.id)
            assert row is not None and row.status is TaskStatus.QUEUED


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(build_app("create_app", settings)) as c:
        yield c


async def test_batch_endpoint(client: httpx.AsyncClient) -> None:
    body = {"items": [{"function": "tests.noop", "kwargs": {"n": i}} for i in range(3)]}
    response = await client.post("/executions/batch", json=body)
    assert response.status_code == 202, response.text
    items = response.json()["items"]
    assert [i["kwargs"] for i in items] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert {i["status"] for i in items} == {"queued"}
    bad = await client.post(
        "/executions/batch",
        json={"items": [{"function": "tests.noop"}, {"function": "tests.nope"}]},
    )
    assert bad.status_code == 422, bad.text
    assert "items" in bad.text and "tests.nope" in bad.text
    assert (await client.post("/executions/batch", json={"items": []})).status_code == 422
    listed = (await client.get("/executions")).json()
    assert all(i["function"] == "tests.noop" for i in listed["items"])
