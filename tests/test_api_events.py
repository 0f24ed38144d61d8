"""`GET /events/stream` over a real uvicorn server: frames, filters, resume, auth, 422.

httpx's in-process `ASGITransport` does not stream reliably, so each test serves
`create_app(settings)` with uvicorn on a free loopback port and reads the stream over
TCP. The route pins `$` when it first reads, a moment after the headers went out, so
"after connecting" means after a probe event (`test.ready`) came through the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr

from agentsched import EventBus, TaskQueue
from agentsched.api import create_app, routes_events
from agentsched.api.deps import STATE_ATTR, ApiState
from agentsched.settings import Settings
from tests.test_api_support import PREFIX, eventually, field_error

Frame = dict[str, str]
ADD = "tests.sample_tasks.add"
PROBE = "test.ready"


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    """Run `app` under uvicorn (lifespan on) on a free port; yield the API's base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="on", http="h11", log_config=None,
                            log_level="warning", timeout_graceful_shutdown=5)  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not task.done(), "uvicorn stopped during start-up"
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}{PREFIX}/events/stream"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


@pytest.fixture
async def url(settings: Settings) -> AsyncIterator[str]:
    async with serving(create_app(settings, tasks_files=[])) as base:
        yield base


async def _read(response: httpx.Response, frames: asyncio.Queue[Frame]) -> None:
    frame: Frame = {}
    async for line in response.aiter_lines():
        if not line and frame:
            await frames.put(frame)
            frame = {}
        elif line and not line.startswith(":"):  # ":" starts a comment (keepalive)
            field, _, value = line.partition(": ")
            frame[field] = value


@asynccontextmanager
async def stream(url: str, params: Any = None, **headers: str) -> AsyncIterator[
        asyncio.Queue[Frame]]:  # fmt: skip
    """Open the stream (200 asserted) and yield a queue of its parsed frames."""
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream("GET", url, params=params, headers=headers) as response,
    ):
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        frames: asyncio.Queue[Frame] = asyncio.Queue()
        reader = asyncio.create_task(_read(response, frames))
        try:
            yield frames
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


async def next_frame(frames: asyncio.Queue[Frame], timeout: float = 5.0) -> Frame:
    """The next frame that is not a probe."""
    while (frame := await asyncio.wait_for(frames.get(), timeout))["event"] == PROBE:
        pass
    return frame


async def go_live(bus: EventBus, frames: asyncio.Queue[Frame]) -> None:
    """Publish probes until one comes through: the stream follows the bus from here."""
    for _ in range(25):
        await bus.publish(PROBE)
        with contextlib.suppress(TimeoutError):
            if (await asyncio.wait_for(frames.get(), 0.2))["event"] == PROBE:
                return
    raise AssertionError("no probe came through the stream")


@pytest.fixture
async def bus(settings: Settings) -> AsyncIterator[EventBus]:
    async with EventBus("publisher", settings=settings) as b:
        yield b


async def test_an_event_published_after_connecting_arrives_as_a_frame(
    url: str, bus: EventBus
) -> None:
    async with stream(url) as frames:
        await go_live(bus, frames)
        sent = await bus.publish("demo.hello", {"n": 1}, target_agent="someone-else")
        frame = await next_frame(frames)
    assert (frame["id"], frame["event"]) == (sent.stream_id, "demo.hello")
    data = json.loads(frame["data"])
    assert (data["id"], data["event_type"], data["payload"]) == (sent.id, "demo.hello", {"n": 1})
    assert (data["source_agent"], data["target_agent"]) == ("publisher", "someone-else")


async def test_pattern_filters_task_lifecycle_events(
    url: str, bus: EventBus, settings: Settings
) -> None:
    async with stream(url, params={"pattern": ["task.*", PROBE]}) as frames:
        await go_live(bus, frames)
        await bus.publish("other.thing")  # before task.queued: would arrive first
        async with TaskQueue(settings) as queue:
            execution = await queue.enqueue(ADD, args=[1, 2])
        frame = await next_frame(frames)
    assert frame["event"] == "task.queued", frame
    payload = json.loads(frame["data"])["payload"]
    assert (payload["execution_id"], payload["function"]) == (execution.id, ADD)
    assert payload["status"] == "queued"


async def test_last_event_id_resumes_after_it_and_wins_over_from_id(
    url: str, bus: EventBus
) -> None:
    a, b, c = [await bus.publish("demo.step", {"n": n}) for n in range(3)]
    async with stream(url, {"from_id": "$"}, **{"Last-Event-ID": str(a.stream_id)}) as frames:
        assert [(await next_frame(frames))["id"] for _ in "bc"] == [b.stream_id, c.stream_id]
    async with stream(url, {"from_id": b.stream_id}) as frames:
        assert json.loads((await next_frame(frames))["data"])["id"] == c.id


async def test_disconnect_stops_the_bus_and_keeps_the_apps_redis(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    stopped: list[EventBus] = []

    class Spy(EventBus):
        async def stop(self) -> None:
            await super().stop()
            stopped.append(self)

    monkeypatch.setattr(routes_events, "EventBus", Spy)
    app = create_app(settings, tasks_files=[])
    async with serving(app) as base:
        async with stream(base):
            await asyncio.sleep(0.3)  # the server is now blocked in XREAD

        async def stops() -> int:
            return len(stopped)

        await eventually(stops, lambda n: n == 1, timeout=3)
        state = getattr(app.state, STATE_ATTR)
        assert isinstance(state, ApiState) and await state.runtime.redis.ping()
        assert stopped[0]._tails == 0


async def test_the_api_key_is_required_when_set(settings: Settings) -> None:
    keyed = settings.model_copy(update={"api_key": SecretStr("k")})
    async with serving(create_app(keyed, tasks_files=[])) as base:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(base)
        assert response.status_code == 401, response.text
        assert response.json()["type"] == "unauthorized"
        async with stream(base, **{"X-API-Key": "k"}):
            pass


async def test_bad_arguments_are_422_naming_the_field(url: str) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        assert field_error(await client.get(url, params={"from_id": "abc"})) == "from_id"
        assert field_error(await client.get(url, params={"pattern": ""})) == "pattern"
        bad_header = await client.get(url, headers={"Last-Event-ID": "abc"})
        assert field_error(bad_header) == "last-event-id"
