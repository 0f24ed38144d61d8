"""The REST API over real Redis and PostgreSQL: executions, functions, health, guards.

Every test runs against `create_app(settings)` and against a plain FastAPI app that
only mounts `scheduler_router` with `scheduler_lifespan` (the `kind` parameter), so
what holds for one holds for the way users mount it. Schedules: `test_api_tasks.py`.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI
from pydantic import SecretStr

from agentsched.api import agentsched_context, scheduler_router
from agentsched.keys import Keys
from agentsched.registry import registered
from agentsched.settings import Settings
from tests.conftest import PG_ADMIN_DSN, subprocess_env
from tests.test_api_support import PREFIX, build_app, eventually, field_error, listed, serve

KINDS = ["create_app", "mounted"]
ADD = "tests.sample_tasks.add"  # @task without a name: module.function
# A well-formed id nothing has; fixed, so test ids are equal in every xdist worker.
UNKNOWN_ID = "5f0c2a4e-9d1b-4c55-8e3a-2b7f6d1e0a93"


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def client(kind: str, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(build_app(kind, settings)) as c:
        yield c


async def queue_size(settings: Settings, app: str | None = None) -> int:
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        return int(await client.zcard(Keys(settings.redis_prefix, app or settings.app).queue))
    finally:
        await client.aclose()


async def enqueue(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await client.post("/executions", json={"function": "tests.noop", **body})
    assert response.status_code == 202, response.text
    return dict(response.json())


# --- executions ---------------------------------------------------------------------------
async def test_enqueue_returns_202_with_the_queued_execution(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    response = await client.post(
        "/executions",
        json={"function": ADD, "args": [1, 2], "kwargs": {}, "delay": 30,
              "metadata": {"by": "api"}},
    )  # fmt: skip
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued" and body["function"] == ADD
    assert body["args"] == [1, 2] and body["metadata"] == {"by": "api"}
    assert body["task_id"] is None and body["attempt"] == 1 and body["enqueued_at"]
    assert response.headers["location"] == f"{PREFIX}/executions/{body['id']}"
    read = await client.get(f"/executions/{body['id']}")
    assert read.status_code == 200 and read.json()["id"] == body["id"]
    assert await queue_size(settings) == 1


async def test_enqueued_over_http_runs_on_a_worker_and_reads_back_success(
    client: httpx.AsyncClient, run_worker: Any
) -> None:
    await run_worker()
    created = await enqueue(client, function=ADD, args=[2, 3])

    async def read() -> dict[str, Any]:
        return dict((await client.get(f"/executions/{created['id']}")).json())

    done = await eventually(read, lambda e: e["status"] == "success")
    assert done["result"] == 5 and done["started_at"] and done["finished_at"]
    page = await eventually(
        lambda: listed(client, status="success"), lambda p: p["total"] == 1
    )  # the history comes from SQL, written by the recorders
    assert page["items"][0]["id"] == created["id"] and page["items"][0]["result"] == 5


async def test_a_failing_task_reads_back_failed_with_its_error(
    client: httpx.AsyncClient, run_worker: Any
) -> None:
    await run_worker()
    created = await enqueue(client, function="tests.boom", kwargs={"message": "kaput"})

    async def read() -> dict[str, Any]:
        return dict((await client.get(f"/executions/{created['id']}")).json())

    failed = await eventually(read, lambda e: e["status"] == "failed")
    assert failed["error_kind"] == "exception" and "kaput" in failed["error"]


async def test_list_filters_sorts_and_paginates_newest_first(client: httpx.AsyncClient) -> None:
    ids = [(await enqueue(client, function=f, args=a))["id"]
           for f, a in [("tests.noop", []), (ADD, [1, 1]), ("tests.noop", []),
                        (ADD, [2, 2]), ("tests.noop", [])]]  # fmt: skip
    page = await eventually(lambda: listed(client), lambda p: p["total"] == 5)
    assert [e["id"] for e in page["items"]] == ids[::-1]  # newest first
    assert page["limit"] == 50 and page["offset"] == 0

    second = await listed(client, limit=2, offset=2)
    assert [e["id"] for e in second["items"]] == ids[::-1][2:4] and second["total"] == 5
    adds = await listed(client, function=ADD)
    assert adds["total"] == 2 and {e["function"] for e in adds["items"]} == {ADD}
    oldest = await listed(client, sort="enqueued_at", order="asc", limit=1)
    assert oldest["items"][0]["id"] == ids[0]
    by_function = await listed(client, sort="function", order="asc")
    assert [e["function"] for e in by_function["items"]] == ["tests.noop"] * 3 + [ADD] * 2

    cancelled = await client.post(f"/executions/{ids[0]}/cancel")
    assert cancelled.status_code == 200
    statuses = await eventually(
        lambda: listed(client, status=["cancelled", "failed"]), lambda p: p["total"] == 1
    )
    assert statuses["items"][0]["id"] == ids[0]
    both = await client.get("/executions", params=[("status", "queued"), ("status", "cancelled")])
    assert both.json()["total"] == 5
    none = await listed(client, task_id=str(uuid.uuid4()))
    assert none == {"items": [], "total": 0, "limit": 50, "offset": 0, "next_cursor": None}


async def test_cancel_a_queued_execution_then_409_once_finished(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    created = await enqueue(client, delay=60)
    response = await client.post(f"/executions/{created['id']}/cancel")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled" and response.json()["finished_at"]
    assert await queue_size(settings) == 0
    again = await client.post(f"/executions/{created['id']}/cancel")
    assert again.status_code == 409
    assert again.json()["type"] == "already_finished" and "cancelled" in again.json()["detail"]


async def test_cancel_a_running_execution(client: httpx.AsyncClient, run_worker: Any) -> None:
    await run_worker()
    created = await enqueue(client, function="tests.sleep", args=[30])

    async def read() -> dict[str, Any]:
        return dict((await client.get(f"/executions/{created['id']}")).json())

    await eventually(read, lambda e: e["status"] == "running")
    response = await client.post(f"/executions/{created['id']}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"


async def test_cancel_of_a_succeeded_execution_is_409(
    client: httpx.AsyncClient, run_worker: Any
) -> None:
    await run_worker()
    created = await enqueue(client)

    async def read() -> dict[str, Any]:
        return dict((await client.get(f"/executions/{created['id']}")).json())

    await eventually(read, lambda e: e["status"] == "success")
    response = await client.post(f"/executions/{created['id']}/cancel")
    assert response.status_code == 409 and "success" in response.json()["detail"]


@pytest.mark.parametrize(
    "ident", [UNKNOWN_ID, "not-a-uuid", "%00", "x" * 10_000, "1' OR '1'='1"]
)
async def test_unknown_and_malformed_execution_ids_are_404(
    client: httpx.AsyncClient, ident: str
) -> None:
    for response in (
        await client.get(f"/executions/{ident}"),
        await client.post(f"/executions/{ident}/cancel"),
    ):
        assert response.status_code == 404, response.text
        assert response.json()["type"] == "not_found"


# --- hostile input: 4xx, nothing written, nothing imported ---------------------------------
@pytest.mark.parametrize(
    "function",
    ["os.system", "builtins.eval", "subprocess.run", "this.s", "tests.sample_tasks.__class__",
     "__import__", "tests..noop", "tests.noop\x00", "x" * 10_000, "", "tests.noop; rm -rf /"],
)  # fmt: skip
async def test_only_registered_functions_can_be_enqueued(
    client: httpx.AsyncClient, settings: Settings, function: str
) -> None:
    before = set(sys.modules)
    response = await client.post("/executions", json={"function": function, "args": []})
    assert field_error(response) == "function"
    assert await queue_size(settings) == 0
    assert "this" not in sys.modules and set(sys.modules) - before == set()
    assert function not in registered()


async def test_library_errors_use_the_validation_error_shape(client: httpx.AsyncClient) -> None:
    response = await client.post("/executions", json={"function": "os.system"})
    error = response.json()["detail"][0]
    assert error["loc"] == ["body", "function"] and error["type"] == "unknown_function"
    assert "not a registered task" in error["msg"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"args": ["a\x00b"]}, "args"),
        ({"kwargs": {"k\x00": 1}}, "kwargs"),
        ({"metadata": {"m": ["\x00"]}}, "metadata"),
        ({"args": [2**70]}, "args"),
        ({"args": "not a list"}, "args"),
        ({"kwargs": [1]}, "kwargs"),
        ({"delay": -1}, "delay"),
        ({"delay": 10**12}, "delay"),
        ({"eta": "2030-01-01T00:00:00"}, "eta"),
        ({"delay": 1, "eta": "2030-01-01T00:00:00Z"}, "delay"),
        ({"idempotency_key": ""}, "idempotency_key"),
        ({"unknown": 1}, "unknown"),
    ],
)
async def test_bad_execution_bodies_are_422_naming_the_field(
    client: httpx.AsyncClient, settings: Settings, body: dict[str, Any], field: str
) -> None:
    response = await client.post("/executions", json={"function": "tests.noop", **body})
    assert field_error(response) == field
    assert await queue_size(settings) == 0


async def test_malformed_json_is_4xx(client: httpx.AsyncClient, settings: Settings) -> None:
    for content in (b"{", b"\xff\xfe", b"[" * 100_000, b'{"function": NaN}'):
        response = await client.post(
            "/executions", content=content, headers={"content-type": "application/json"}
        )
        assert 400 <= response.status_code < 500, (content[:10], response.text)
    assert await queue_size(settings) == 0


@pytest.mark.parametrize(
    "params",
    [{"limit": -1}, {"limit": 0}, {"limit": 501}, {"offset": -1}, {"offset": 10**30},
     {"sort": "name;drop table x"}, {"sort": "id"}, {"order": "sideways"}, {"status": "bogus"},
     {"task_id": "not-a-uuid"}, {"function": "x" * 10_000}, {"limit": "1e3"},
     {"function": "tests.noop\x00"}, {"function": "a b"}],
)  # fmt: skip
async def test_bad_list_parameters_are_422(
    client: httpx.AsyncClient, params: dict[str, Any]
) -> None:
    response = await client.get("/executions", params=params)
    assert field_error(response) == next(iter(params))


# --- body size limit -------------------------------------------------------------------------
async def test_declared_oversized_body_is_413_and_nothing_is_written(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    big = b'{"function": "tests.noop", "args": ["' + b"x" * (10 * 1024 * 1024) + b'"]}'
    response = await client.post(
        "/executions", content=big, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413 and response.json()["type"] == "payload_too_large"
    assert await queue_size(settings) == 0


async def test_chunked_oversized_body_is_413(client: httpx.AsyncClient, settings: Settings) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"function": "tests.noop", "args": ["'
        for _ in range(160):  # 10 MiB in 64 KiB chunks, no Content-Length
            yield b"x" * 65_536
        yield b'"]}'

    response = await client.post(
        "/executions", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert await queue_size(settings) == 0


async def test_a_body_under_the_limit_is_accepted(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"function": "tests.noop", "args": ["'
        yield b"y" * 60_000
        yield b'"]}'

    response = await client.post(
        "/executions", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 202, response.text
    assert len(response.json()["args"][0]) == 60_000


# --- API key ---------------------------------------------------------------------------------
@pytest.fixture
def keyed(settings: Settings) -> Settings:
    return settings.model_copy(update={"api_key": SecretStr("s3cret-key")})


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/executions"), ("POST", "/executions"), ("GET", "/functions"),
     ("GET", "/health"), ("GET", "/tasks"), ("POST", "/tasks"),
     ("GET", f"/executions/{UNKNOWN_ID}"), ("POST", f"/tasks/{UNKNOWN_ID}/run"),
     ("DELETE", f"/tasks/{UNKNOWN_ID}")],
)  # fmt: skip
async def test_every_call_needs_the_api_key_when_set(
    kind: str, keyed: Settings, method: str, path: str
) -> None:
    async with serve(build_app(kind, keyed)) as client:
        for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": "s3cret-key "}):
            # The key is checked before the body is read, so even bad JSON is a 401.
            response = await client.request(method, path, content=b"{", headers=headers)
            assert response.status_code == 401, response.text
            assert response.json()["type"] == "unauthorized"
            assert response.headers["www-authenticate"] == "APIKey"
        ok = await client.request(method, path, headers={"X-API-Key": "s3cret-key"})
        assert ok.status_code != 401


async def test_the_right_key_enqueues(kind: str, keyed: Settings) -> None:
    async with serve(build_app(kind, keyed), **{"X-API-Key": "s3cret-key"}) as client:
        await enqueue(client)
        assert (await client.get("/functions")).status_code == 200
    app = build_app(kind, keyed)
    operation = app.openapi()["paths"][f"{PREFIX}/executions"]["post"]
    expected = [{"APIKeyHeader": []}] if kind == "create_app" else [{"APIKeyHeader": []}, {}]
    assert operation["security"] == expected


# --- functions and health ----------------------------------------------------------------------
async def test_functions_lists_registered_tasks_with_parameters(client: httpx.AsyncClient) -> None:
    body = (await client.get("/functions")).json()
    by_name = {f["name"]: f for f in body["items"]}
    assert body["total"] == len(body["items"]) >= 8
    add = by_name[ADD]
    assert [p["name"] for p in add["parameters"]] == ["a", "b"]
    assert add["parameters"][0] == {"name": "a", "annotation": "int", "required": True,
                                    "default": None}  # fmt: skip
    assert by_name["tests.flaky"]["max_retries"] == 3 and by_name["tests.slow"]["timeout"] == 0.5
    assert by_name["tests.boom"]["parameters"][0]["default"] == "'boom'"
    assert by_name["tests.sync_mul"]["is_async"] is False


async def test_health_reports_services_and_live_workers(
    client: httpx.AsyncClient, settings: Settings, run_worker: Any
) -> None:
    response = await client.get("/health")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok" and body["app"] == settings.app
    assert body["redis"]["ok"] and body["database"]["ok"] and body["workers"]["live"] == 0
    assert body["scheduler"]["ok"] and body["scheduler"]["enabled_schedules"] == 0
    await run_worker()

    async def health() -> dict[str, Any]:
        return dict((await client.get("/health")).json())

    live = await eventually(health, lambda h: h["workers"]["live"] == 1)
    assert live["workers"]["ids"][0].count(":") == 2


async def test_health_is_503_when_the_database_is_gone(settings: Settings) -> None:
    name = f"agentsched_health_{uuid.uuid4().hex[:8]}"
    base = settings.database_url.rsplit("/", 1)[0]
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        doomed = settings.model_copy(update={"database_url": f"{base}/{name}"})
        async with serve(build_app("create_app", doomed)) as client:
            assert (await client.get("/health")).status_code == 200
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            response = await client.get("/health")
            assert response.status_code == 503, response.text
            body = response.json()
            assert body["status"] == "degraded" and body["redis"]["ok"]
            assert not body["database"]["ok"] and body["database"]["error"]
            listing = await client.get("/executions")
            assert listing.status_code == 503
            assert listing.json()["type"] == "service_unavailable"
            assert name not in listing.text  # connection details stay in the log
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


# --- served for real ----------------------------------------------------------------------------
@pytest.mark.slow
async def test_uvicorn_factory_serves_the_api(settings: Settings) -> None:
    """`uvicorn agentsched.api:create_app --factory`, configured only by the environment."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = subprocess_env(settings, AGENTSCHED_API_KEY="k3y", AGENTSCHED_MAX_BODY_BYTES="65536")
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "agentsched.api:create_app", "--factory",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        env=env,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}{PREFIX}"
    try:
        async with httpx.AsyncClient(base_url=base, headers={"X-API-Key": "k3y"}) as client:

            async def health() -> int:
                try:
                    return (await client.get("/health")).status_code
                except httpx.TransportError:
                    return 0

            await eventually(health, lambda status: status == 200, timeout=30)
            assert (
                await client.get("/functions", headers={"X-API-Key": "nope"})
            ).status_code == 401
            created = await enqueue(client)
            assert (await client.get(f"/executions/{created['id']}")).json()["status"] == "queued"

            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(64):  # 4 MiB, chunked over a real socket
                    yield b"x" * 65_536

            with contextlib.suppress(httpx.TransportError):  # the server may close early
                response = await client.post(
                    "/executions", content=chunks(), headers={"content-type": "application/json"}
                )
                assert response.status_code == 413
        assert await queue_size(settings) == 1
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# --- mounting -----------------------------------------------------------------------------------
async def test_router_without_the_lifespan_answers_503() -> None:
    app = FastAPI()
    app.include_router(scheduler_router, prefix=PREFIX)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get(f"{PREFIX}/executions")
    assert response.status_code == 503 and "scheduler_lifespan" in response.json()["detail"]


