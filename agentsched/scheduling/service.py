"""Scheduling: `Scheduler` (schedules of one app, for the API and tasks files) and
`SchedulerService` (the loop every worker runs).

Any number of loops may run against one database and one Redis; each due fire time
is enqueued once (claim protocol in `agentsched.db.schedules`). A loop sleeps until
the app's earliest `next_run_at` (at most `tick` seconds), so fire times land within
milliseconds of their due time and every change is seen on the next tick (told through
Redis, `changes.py`; one made in SQL by hand within `changes.RECHECK`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import uuid
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentsched.db.schedules import (
    SORTABLE,
    Advance,
    DueBatch,
    FileChanges,
    Schedule,
    ScheduleStore,
)
from agentsched.errors import InvalidInput, InvalidSchedule, NotFound, TasksFileError
from agentsched.execution import Execution
from agentsched.jobs.queue import TaskQueue, parse_execution_id, scheduled_execution_id
from agentsched.jobs.runtime import Runtime
from agentsched.observability import metrics
from agentsched.registry import TaskDef, get_task, registered
from agentsched.scheduling import changes
from agentsched.scheduling.rules import (
    FirePlan,
    ScheduleSpec,
    next_fire,
    parse_spec,
    plan_fires,
)
from agentsched.scheduling.tasks_file import TasksFile, parse_tasks_file

__all__ = ["LoadReport", "Schedule", "Scheduler", "SchedulerService", "load_tasks_files"]

log = logging.getLogger("agentsched.scheduler")
_TIMING = ("cron", "interval_seconds", "timezone")
_ACTIVE = {b"queued", b"running"}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _columns(spec: ScheduleSpec) -> dict[str, Any]:
    values = spec.model_dump(exclude={"interval"})
    values["interval_seconds"] = spec.interval_seconds
    return values


def _changes(current: Schedule, spec: ScheduleSpec, now: dt.datetime) -> dict[str, Any]:
    """Columns that differ, plus a new `next_run_at` when the timing or `enabled` changed."""
    values = {k: v for k, v in _columns(spec).items() if getattr(current, k) != v}
    if not values:
        return {}
    if not spec.enabled:
        values["next_run_at"] = None
    elif not current.enabled or any(k in values for k in _TIMING):
        values["next_run_at"] = next_fire(spec, now)
    values["updated_at"] = now
    return values


@dataclass(slots=True)
class LoadReport:
    """What loading one tasks file did, by task name."""

    path: str
    app: str
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # names held by API-created schedules


class Scheduler:
    """Create, read, change and delete the schedules of one app (default: the settings')."""

    def __init__(self, runtime: Runtime, app: str | None = None) -> None:
        self.runtime = runtime
        self.app = app or runtime.settings.app
        self._store: ScheduleStore | None = None

    @property
    def store(self) -> ScheduleStore:
        if self._store is None:
            self._store = ScheduleStore(self.runtime.engine)
        return self._store

    async def create(self, spec: ScheduleSpec | Mapping[str, Any], source: str = "api") -> Schedule:
        """Validate and store a schedule; `InvalidSchedule`, `UnknownFunction` or `Conflict`."""
        if source not in ("api", "yaml"):
            raise InvalidInput("source", "must be 'api' or 'yaml'")
        spec = parse_spec(spec)
        get_task(spec.function).check_arguments(spec.args, spec.kwargs)
        schedule = _new_schedule(self.app, spec, source, _now())
        await self.store.insert(schedule)
        await changes.bump(self.runtime, self.app)
        return schedule

    async def get(self, schedule_id: str) -> Schedule:
        """The schedule; `NotFound` for an unknown, malformed or other app's id."""
        found = await self.store.get(self.app, _parse_id(schedule_id))
        if found is None:
            raise NotFound("schedule", schedule_id)
        return found

    async def list(
        self, *, enabled: bool | None = None, source: str | None = None,
        function: str | None = None, limit: int = 50, offset: int = 0, sort: str = "name",
        descending: bool = False,
    ) -> tuple[list[Schedule], int]:  # fmt: skip
        """A page of this app's schedules and the total; `sort` is one of `SORTABLE`."""
        if sort not in SORTABLE:
            raise InvalidInput("sort", f"must be one of {', '.join(sorted(SORTABLE))}")
        if not 1 <= limit <= 1000:
            raise InvalidInput("limit", "must be between 1 and 1000")
        if offset < 0:
            raise InvalidInput("offset", "must be >= 0")
        return await self.store.list(
            self.app, enabled=enabled, source=source, function=function, limit=limit,
            offset=offset, sort=sort, descending=descending,
        )  # fmt: skip

    async def update(self, schedule_id: str, patch: Mapping[str, Any]) -> Schedule:
        """Merge-patch a schedule: a key with None clears it (back to its default).

        The merged schedule is validated as a whole, so `{"cron": "*/5 * * * *",
        "interval": None}` switches an interval schedule to cron. Nothing is written
        when it is invalid.
        """
        if not isinstance(patch, Mapping):
            raise InvalidInput("body", "must be an object")
        current = await self.get(schedule_id)
        merged = current.spec_fields()
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        spec = parse_spec(merged)
        get_task(spec.function).check_arguments(spec.args, spec.kwargs)
        values = _changes(current, spec, _now())
        if not values:
            return current
        if not await self.store.update(self.app, current.id, values):
            raise NotFound("schedule", schedule_id)
        await changes.bump(self.runtime, self.app)
        return await self.get(current.id)

    async def delete(self, schedule_id: str) -> None:
        if not await self.store.delete(self.app, _parse_id(schedule_id)):
            raise NotFound("schedule", schedule_id)
        await changes.bump(self.runtime, self.app)

    async def enable(self, schedule_id: str) -> Schedule:
        """Enable; the next fire time is counted from now (missed ones are not caught up)."""
        return await self.update(schedule_id, {"enabled": True})

    async def disable(self, schedule_id: str) -> Schedule:
        return await self.update(schedule_id, {"enabled": False})

    async def run_now(self, schedule_id: str) -> Execution:
        """Enqueue the schedule's task now, outside its timing (`task_id` set)."""
        schedule = await self.get(schedule_id)
        queue = TaskQueue(runtime=self.runtime, app=self.app)
        return await queue.enqueue(schedule.function, schedule.args, schedule.kwargs,
                                   task_id=schedule.id, metadata={"trigger": "manual"})  # fmt: skip

    async def load_file(self, path: str | Path) -> LoadReport:
        """Upsert a tasks file's schedules by name (source `yaml`), idempotently.

        Schedules of this app loaded from a file before and no longer in it are deleted;
        API-created ones are never touched. `TasksFileError` when the file is invalid,
        names an unregistered function, or belongs to another app.
        """
        return await self.load(parse_tasks_file(path, check_functions=True))

    async def load(self, tasks_file: TasksFile, keep: Set[str] = frozenset()) -> LoadReport:
        """`load_file` for a parsed file; `keep`: names other files of the load declare."""
        _check_app(tasks_file, self.app)
        report = LoadReport(path=tasks_file.path, app=self.app)
        now = _now()

        def decide(existing: list[Schedule]) -> FileChanges:
            changes, by_name = FileChanges(), {s.name: s for s in existing}
            for spec in tasks_file.tasks:
                current = by_name.get(spec.name)
                if current is None:
                    changes.inserts.append(_new_schedule(self.app, spec, "yaml", now))
                    report.created.append(spec.name)
                elif current.source != "yaml":
                    report.skipped.append(spec.name)
                elif values := _changes(current, spec, now):
                    changes.updates.append((current.id, values))
                    report.updated.append(spec.name)
                else:
                    report.unchanged.append(spec.name)
            names = {spec.name for spec in tasks_file.tasks} | keep
            gone = [s for s in existing if s.source == "yaml" and s.name not in names]
            changes.deletes = [s.id for s in gone]
            report.deleted = [s.name for s in gone]
            return changes

        await self.store.sync_file(self.app, decide)
        if report.created or report.updated or report.deleted:
            await changes.bump(self.runtime, self.app)
        if report.skipped:
            log.warning("%s: schedule(s) %s exist as API-created schedules; left unchanged",
                        tasks_file.path, ", ".join(report.skipped))  # fmt: skip
        return report


async def load_tasks_files(runtime: Runtime, paths: Iterable[str | Path]) -> list[LoadReport]:
    """Validate every file first (`TasksFileError` before anything is written), then load each.

    Task modules must already be imported, since function names are checked.
    """
    files = [parse_tasks_file(p, check_functions=True) for p in paths]
    scheduler = Scheduler(runtime)
    declared: dict[str, str] = {}
    for tasks_file in files:
        _check_app(tasks_file, scheduler.app)
        for spec in tasks_file.tasks:
            if spec.name in declared:
                raise TasksFileError(tasks_file.path, f"also declared in {declared[spec.name]}",
                                     task=spec.name, field="name")  # fmt: skip
            declared[spec.name] = tasks_file.path
    # Together the files declare the app's yaml schedules: one file's load must not
    # delete the schedules of another.
    return [await scheduler.load(f, keep=set(declared) - {s.name for s in f.tasks}) for f in files]


def _due(schedule: Schedule) -> dt.datetime:
    assert schedule.next_run_at is not None  # the claim selects due rows only
    return schedule.next_run_at


def _plan(schedule: Schedule, now: dt.datetime) -> FirePlan:
    try:
        return plan_fires(schedule, _due(schedule), now)
    except InvalidSchedule as exc:
        # Parked (no next_run_at) rather than failing every tick for every schedule.
        log.error("schedule %s: no next fire time (%s); parked until edited", schedule.name, exc)
        return FirePlan(runs=[], next_run_at=None, missed=0)


def _unrunnable(schedule: Schedule, definition: TaskDef | None) -> str | None:
    """Why this worker cannot run the schedule's function with its arguments, if it cannot."""
    if definition is None:
        return f"function {schedule.function} is not registered in this worker"
    try:
        definition.check_arguments(schedule.args, schedule.kwargs)
    except InvalidInput as exc:  # the function's signature changed since the schedule was saved
        return f"its arguments no longer fit the function: {exc.message}"
    return None


def _runnable(
    schedule: Schedule, plan: FirePlan, busy: bool, definition: TaskDef | None
) -> tuple[list[dt.datetime], str]:
    """A plan's fire times to enqueue and why the rest were dropped (or ''); logs drops."""
    # One line per decision, at INFO or above, so the worker log explains every gap.
    if plan.missed:
        log.warning("schedule %s: %d missed fire time(s) not run (misfire_policy=%s)",
                    schedule.name, plan.missed, schedule.misfire_policy)  # fmt: skip
    if plan.caught_up:
        log.info("schedule %s: catching up %d missed fire time(s), the oldest due %s "
                 "(misfire_policy=%s)", schedule.name, plan.caught_up,
                 plan.runs[0].isoformat(), schedule.misfire_policy)  # fmt: skip
    if plan.runs and (why := _unrunnable(schedule, definition)):
        log.warning("schedule %s: %s; skipped %d fire time(s)", schedule.name, why,
                    len(plan.runs))  # fmt: skip
        return [], "unrunnable"
    if plan.runs and busy:
        log.info("schedule %s: previous run still queued or running; skipped %d fire time(s) "
                 "(overlap=skip)", schedule.name, len(plan.runs))  # fmt: skip
        return [], "overlap"
    return plan.runs, ""


def _parse_id(value: object) -> str:
    # "" matches no row: NotFound, like an unknown id. The length guard stays because
    # uuid.UUID ignores any number of hyphens.
    text = str(value)
    return (parse_execution_id(text) if len(text) <= 64 else None) or ""


def _new_schedule(app: str, spec: ScheduleSpec, source: str, now: dt.datetime) -> Schedule:
    return Schedule(
        id=str(uuid.uuid4()), app=app, source=source, created_at=now, updated_at=now,
        next_run_at=next_fire(spec, now) if spec.enabled else None, **_columns(spec),
    )  # fmt: skip


def _check_app(tasks_file: TasksFile, app: str) -> None:
    if tasks_file.app != app:
        raise TasksFileError(tasks_file.path, f"app {tasks_file.app!r} is not this "
                             f"process's app {app!r}", field="app")  # fmt: skip


@dataclass(slots=True)
class TickStats:
    """What one tick did."""

    enqueued: int = 0
    overlap_skipped: int = 0
    unrunnable_skipped: int = 0  # the function is not registered here, or its arguments misfit
    missed: int = 0
    schedules: int = 0


class SchedulerService:
    """The scheduler loop of one app: `await start()`, `await stop()`.

    `tick` is the longest sleep between checks; `resolution` the shortest, which
    batches schedules due a few milliseconds apart into one claim. The loop sleeps
    until the earliest fire time it knows of, so `tick` only bounds how soon it sees a
    schedule created or changed by another process (and what an idle worker spends on
    the check: one Redis GET a second; SQL only after a change, see `changes.py`).
    """

    def __init__(
        self, runtime: Runtime, app: str | None = None, tick: float = 1.0, *,
        batch: int = 200, lanes: int = 3, resolution: float = 0.02, concurrency: int = 64,
    ) -> None:  # fmt: skip
        self.scheduler = Scheduler(runtime, app)
        self.app = self.scheduler.app
        self.tick_seconds = tick
        self.batch = batch
        self.lanes = lanes
        self.resolution = min(resolution, tick)
        self._limit = asyncio.Semaphore(concurrency)
        self._queue = TaskQueue(runtime=runtime, app=self.app)
        self._task: asyncio.Task[None] | None = None
        self._due = changes.DueWatch(self.scheduler)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"agentsched-scheduler-{self.app}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                now = _now()
                due = await self._due.next_due(now)
                if due is not None and due <= now:
                    await self.tick(now)
                    delay = self.resolution  # rows another loop holds are due again soon
                else:
                    until = self.tick_seconds if due is None else (due - now).total_seconds()
                    delay = min(max(until, 0.001), self.tick_seconds)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a database or Redis blip must not end the loop
                failures += 1
                reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
                log.error("scheduler %s: tick failed: %s: %s", self.app, type(exc).__name__, reason)
                delay = min(5.0, self.tick_seconds * 2**failures)
            await asyncio.sleep(delay)

    async def tick(self, now: dt.datetime | None = None) -> TickStats:
        """Enqueue every fire time due at `now` (default: the clock) once; returns counts."""
        now = now or _now()
        stats = TickStats()
        # Claimers in parallel take disjoint rows (SKIP LOCKED), so one batch's Redis
        # round trips overlap another's SQL; SQLite serialises writers anyway.
        lanes = self.lanes if self.scheduler.store.engine.dialect.name == "postgresql" else 1
        # Extra lanes only when the first claim came back full: a quiet tick is one
        # transaction, not one per lane.
        if not await self._claim(now, stats) or lanes == 1:
            return stats
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(lanes):
                    group.create_task(self._drain(now, stats))
        except ExceptionGroup as failed:  # one line in the log, not a group of tracebacks
            raise failed.exceptions[0] from None
        return stats

    async def _drain(self, now: dt.datetime, stats: TickStats) -> None:
        while await self._claim(now, stats):
            pass

    async def _claim(self, now: dt.datetime, stats: TickStats) -> bool:
        """Fire one batch of due rows; True when it was full (more may be due)."""
        async with self.scheduler.store.claim_due(self.app, now, self.batch) as batch:
            await self._fire(batch, now, stats)
        return len(batch.rows) >= self.batch

    async def _fire(self, batch: DueBatch, now: dt.datetime, stats: TickStats) -> None:
        plans = [(s, _plan(s, now)) for s in batch.rows]
        busy = await self._still_running([s for s, p in plans if p.runs and s.overlap == "skip"])
        known = registered()
        advances, jobs = [], []
        skips = {"overlap": 0, "unrunnable": 0, "": 0}  # fire times not run, by why
        for schedule, plan in plans:
            runs, why = _runnable(schedule, plan, schedule.id in busy, known.get(schedule.function))
            jobs += [(schedule, fire) for fire in runs]
            skipped = len(plan.runs) - len(runs)
            skips[why] += skipped
            # skipped_runs counts every fire time not run: skips and misfires alike.
            advances.append(Advance(schedule.id, _due(schedule), plan.next_run_at,
                                    runs[-1] if runs else None, skipped + plan.missed))  # fmt: skip
        stats.missed += (missed := sum(plan.missed for _, plan in plans))
        stats.overlap_skipped += skips["overlap"]
        stats.unrunnable_skipped += skips["unrunnable"]
        # Enqueue before advancing: a failure rolls the claim back and the retry
        # re-enqueues the same deterministic ids, which Redis drops as already known.
        results = await asyncio.gather(*(self._enqueue(s, f) for s, f in jobs),
                                       return_exceptions=True)  # fmt: skip
        for result in results:
            if isinstance(result, BaseException):
                raise result
        fired = _now().timestamp()
        lags = [fired - fire.timestamp() for _, fire in jobs]
        metrics.schedule_fired(self.app, lags, skips["overlap"], missed, skips["unrunnable"])
        await batch.advance(advances)
        stats.enqueued += len(jobs)
        stats.schedules += len(batch.rows)

    async def _enqueue(self, schedule: Schedule, fire: dt.datetime) -> Execution:
        async with self._limit:
            return await self._queue.enqueue(schedule.function, schedule.args, schedule.kwargs,
                                             task_id=schedule.id, scheduled_for=fire)  # fmt: skip

    async def _still_running(self, schedules: list[Schedule]) -> set[str]:
        """Ids of schedules whose previous scheduled run is queued or running (one round trip)."""
        checked = [s for s in schedules if s.last_run_at is not None]
        if not checked:
            return set()
        keys = self._queue.tracker.keys
        async with self._queue.runtime.redis.pipeline(transaction=False) as pipe:
            for s in checked:
                pipe.hget(keys.execution(scheduled_execution_id(s.id, s.last_run_at)), "status")  # type: ignore[arg-type]
            statuses = await pipe.execute()
        return {s.id for s, status in zip(checked, statuses, strict=True) if status in _ACTIVE}
