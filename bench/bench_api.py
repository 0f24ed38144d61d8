"""REST API benchmark: agentsched's router against a bare FastAPI app, in one run.

    python bench/bench_api.py [--rows 100000] [--gets 300] [--posts 3000] [--concurrency 16]

Both apps are served the same way: `uvicorn <factory> --factory` in a subprocess on a
loopback port, one worker, no access log. It measures
  1. `GET /api/scheduler/executions?limit=100` over `--rows` executions of one app
     (bulk-inserted with COPY, then VACUUM ANALYZE): sequential requests, p50 and p95
     (target: p50 <= 20 ms); the bare app returns 100 static items;
  2. `POST /api/scheduler/executions` of a registered no-op task (Redis enqueue and the
     API's recorder writing the rows to SQL), requests/s from an async httpx load
     generator with `--concurrency` requests in flight (target: >= 500 req/s); the bare
     app validates the same body and returns it.
Uses its own PostgreSQL database (created and dropped here) and its own Redis prefix.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import redis.asyncio as aioredis
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# httpcore imports sniffio on every request when it is not installed, and a failed
# import searches sys.path each time: a cached "absent" makes the client cheaper.
sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]

from fastapi import FastAPI
from pydantic import BaseModel, Field

from agentsched.db.engine import open_database
from bench.common import pg_admin, pg_url, verdict

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
PG_DB = f"agentsched_bench_api_{os.getpid()}"
APP = "bench-api"
GET_P50_TARGET_MS = 20.0
POST_RPS_TARGET = 500.0
STATUSES = ("success", "success", "success", "failed", "queued", "running", "cancelled")
FUNCTIONS = ("tests.noop", "tests.add", "tests.sync_mul", "email.send_digest")


# --- the bare app, served the same way: uvicorn bench.bench_api:bare_app --factory ------
class _Body(BaseModel):
    function: str = Field(min_length=1, max_length=512)
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)


def bare_app() -> FastAPI:
    """A trivial FastAPI app: the framework's own cost on this machine."""
    app = FastAPI()
    item = {"function": "tests.noop", "status": "success", "attempt": 1, "args": [],
            "kwargs": {}, "result": None}  # fmt: skip
    items = [{"id": str(uuid.uuid4()), **item} for _ in range(100)]

    @app.get("/items")
    async def list_items(limit: int = 100) -> dict[str, Any]:
        return {"items": items[:limit], "total": 100_000, "limit": limit, "offset": 0}

    @app.post("/executions", status_code=202)
    async def create(body: _Body) -> dict[str, Any]:
        return {"id": str(uuid.uuid4()), "status": "queued", **body.model_dump()}

    return app


