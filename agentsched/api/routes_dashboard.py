"""Read endpoints the dashboard needs, open to any client: `/overview` (queue depths and
per-minute figures aggregated by the server), `/workers`, `/schedule-outlook`,
`/dead-letters` (and their replay), and `/executions/{id}/retry` / `/run-again` (their
rule is `again.py`'s, shared with the CLI).

Every figure is this app's only, as everywhere in the API. SQL is built in
`agentsched.db.stats`; Redis is read with the key names of `agentsched.keys`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from enum import Enum
from typing import Annotated, Any

from fastapi import Query, Request, Response, status

from agentsched.api.again import enqueue_again
from agentsched.api.deps import ApiState, State, router_path
from agentsched.api.deps import scheduler_router as router
from agentsched.api.errors import error_responses
from agentsched.api.models import ExecutionRead
from agentsched.api.models_dashboard import (
    DeadLetterList,
    DeadLetterRead,
    MinuteStats,
    OutlookList,
    OverviewRead,
    ScheduleOutlook,
    WorkerList,
    WorkerRead,
)
from agentsched.api.schedule_words import schedule_words
from agentsched.db.stats import MINUTES, Bucket, last_runs
from agentsched.errors import NotFound
from agentsched.events import EventBus
from agentsched.events.message import EventMessage
from agentsched.scheduling.rules import next_fire
from agentsched.serialization import now_ms

TAGS: list[str | Enum] = ["dashboard"]
LIVE_LEASES = 3  # as /health: three leases without a heartbeat and a worker is gone
MAX_OUTLOOK = 500


def _moment(ms: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


async def _depths(state: ApiState) -> tuple[int, int, int, int]:
    keys = state.queue.tracker.keys
    now = now_ms()
    since = now - int(LIVE_LEASES * state.settings.lease_seconds * 1000)
    async with state.runtime.redis.pipeline(transaction=False) as pipe:
        pipe.zcount(keys.queue, "-inf", now)
        pipe.zcount(keys.queue, f"({now}", "+inf")
        pipe.scard(keys.running)
        pipe.zcount(keys.workers, since, "+inf")
        due, deferred, running, workers = await pipe.execute()
    # arq keeps a job in its queue while it runs: those are running, not waiting.
    return max(0, int(due) - int(running)), int(deferred), int(running), int(workers)


@router.get(
    "/overview",
    tags=TAGS,
    operation_id="overview",
    summary="Queue depths now and per-minute figures of the last hour",
    responses=error_responses(401, 503),
)
async def overview(
    state: State, minutes: Annotated[int, Query(ge=1, le=1440)] = 60
) -> OverviewRead:
    """Jobs queued, deferred and running and live workers (Redis), and per minute of the
    window: executions ended, failures, run-time and pickup-delay p50/p95 (SQL)."""
    until = dt.datetime.now(dt.UTC)
    (queued, deferred, running, workers), buckets = await asyncio.gather(
        _depths(state),
        MINUTES.buckets(
            state.runtime.engine, state.settings.app, until - dt.timedelta(minutes=minutes), until
        ),
    )
    return OverviewRead(
        app=state.settings.app,
        queued=queued,
        deferred=deferred,
        running=running,
        workers_alive=workers,
        window_minutes=minutes,
        minutes=[_minute(b) for b in buckets],
    )


def _minute(bucket: Bucket) -> MinuteStats:
    return MinuteStats(
        start=bucket.start,
        finished=bucket.finished,
        failed=bucket.failed,
        runtime_p50_ms=bucket.runtime_p50_ms,
        runtime_p95_ms=bucket.runtime_p95_ms,
        pickup_p50_ms=bucket.pickup_p50_ms,
        pickup_p95_ms=bucket.pickup_p95_ms,
    )


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


@router.get(
    "/workers",
    tags=TAGS,
    operation_id="list_workers",
    summary="Live workers of this app",
    responses=error_responses(401, 503),
)
async def list_workers(state: State) -> WorkerList:
    """Workers whose heartbeat is at most three leases old, newest heartbeat first."""
    keys = state.queue.tracker.keys
    redis = state.runtime.redis
    since = now_ms() - int(LIVE_LEASES * state.settings.lease_seconds * 1000)
    seen = await redis.zrevrangebyscore(keys.workers, "+inf", since, withscores=True)
    async with redis.pipeline(transaction=False) as pipe:
        for worker, _ in seen:
            pipe.hgetall(keys.worker_info(_text(worker)))
        infos = await pipe.execute()
    items = []
    for (raw, beat), info in zip(seen, infos, strict=True):
        ident = _text(raw)
        fields = {_text(k): _text(v) for k, v in info.items()}
        host, _, rest = ident.partition(":")
        started = _int(fields.get("started"))
        items.append(
            WorkerRead(
                id=ident,
                host=host,
                pid=_int(rest.partition(":")[0]),
                started_at=_moment(started) if started is not None else None,
                running=_int(fields.get("running")),
                done=_int(fields.get("done")),
                last_heartbeat=_moment(beat),
            )
        )
    return WorkerList(items=items, total=len(items))


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


@router.get(
    "/schedule-outlook",
    tags=TAGS,
    operation_id="schedule_outlook",
    summary="Every schedule in words, its next runs and its last run's status",
    responses=error_responses(401, 503),
)
async def schedule_outlook(
    state: State, runs: Annotated[int, Query(ge=1, le=10, description="Next runs each")] = 3
) -> OutlookList:
    """For each schedule of the app (by name, at most 500): its timing in words, its next
    `runs` fire times (none while disabled) and the status of its last scheduled run."""
    schedules, total = await state.scheduler.list(limit=MAX_OUTLOOK)
    fires = [(s.id, s.last_run_at) for s in schedules if s.last_run_at is not None]
    last = await last_runs(state.runtime.engine, state.settings.app, fires)
    items = []
    for s in schedules:
        upcoming: list[dt.datetime] = []
        moment = s.next_run_at
        while s.enabled and moment is not None and len(upcoming) < runs:
            upcoming.append(moment)
            moment = next_fire(s, moment, anchor=moment if s.interval_seconds else None)
        run = last.get(s.id)
        items.append(
            ScheduleOutlook(
                task_id=s.id,
                description=schedule_words(s.cron, s.interval_seconds, s.timezone),
                next_runs=upcoming,
                last_execution_id=run.execution_id if run else None,
                last_status=run.status if run else None,
            )
        )
    return OutlookList(items=items, total=total)


@router.get(
    "/dead-letters",
    tags=TAGS,
    operation_id="list_dead_letters",
    summary="Events this app gave up on",
    responses=error_responses(401, 503),
)
async def list_dead_letters(
    state: State, limit: Annotated[int, Query(ge=1, le=500)] = 100
) -> DeadLetterList:
    """This app's consumer group's dead letters, newest first, with error and deliveries."""
    bus = EventBus(state.settings.app, settings=state.settings, redis=state.runtime.redis)
    letters = await bus.dead_letters(limit, group=state.settings.app)
    return DeadLetterList(items=[DeadLetterRead.of(d) for d in letters], total=len(letters))


@router.post(
    "/dead-letters/{entry_id}/replay",
    tags=TAGS,
    operation_id="replay_dead_letter",
    summary="Deliver a dead letter to this app again",
    responses=error_responses(401, 404, 503),
)
async def replay_dead_letter(entry_id: str, state: State) -> EventMessage:
    """Publish the event again, targeted at this app only, and remove the dead letter.

    404 for unknown ids and other apps' dead letters.
    """
    bus = EventBus(state.settings.app, settings=state.settings, redis=state.runtime.redis)
    mine = {d.entry_id for d in await bus.dead_letters(10_000, group=state.settings.app)}
    if entry_id not in mine:
        raise NotFound("dead letter", entry_id)
    return await bus.replay_dead_letter(entry_id)


_AGAIN = {
    "tags": TAGS,
    "status_code": status.HTTP_202_ACCEPTED,
    "responses": error_responses(401, 404, 409, 503),
}


@router.post(
    "/executions/{execution_id}/retry",
    operation_id="retry_execution",
    summary="Enqueue a failed or cancelled execution again",
    **_AGAIN,  # type: ignore[arg-type]
)
async def retry_execution(
    execution_id: str, state: State, request: Request, response: Response
) -> ExecutionRead:
    """A new execution of the same function and arguments, its metadata `retry_of` naming
    the old one (202); 409 unless the old one is `failed` or `cancelled`."""
    execution = await enqueue_again(state.queue, execution_id, retry=True)
    response.headers["Location"] = router_path(
        request, "/executions", f"/executions/{execution.id}"
    )
    return ExecutionRead.of(execution)


@router.post(
    "/executions/{execution_id}/run-again",
    operation_id="run_execution_again",
    summary="Enqueue any execution again",
    **_AGAIN,  # type: ignore[arg-type]
)
async def run_execution_again(
    execution_id: str, state: State, request: Request, response: Response
) -> ExecutionRead:
    """A new execution of the same function and arguments whatever the old one's status,
    its metadata `run_again_of` naming the old one (202)."""
    execution = await enqueue_again(state.queue, execution_id, retry=False)
    response.headers["Location"] = router_path(
        request, "/executions", f"/executions/{execution.id}"
    )
    return ExecutionRead.of(execution)
