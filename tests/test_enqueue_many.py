"""`enqueue_many` and `POST /executions/batch`: many jobs in one round trip, all or none."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from agentsched import TaskQueue
from agentsched.errors import InvalidInput
from agentsched.jobs.batch import queued_event
from agentsched.jobs.recorder import Recorder
from agentsched.jobs.runtime import Runtime
from agentsched.serialization import loads
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


async def test_each_job_of_a_mixed_batch_keeps_its_own_record_event_and_row(
    settings: Settings,
) -> None:
    """Jobs of one call share templates in the script's arguments and one `records`
    entry: none may take another's fields, and a duplicate's snapshot reaches no SQL row."""
    items: list[dict[str, Any]] = [
        {"function": "tests.noop", "args": [1, "a"]},
        {"function": "tests.noop", "kwargs": {"n": 2}, "metadata": {"team": "x"}},
        {"function": "tests.sample_tasks.add", "args": [3, 4], "delay": 60},
        {"function": "tests.noop", "idempotency_key": "same"},
        {"function": "tests.noop", "idempotency_key": "same", "args": ["not queued"]},
        {"function": "tests.noop", "metadata": {"team": "y"}},
    ]
    async with Runtime(settings) as runtime:
        async with TaskQueue(runtime=runtime) as queue:
            made = await queue.enqueue_many(items)
            assert made[4].id == made[3].id and made[4].args == []
            created = [made[i] for i in (0, 1, 2, 3, 5)]
            for execution in created:  # what Redis keeps is what the call answered
                assert await queue.get_execution(execution.id) == execution
        await Recorder(runtime.redis, runtime.executions, queue.tracker.keys.records).drain()
        for execution, item in zip(created, [items[i] for i in (0, 1, 2, 3, 5)], strict=True):
            row = await runtime.executions.get(settings.app, execution.id)
            assert row is not None
            assert (row.function, row.args, row.kwargs, row.metadata) == (
                item["function"], item.get("args", []), item.get("kwargs", {}),
                item.get("metadata", {}),
            )  # fmt: skip
            assert row.enqueued_at == execution.enqueued_at and row.due_at == execution.due_at
        assert made[2].due_at is not None and made[2].enqueued_at is not None
        assert (made[2].due_at - made[2].enqueued_at).total_seconds() == 60
        _, total = await runtime.executions.list(settings.app, limit=100)
        assert total == 5
        entries = await runtime.redis.xrange(queue.tracker.keys.events)
        events = [loads(fields[b"data"]) for _, fields in entries]
    assert events == [
        {
            "id": f"{e.id}-1",
            "event_type": "task.queued",
            "source_agent": settings.app,
            "target_agent": None,
            "payload": {
                "execution_id": e.id,
                "function": e.function,
                "app": settings.app,
                "status": "queued",
                "attempt": 1,
                "task_id": None,
            },
            "created_at": e.enqueued_at.timestamp(),  # type: ignore[union-attr]
        }
        for e in created
    ]


def test_queued_event_text_is_the_json_of_its_fields() -> None:
    """The script joins the event's parts around the id: any name must stay valid JSON."""
    task_id = 'a "quoted" \\ task ✓ \n'
    parts = queued_event("app-1", "pkg.fn", task_id, 1_765_000_000_123)
    ident = "0b3e6c1e-1111-4222-8333-444455556666"
    assert loads(parts[0] + ident + parts[1] + ident + parts[2]) == {
        "id": f"{ident}-1",
        "event_type": "task.queued",
        "source_agent": "app-1",
        "target_agent": None,
        "payload": {
            "execution_id": ident, "function": "pkg.fn", "app": "app-1",
            "status": "queued", "attempt": 1, "task_id": task_id,
        },
        "created_at": 1_765_000_000.123,
    }  # fmt: skip


async def test_a_batch_larger_than_luas_unpack_limit(settings: Settings) -> None:
    """Lua's unpack stops near 8,000 values: the queue's members go in pieces."""
    async with TaskQueue(settings) as queue:
        executions = await queue.enqueue_many([{"function": "tests.noop"}] * 5_000)
        assert await queue.tracker.redis.zcard(queue.tracker.keys.queue) == 5_000
        assert len({e.id for e in executions}) == 5_000


async def test_a_malformed_batch_entry_is_dropped_not_retried(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    async with Runtime(settings) as runtime:
        stream = runtime.tracker().keys.records
        await runtime.redis.xadd(stream, {"b": b"[[], [[5, 1]]]"})
        await runtime.redis.xadd(stream, {"b": b"not json"})
        recorder = Recorder(runtime.redis, runtime.executions, stream)
        await recorder.drain()
        assert await runtime.redis.xlen(stream) == 0
    assert caplog.text.count("dropping malformed enqueue snapshots") == 2


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


async def test_the_recorder_writes_a_large_batch_in_statements_of_its_size(
    settings: Settings,
) -> None:
    async with Runtime(settings) as runtime:
        async with TaskQueue(runtime=runtime) as queue:
            made = await queue.enqueue_many([{"function": "tests.noop"}] * 1_200)
        store = runtime.executions
        sizes: list[int] = []
        upsert = store.upsert_many

        async def counted(rows: Any) -> int:
            sizes.append(len(rows))
            return await upsert(rows)

        store.upsert_many = counted  # type: ignore[method-assign]
        recorder = Recorder(runtime.redis, store, queue.tracker.keys.records, batch=500)
        await recorder.drain()
        assert sizes == [500, 500, 200]
        listed: set[str] = set()
        for offset in (0, 500, 1000):
            page, total = await store.list(settings.app, limit=500, offset=offset)
            listed |= {e.id for e in page}
        assert total == 1_200 and listed == {e.id for e in made}
