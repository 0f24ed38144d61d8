"""A corrupted execution hash in Redis: the API reads SQL or answers a JSON 503, never a 500."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis

from agentsched.errors import CorruptRecord
from agentsched.jobs.queue import TaskQueue
from agentsched.keys import Keys
from agentsched.settings import Settings
from tests.test_api_support import build_app, eventually, serve

CORRUPTIONS = [
    {"function": b"\xff\xfe not utf-8"},
    {"status": b"exploded"},
    {"attempt": b"two"},
]


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(build_app("create_app", settings)) as c:
        yield c


@pytest.fixture
async def raw(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    r = aioredis.Redis.from_url(settings.redis_url)
    yield r
    await r.aclose()


@pytest.mark.parametrize("corruption", CORRUPTIONS, ids=["bytes", "status", "attempt"])
async def test_a_corrupted_record_is_read_from_sql(
    client: httpx.AsyncClient, raw: aioredis.Redis, settings: Settings,
    corruption: dict[str, bytes], caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    created = await client.post("/executions", json={"function": "tests.noop"})
    assert created.status_code == 202, created.text
    ident = created.json()["id"]
    # The API's recorder writes the row to SQL; then the hash goes bad.
    await eventually(lambda: client.get("/executions"), lambda r: r.json()["total"] == 1)
    await raw.hset(Keys(settings.redis_prefix, settings.app).execution(ident), mapping=corruption)
    caplog.set_level(logging.WARNING, "agentsched.execution")
    for _ in range(3):
        response = await client.get(f"/executions/{ident}")
        assert response.status_code == 200, response.text
        assert response.json()["id"] == ident and response.json()["status"] == "queued"
    logged = [r for r in caplog.records if ident in r.getMessage()]
    assert len(logged) == 1 and "unreadable" in logged[0].getMessage()  # once, not per read
    cancelled = await client.post(f"/executions/{ident}/cancel")
    assert cancelled.status_code in (200, 409, 503), cancelled.text


async def test_a_corrupted_record_without_a_row_is_a_json_503(
    client: httpx.AsyncClient, raw: aioredis.Redis, settings: Settings
) -> None:
    ident = str(uuid.uuid4())
    key = Keys(settings.redis_prefix, settings.app).execution(ident)
    await raw.hset(key, mapping={"id": ident, "app": settings.app, "status": b"\xc3\x28"})
    response = await client.get(f"/executions/{ident}")
    assert response.status_code == 503
    assert response.json()["type"] == "service_unavailable"
    assert "unreadable" in response.json()["detail"]
    async with TaskQueue(settings) as queue:
        with pytest.raises(CorruptRecord):
            await queue.get_execution(ident)