# --- setup -------------------------------------------------------------------------------
async def seed(rows: int) -> float:
    """Create the tables and COPY `rows` executions of APP in; returns seconds taken."""
    started = time.perf_counter()
    engine = await open_database(pg_url(PG_DB))
    await engine.dispose()
    base = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    records = []
    for i in range(rows):
        status = STATUSES[i % len(STATUSES)]
        enqueued = base + dt.timedelta(seconds=i * 25)
        done = status in ("success", "failed", "cancelled")
        records.append((
            str(uuid.uuid4()), None, APP, FUNCTIONS[i % len(FUNCTIONS)], status,
            json.dumps([i, i + 1]), json.dumps({"n": i}),
            json.dumps(i * 2) if status == "success" else None,
            "ValueError: boom" if status == "failed" else None,
            "exception" if status == "failed" else None,
            1, 1, None, enqueued, enqueued if status != "queued" else None,
            enqueued + dt.timedelta(milliseconds=40) if done else None,
            json.dumps({"by": "bench"}), 3,
        ))  # fmt: skip
    conn = await asyncpg.connect(pg_url(PG_DB, "postgresql"))
    try:
        await conn.copy_records_to_table(
            "task_executions",
            records=records,
            columns=["id", "task_id", "app", "function", "status", "args", "kwargs", "result",
                     "error", "error_kind", "attempt", "max_tries", "scheduled_for",
                     "enqueued_at", "started_at", "finished_at", "metadata", "seq"],
        )  # fmt: skip
        await conn.execute("VACUUM ANALYZE task_executions")
    finally:
        await conn.close()
    return time.perf_counter() - started


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def served(factory: str, env: dict[str, str]) -> Iterator[tuple[str, int]]:
    """`uvicorn factory --factory` on a free loopback port; yields its base URL and pid."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", factory, "--factory", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1", "--no-access-log", "--log-level", "warning"],
        env=env, cwd=ROOT,
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def wait_ready(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while True:
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not become ready in {timeout}s")
            await asyncio.sleep(0.1)


# --- measurements ------------------------------------------------------------------------
async def latency(url: str, n: int) -> tuple[float, float]:
    """p50 and p95 in ms of `n` sequential GETs (after a warm-up)."""
    async with httpx.AsyncClient() as client:
        for _ in range(20):
            (await client.get(url)).raise_for_status()
        samples = []
        for _ in range(n):
            started = time.perf_counter()
            response = await client.get(url)
            samples.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95) - 1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def throughput(url: str, n: int, concurrency: int, ids: list[str]) -> float:
    """Requests/s of `n` POSTs with `concurrency` in flight (after a warm-up).

    One client (one keep-alive connection) per in-flight request: httpx's shared pool
    scans all its connections on every request, which at 32 connections costs more
    CPU than the server spends per request on this machine.
    """
    body = orjson.dumps(
        {"function": "tests.noop", "args": [], "kwargs": {}, "metadata": {"by": "bench"}}
    )
    remaining = n

    async def worker() -> None:
        nonlocal remaining
        async with httpx.AsyncClient(timeout=30) as client:
            request = client.build_request(
                "POST", url, content=body, headers={"content-type": "application/json"}
            )
            while remaining > 0:
                remaining -= 1
                response = await client.send(request)
                if response.status_code != 202:
                    raise RuntimeError(f"POST {url}: {response.status_code} {response.text}")
                ids.append(orjson.loads(response.content)["id"])

    remaining = 200
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    remaining = n
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - started)


async def cleanup_redis(prefix: str, ids: list[str]) -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=prefix + "*", count=1000)]
        keys += [f"arq:job:{i}" for i in ids]  # arq's job keys keep arq's own names
        for i in range(0, len(keys), 1000):
            await client.delete(*keys[i : i + 1000])
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def database() -> AsyncIterator[None]:
    await pg_admin(f'DROP DATABASE IF EXISTS "{PG_DB}" WITH (FORCE)')
    await pg_admin(f'CREATE DATABASE "{PG_DB}"')
    try:
        yield
    finally:
        await pg_admin(f'DROP DATABASE IF EXISTS "{PG_DB}" WITH (FORCE)')


async def run(args: argparse.Namespace) -> int:
    prefix = f"bench:api:{uuid.uuid4().hex[:8]}:"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSCHED_")}
    env.update(
        AGENTSCHED_REDIS_URL=REDIS_URL, AGENTSCHED_DATABASE_URL=pg_url(PG_DB), AGENTSCHED_APP=APP,
        AGENTSCHED_REDIS_PREFIX=prefix, AGENTSCHED_TASK_MODULES="tests.sample_tasks",
        AGENTSCHED_LOG_LEVEL="WARNING", PYTHONPATH=str(ROOT),
    )  # fmt: skip
    ids: list[str] = []
    async with database():
        try:
            seconds = await seed(args.rows)
            print(f"seeded {args.rows} executions in {seconds:.1f}s (COPY + VACUUM ANALYZE)")
            with (
                served("agentsched.api:create_app", env) as (api, api_pid),
                served("bench.bench_api:bare_app", env) as (bare, bare_pid),
            ):
                await wait_ready(f"{api}/api/scheduler/health")
                await wait_ready(f"{bare}/items")
                api_p50, api_p95 = await latency(
                    f"{api}/api/scheduler/executions?limit=100", args.gets
                )
                bare_p50, bare_p95 = await latency(f"{bare}/items?limit=100", args.gets)
                cpu = cpu_seconds(api_pid)
                api_rps = await throughput(
                    f"{api}/api/scheduler/executions", args.posts, args.concurrency, ids
                )
                api_cpu_ms = (cpu_seconds(api_pid) - cpu) * 1000 / (args.posts + 200)
                cpu = cpu_seconds(bare_pid)
                bare_rps = await throughput(f"{bare}/executions", args.posts, args.concurrency, [])
                bare_cpu_ms = (cpu_seconds(bare_pid) - cpu) * 1000 / (args.posts + 200)
        finally:
            await cleanup_redis(prefix, ids)
    get_ok = api_p50 <= GET_P50_TARGET_MS
    post_ok = api_rps >= POST_RPS_TARGET
    print(f"\nGET /executions?limit=100 over {args.rows:,} rows, {args.gets} sequential requests")
    print(f"  agentsched  p50 {api_p50:6.2f} ms  p95 {api_p95:6.2f} ms   "
          f"target p50 <= {GET_P50_TARGET_MS:.0f} ms: {verdict(get_ok)}")  # fmt: skip
    print(f"  bare        p50 {bare_p50:6.2f} ms  p95 {bare_p95:6.2f} ms   "
          f"(agentsched/bare p50 = {api_p50 / bare_p50:.1f}x)")  # fmt: skip
    print(f"POST /executions, {args.posts} requests, {args.concurrency} in flight, one worker")
    print(f"  agentsched  {api_rps:7.0f} req/s  server CPU {api_cpu_ms:.2f} ms/request   "
          f"target >= {POST_RPS_TARGET:.0f} req/s: {verdict(post_ok)}")  # fmt: skip
    print(f"  bare        {bare_rps:7.0f} req/s  server CPU {bare_cpu_ms:.2f} ms/request   "
          f"(agentsched/bare = {api_rps / bare_rps:.2f}x)")  # fmt: skip
    load = os.getloadavg()[0]
    print(f"(2-core machine, load average {load:.1f} at the end: other processes share the CPUs)")
    return 0 if get_ok and post_ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--gets", type=int, default=300)
    parser.add_argument("--posts", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    raise SystemExit(uvloop.run(run(args)))


if __name__ == "__main__":
    main()
