"""`/functions` (the registered task functions) and `/health` (services and workers)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Any

from fastapi import Response
from sqlalchemy import text

from agentsched.api.deps import ApiState, State
from agentsched.api.deps import scheduler_router as router
from agentsched.api.errors import error_responses
from agentsched.api.models import (
    FunctionList,
    FunctionRead,
    HealthRead,
    RedisHealth,
    SchedulerHealth,
    ServiceHealth,
    WorkersHealth,
)
from agentsched.jobs.redis_checks import redis_durability
from agentsched.registry import registered
from agentsched.serialization import now_ms

TAGS: list[str | Enum] = ["system"]
CHECK_TIMEOUT = 2.0
# A worker renews its heartbeat every lease/3 seconds; three leases of silence = gone.
LIVE_LEASES = 3


@router.get(
    "/functions",
    tags=TAGS,
    operation_id="list_functions",
    summary="The registered task functions",
    responses=error_responses(401, 503),
)
async def list_functions(state: State) -> FunctionList:
    """Every function registered with `@task` in this process, by name.

    These are the only names `POST /executions` and schedules accept.
    """
    items = [FunctionRead.of(d) for _, d in sorted(registered().items())]
    return FunctionList(items=items, total=len(items))


async def _probe(check: Callable[[], Awaitable[Any]]) -> ServiceHealth:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await check()
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return ServiceHealth(ok=False, error=f"{type(exc).__name__}: {reason}"[:300])
    return ServiceHealth(ok=True, latency_ms=round((time.perf_counter() - started) * 1000, 3))


async def _select_one(state: ApiState) -> None:
    async with state.runtime.engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


async def _workers(state: ApiState) -> WorkersHealth:
    key = state.queue.tracker.keys.workers
    since = now_ms() - int(LIVE_LEASES * state.settings.lease_seconds * 1000)
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            live = int(await state.runtime.redis.zcount(key, since, "+inf"))
            ids = await state.runtime.redis.zrevrangebyscore(key, "+inf", since, start=0, num=100)
    except Exception:
        return WorkersHealth(live=0, ids=[])
    return WorkersHealth(
        live=live, ids=[i.decode() if isinstance(i, bytes) else str(i) for i in ids]
    )


async def _scheduler(state: ApiState) -> SchedulerHealth:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            first, total = await state.scheduler.list(
                enabled=True, limit=1, sort="next_run_at", descending=False
            )
    except Exception as exc:
        return SchedulerHealth(ok=False, error=f"{type(exc).__name__}: {exc}"[:300])
    return SchedulerHealth(
        ok=True, enabled_schedules=total, next_run_at=first[0].next_run_at if first else None
    )


@router.get(
    "/health",
    tags=TAGS,
    operation_id="health",
    summary="Redis, database, worker and scheduler status",
    responses={503: {"model": HealthRead, "description": "Redis or the database is down"},
               **error_responses(401)},
)  # fmt: skip
async def health(state: State, response: Response) -> HealthRead:
    """200 when Redis and the database answer, 503 otherwise (same body)."""
    redis_probe, db_ok = await asyncio.gather(
        _probe(state.runtime.redis.ping), _probe(lambda: _select_one(state))
    )
    redis_ok = RedisHealth(**redis_probe.model_dump())
    if redis_ok.ok:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CHECK_TIMEOUT):
                facts = await redis_durability(state.runtime.redis)
            redis_ok.persistence = facts["persistence"]
            redis_ok.maxmemory_policy = facts["maxmemory_policy"]
    workers = await _workers(state) if redis_ok.ok else WorkersHealth(live=0, ids=[])
    scheduler = (
        await _scheduler(state)
        if db_ok.ok
        else SchedulerHealth(ok=False, error="database unavailable")
    )
    healthy = redis_ok.ok and db_ok.ok
    if not healthy:
        response.status_code = 503
    return HealthRead(
        status="ok" if healthy else "degraded",
        app=state.settings.app,
        redis=redis_ok,
        database=db_ok,
        workers=workers,
        scheduler=scheduler,
    )