async def test_agentsched_context_composes_inside_an_own_lifespan(settings: Settings) -> None:
    seen: list[str] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with agentsched_context(app, settings, tasks_files=[]) as state:
            seen.append(state.settings.app)
            yield
        seen.append("closed")

    app = FastAPI(lifespan=lifespan)
    app.include_router(scheduler_router, prefix="/scheduler")
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.post("/scheduler/executions", json={"function": "tests.noop"})
            assert response.status_code == 202
            assert response.headers["location"].startswith("/scheduler/executions/")
            bad = await client.get("/scheduler/executions/nope")
            assert bad.status_code == 404  # mapped by the router itself, no app handlers
    assert seen == [settings.app, "closed"] and not hasattr(app.state, "agentsched")


async def test_openapi_documents_every_endpoint_with_examples(
    kind: str, client: httpx.AsyncClient
) -> None:
    transport = client._transport
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as root:
        schema = (await root.get("/openapi.json")).json()
    paths = {p.removeprefix(PREFIX): set(ops) for p, ops in schema["paths"].items()}
    assert paths == {
        "/tasks": {"get", "post"},
        "/tasks/{task_id}": {"get", "patch", "delete"},
        "/tasks/{task_id}/enable": {"post"},
        "/tasks/{task_id}/disable": {"post"},
        "/tasks/{task_id}/run": {"post"},
        "/executions": {"get", "post"},
        "/executions/batch": {"post"},
        "/executions/{execution_id}": {"get"},
        "/executions/{execution_id}/cancel": {"post"},
        "/functions": {"get"},
        "/health": {"get"},
        "/events/stream": {"get"},
        "/overview": {"get"},
        "/workers": {"get"},
        "/schedule-outlook": {"get"},
        "/dead-letters": {"get"},
        "/dead-letters/{entry_id}/replay": {"post"},
        "/executions/{execution_id}/retry": {"post"},
        "/executions/{execution_id}/run-again": {"post"},
    }
    components = schema["components"]
    security = schema["paths"][f"{PREFIX}/executions"]["post"].get("security")
    if kind == "mounted":  # the router alone: the key is optional (needed only when set)
        assert components["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"
        assert security == [{"APIKeyHeader": []}, {}]
    else:  # create_app knows: no key configured, no security
        assert "securitySchemes" not in components and security is None
    for model in ("ExecutionCreate", "ExecutionRead", "TaskCreate", "TaskUpdate", "TaskRead",
                  "FunctionRead", "HealthRead"):  # fmt: skip
        assert components["schemas"][model].get("examples"), model
    cancel = schema["paths"][f"{PREFIX}/executions/{{execution_id}}/cancel"]["post"]
    assert {"404", "409"} <= set(cancel["responses"])
