"""Shared helpers of the REST API tests (no tests here): apps built both ways, a client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import httpx
from fastapi import FastAPI

from agentsched.api import create_app, scheduler_lifespan, scheduler_router
from agentsched.settings import Settings

T = TypeVar("T")
PREFIX = "/api/scheduler"


def mounted_app(settings: Settings) -> FastAPI:
    """A user's own app: only the router and the lifespan helper, no create_app."""
    app = FastAPI(lifespan=scheduler_lifespan(settings, tasks_files=[]))
    app.include_router(scheduler_router, prefix=PREFIX)
    return app


def build_app(kind: str, settings: Settings) -> FastAPI:
    if kind == "create_app":
        return create_app(settings, tasks_files=[])
    return mounted_app(settings)


@asynccontextmanager
async def serve(app: FastAPI, **headers: str) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan and yield a client talking to it in-process."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test" + PREFIX, headers=headers
        ) as client:
            yield client


async def eventually(
    probe: Callable[[], Awaitable[T]], check: Callable[[T], bool], timeout: float = 10.0
) -> T:
    """Call `probe` until `check` holds for its value; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    value = await probe()
    while not check(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition never held; last value: {value!r}")
        await asyncio.sleep(0.05)
        value = await probe()
    return value


async def listed(client: httpx.AsyncClient, path: str = "/executions", **params: Any) -> Any:
    response = await client.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def field_error(response: httpx.Response) -> str:
    """The field a 422 names: the first error's `loc` after "body" / "query" / "path"."""
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, list) and detail, detail
    loc = detail[0]["loc"]
    assert detail[0]["msg"] and "input" not in detail[0], detail
    return str(loc[1] if len(loc) > 1 and loc[0] in ("body", "query", "path") else loc[0])
