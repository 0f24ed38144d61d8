"""Two apps side by side on one Redis prefix and one database: each sees only its own.

App A and app B differ only in `AGENTSCHED_APP`. Every endpoint of B, given A's ids,
answers 404 and changes nothing of A's; B's lists never show A's rows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from agentsched.keys import Keys
from agentsched.settings import Settings
from tests.test_api_support import build_app, eventually, listed, serve


@pytest.fixture(params=["create_app", "mounted"])
async def clients(
    request: pytest.FixtureRequest, settings: Settings
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    other = settings.model_copy(update={"app": settings.app + "-other"})
    kind = str(request.param)
    async with serve(build_app(kind, settings)) as a, serve(build_app(kind, other)) as b:
        yield a, b


async def snapshot(client: httpx.AsyncClient, task_id: str, execution_id: str) -> Any:
    task = (await client.get(f"/tasks/{task_id}")).json()
    execution = (await client.get(f"/executions/{execution_id}")).json()
    return task, execution


async def test_another_apps_ids_are_404_and_nothing_changes(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient], settings: Settings
) -> None:
    a, b = clients
    task = (await a.post("/tasks", json={"name": "mine", "function": "tests.noop",
                                         "interval": 3600})).json()  # fmt: skip
    execution = (await a.post("/executions", json={"function": "tests.noop", "delay": 600})).json()
    await eventually(lambda: listed(a), lambda p: p["total"] == 1)
    before = await snapshot(a, task["id"], execution["id"])

    tid, xid = task["id"], execution["id"]
    calls = [
        ("GET", f"/tasks/{tid}", None),
        ("PATCH", f"/tasks/{tid}", {"enabled": False, "name": "stolen"}),
        ("POST", f"/tasks/{tid}/enable", None),
        ("POST", f"/tasks/{tid}/disable", None),
        ("POST", f"/tasks/{tid}/run", None),
        ("DELETE", f"/tasks/{tid}", None),
        ("GET", f"/executions/{xid}", None),
        ("POST", f"/executions/{xid}/cancel", None),
    ]
    for method, path, body in calls:
        response = await b.request(method, path, json=body)
        assert response.status_code == 404, (method, path, response.text)

    assert await snapshot(a, tid, xid) == before  # still enabled, named, queued
    assert (await listed(b, "/tasks"))["total"] == 0
    assert (await listed(b))["total"] == 0
    assert (await listed(b, task_id=tid))["total"] == 0
    assert (await listed(a, task_id=tid))["total"] == 0  # B's run attempt enqueued nothing
    redis = aioredis.Redis.from_url(settings.redis_url)
    try:
        assert await redis.zcard(Keys(settings.redis_prefix, settings.app + "-other").queue) == 0
        assert await redis.zcard(Keys(settings.redis_prefix, settings.app).queue) == 1
    finally:
        await redis.aclose()


async def test_same_schedule_name_in_two_apps(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    a, b = clients
    body = {"name": "digest", "function": "tests.noop", "cron": "0 7 * * *"}
    first = await a.post("/tasks", json=body)
    second = await b.post("/tasks", json=body)
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] != second.json()["id"]
    assert [t["name"] for t in (await listed(b, "/tasks"))["items"]] == ["digest"]
    assert (await b.delete(f"/tasks/{second.json()['id']}")).status_code == 204
    assert (await a.get(f"/tasks/{first.json()['id']}")).status_code == 200


async def test_health_reports_each_apps_own_name(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient], settings: Settings
) -> None:
    a, b = clients
    assert (await a.get("/health")).json()["app"] == settings.app
    assert (await b.get("/health")).json()["app"] == settings.app + "-other"
