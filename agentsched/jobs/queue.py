"""`TaskQueue`: enqueue registered tasks, read their status and results, cancel them.

Reads come from Redis while the execution is fresh and from SQL after Redis has
expired it, so a status is answerable for as long as the history is kept.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import redis.asyncio as aioredis
from arq.constants import expires_extra_ms  # a job key lives one day past its due time
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncEngine

from agentsched.connections import describe, is_transient
from agentsched.errors import (
    CorruptRecord,
    ExecutionCancelled,
    ExecutionFailed,
    InvalidInput,
    NotFound,
    ResultTimeout,
    ServiceUnavailable,
)
from agentsched.execution import Execution
from agentsched.jobs.durable import GroupCommit, queued_row
from agentsched.jobs.runtime import Runtime
from agentsched.jobs.tracker import Tracker
from agentsched.observability import metrics, tracing
from agentsched.registry import get_task, import_task_modules
from agentsched.serialization import check_json, from_ms, now_ms
from agentsched.settings import Settings, get_settings, mask_url
from agentsched.status import TaskStatus

MAX_DELAY_S = 366 * 86_400
_SCHEDULED_NS = uuid.UUID("6f1c9a1e-6a53-4c0f-9f43-0b8c1c6f6b1d")


def scheduled_execution_id(task_id: str, fire_time: dt.datetime) -> str:
    """The deterministic execution id of one fire time of one schedule."""
    return str(uuid.uuid5(_SCHEDULED_NS, f"{task_id}:{int(fire_time.timestamp() * 1000)}"))


def parse_execution_id(value: str) -> str | None:
    """The canonical form of an execution id, or None when it is not a uuid."""
    try:
        return str(uuid.UUID(str(value)))
    except (ValueError, AttributeError, TypeError):
        return None


def new_execution_id() -> str:
    """A random (version 4) uuid as text: `str(uuid.uuid4())` at under half its cost."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _delay_seconds(delay: float | dt.timedelta | None, eta: dt.datetime | None) -> float:
    if delay is not None and eta is not None:
        raise InvalidInput("delay", "give either delay or eta, not both")
    if eta is not None:
        if not isinstance(eta, dt.datetime) or eta.tzinfo is None:
            raise InvalidInput("eta", "must be a timezone-aware datetime")
        seconds = (eta - dt.datetime.now(dt.UTC)).total_seconds()
        if seconds > MAX_DELAY_S:  # the same bound as delay
            raise InvalidInput("eta", f"must be at most {MAX_DELAY_S} seconds from now")
        return max(seconds, 0.0)
    if delay is None:
        return 0.0
    seconds = delay.total_seconds() if isinstance(delay, dt.timedelta) else delay
    if (
        not isinstance(seconds, int | float)
        or isinstance(seconds, bool)
        or not math.isfinite(seconds)
    ):
        raise InvalidInput("delay", "must be a number of seconds")
    if seconds < 0 or seconds > MAX_DELAY_S:
        raise InvalidInput("delay", f"must be between 0 and {MAX_DELAY_S} seconds")
    return float(seconds)


def _stamp() -> tuple[int, dt.datetime]:
    """An enqueue time: epoch ms and the datetime it stands for."""
    now = now_ms()
    enqueued = from_ms(now)
    assert enqueued is not None
    return now, enqueued


def _validate_payload(
    args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None, metadata: Mapping[str, Any] | None
) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
    if args is None and kwargs is None and metadata is None:
        return [], {}, {}
    if args is not None and (isinstance(args, str | bytes) or not isinstance(args, Sequence)):
        raise InvalidInput("args", "must be a list")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise InvalidInput("kwargs", "must be an object")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise InvalidInput("metadata", "must be an object")
    a, k, m = list(args or []), dict(kwargs or {}), dict(metadata or {})
    if not all(isinstance(key, str) for key in k):
        raise InvalidInput("kwargs", "keys must be strings")
    for field, value in (("args", a), ("kwargs", k), ("metadata", m)):
        if value:  # empty ones are JSON already
            check_json(field, value)
    return a, k, m


MAX_BATCH = 10_000
_ITEM_FIELDS = {"function", "args", "kwargs", "delay", "eta", "metadata", "idempotency_key"}


@dataclass(slots=True)
class _Prepared:
    """One checked job, ready to send."""

    execution: Execution
    score: int
    ttl: int
    idempotency_key: str | None
    span: Any


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, RedisError) and is_transient(exc)


class TaskQueue:
    """Client of one app's queue: enqueue, status, result, cancel.

    `async with TaskQueue() as queue:` opens Redis and the database from the settings
    (or borrows `redis` / `engine` / `runtime` passed in) and imports
    `AGENTSCHED_TASK_MODULES` so it knows which task names exist.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        app: str | None = None,
        redis: aioredis.Redis | None = None,
        engine: AsyncEngine | None = None,
        runtime: Runtime | None = None,
    ) -> None:
        self.settings = settings or (runtime.settings if runtime else get_settings())
        self.app = app or self.settings.app
        self._runtime = runtime or Runtime(self.settings, redis=redis, engine=engine)
        self._own_runtime = runtime is None
        self._tracker: Tracker | None = None
        self._group_commit: GroupCommit | None = None

    async def __aenter__(self) -> Self:
        import_task_modules(self.settings.task_modules)
        if self._own_runtime:
            await self._runtime.open()
        self._tracker = self._runtime.tracker(self.app)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._own_runtime:
            await self._runtime.close()

    @property
    def runtime(self) -> Runtime:
        return self._runtime

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            self._tracker = self._runtime.tracker(self.app)
        return self._tracker

    async def enqueue(
        self,
        function: str | Callable[..., Any],
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        delay: float | dt.timedelta | None = None,
        eta: dt.datetime | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        task_id: str | None = None,
        scheduled_for: dt.datetime | None = None,
        durable: bool | None = None,
    ) -> Execution:
        """Queue a registered task; returns its `Execution` (status `queued`).

        With an `idempotency_key`, a second enqueue with the same key (while the first
        execution is known to Redis) returns the first execution and queues nothing.
        `durable` (default: `AGENTSCHED_DURABLE_ENQUEUE`) returns only once the
        execution's row is committed in SQL. While Redis is unavailable the call waits
        up to `AGENTSCHED_REDIS_RETRY_SECONDS`, then raises `ServiceUnavailable`.
        """
        job = self._prepare(
            function, args, kwargs, delay, eta, metadata, idempotency_key, task_id, scheduled_for
        )
        commit = self._commit_for(durable)
        if commit is not None:
            commit.expect()
        try:
            created, ident = await self.tracker.enqueue(
                job.execution,
                score_ms=job.score,
                job_ttl_ms=job.ttl,
                idempotency_key=job.idempotency_key,
            )
        except BaseException as exc:
            tracing.end(job.span, exc)
            if commit is not None:
                commit.forget()
            if not _transient(exc):
                raise
            raise self._unavailable(exc) from None
        # The span has the new execution's id; a deduplicated enqueue names the old one.
        if created:
            tracing.end(job.span)
        else:
            tracing.end(job.span, execution_id=ident)
        if commit is not None:
            if created:
                await commit.write(queued_row(job.execution, job.score))
            else:
                commit.forget()
        if created:
            metrics.enqueued(self.app, job.execution.function)
            return job.execution
        return await self.get_execution(ident)

    async def enqueue_many(
        self, items: Iterable[Mapping[str, Any]], *, durable: bool | None = None
    ) -> list[Execution]:
        """Queue many jobs in one round trip; their `Execution`s, in the order given.

        Each item takes `enqueue`'s arguments by name: `function` (required), `args`,
        `kwargs`, `delay`, `eta`, `metadata`, `idempotency_key`. Every item is checked
        before any is queued, so a bad one (`InvalidInput` naming `items[i].<field>`)
        queues nothing. In durable mode all rows share one SQL commit.
        """
        jobs: list[_Prepared] = []
        stamp, traced = _stamp(), tracing.active()
        for i, item in enumerate(items):
            if len(jobs) >= MAX_BATCH:
                raise InvalidInput("items", f"at most {MAX_BATCH} jobs per call")
            if not isinstance(item, Mapping):
                raise InvalidInput(f"items[{i}]", "must be an object")
            if not _ITEM_FIELDS.issuperset(item):
                unknown = sorted(set(item) - _ITEM_FIELDS)[0]
                raise InvalidInput(f"items[{i}].{unknown}", "is not a field of a job")
            if "function" not in item:
                raise InvalidInput(f"items[{i}].function", "is required")
            try:
                jobs.append(self._prepare(
                    item["function"], item.get("args"), item.get("kwargs"), item.get("delay"),
                    item.get("eta"), item.get("metadata"), item.get("idempotency_key"),
                    stamp=stamp, traced=traced,
                ))  # fmt: skip
            except InvalidInput as exc:
                raise InvalidInput(f"items[{i}].{exc.field}", exc.message) from None
        if not jobs:
            return []
        calls = [(j.execution, j.score, j.ttl, j.idempotency_key) for j in jobs]
        try:
            batch = await self.tracker.enqueue_many(calls)
        except BaseException as exc:
            for job in jobs:
                tracing.end(job.span, exc)
            if not _transient(exc):
                raise
            raise self._unavailable(exc) from None
        out: list[Execution | str] = []  # an execution, or the id a duplicate named
        created: dict[str, int] = {}  # per function
        for job, (made, ident) in zip(jobs, batch.results, strict=True):
            # The span has the new execution's id; a deduplicated enqueue names the old one.
            if made:
                tracing.end(job.span)
                function = job.execution.function
                created[function] = created.get(function, 0) + 1
                out.append(job.execution)
            else:
                tracing.end(job.span, execution_id=ident)
                out.append(ident)
        for function, count in created.items():
            metrics.enqueued(self.app, function, count)
        if self.settings.durable_enqueue if durable is None else durable:
            rows = batch.rows()
            if rows:
                await self.runtime.executions.upsert_many(rows)  # the batch: one commit
        return [e if isinstance(e, Execution) else await self.get_execution(e) for e in out]

    def _prepare(
        self,
        function: str | Callable[..., Any],
        args: Sequence[Any] | None,
        kwargs: Mapping[str, Any] | None,
        delay: float | dt.timedelta | None,
        eta: dt.datetime | None,
        metadata: Mapping[str, Any] | None,
        idempotency_key: str | None,
        task_id: str | None = None,
        scheduled_for: dt.datetime | None = None,
        *,
        stamp: tuple[int, dt.datetime] | None = None,
        traced: bool = True,
    ) -> _Prepared:
        """Check one job's arguments and build its execution (nothing sent yet). A batch
        gives its jobs one `stamp` (enqueue time) and looks up the tracer once."""
        definition = get_task(function)
        a, k, m = _validate_payload(args, kwargs, metadata)
        seconds = _delay_seconds(delay, eta)
        definition.check_arguments(a, k)  # a misspelt keyword is a 422, not a worker TypeError
        if idempotency_key is not None and (
            not isinstance(idempotency_key, str) or not 0 < len(idempotency_key) <= 200
        ):
            raise InvalidInput("idempotency_key", "must be a string of 1 to 200 characters")
        ident = (
            scheduled_execution_id(task_id, scheduled_for)
            if task_id and scheduled_for
            else new_execution_id()
        )
        # Adds the trace context to the metadata; a scheduled run starts a trace of its own.
        span = (
            tracing.start_enqueue(
                definition.name, self.app, m, root=scheduled_for is not None, execution_id=ident
            )
            if traced
            else None
        )
        # Whole ms, as the record keeps it: the Execution says the same.
        now, enqueued_at = stamp or _stamp()
        execution = Execution(
            id=ident,
            app=self.app,
            function=definition.name,
            status=TaskStatus.QUEUED,
            max_tries=definition.max_tries,
            args=a,
            kwargs=k,
            metadata=m,
            task_id=task_id,
            scheduled_for=scheduled_for,
            enqueued_at=enqueued_at,
            seq=1,  # the record's first snapshot, as a read of it says
        )
        delay_ms = int(seconds * 1000)
        score = now + delay_ms
        execution.due_at = from_ms(score) if delay_ms else enqueued_at
        ttl = delay_ms + expires_extra_ms
        return _Prepared(execution, score, ttl, idempotency_key, span)

    def _commit_for(self, durable: bool | None) -> GroupCommit | None:
        if not (self.settings.durable_enqueue if durable is None else durable):
            return None
        if self._group_commit is None:
            self._group_commit = GroupCommit(self._runtime.executions)
        return self._group_commit

    def _unavailable(self, exc: BaseException) -> ServiceUnavailable:
        return ServiceUnavailable("Redis", mask_url(self.settings.redis_url), describe(exc))

    async def get_execution(self, execution_id: str) -> Execution:
        """The execution record (Redis while fresh, SQL after); `NotFound` if unknown."""
        ident = parse_execution_id(execution_id)
        if ident is None:
            raise NotFound("execution", execution_id)
        try:
            found = await self.tracker.get(ident)
        except CorruptRecord:  # logged once by from_redis; SQL is the durable record
            if (stored := await self._runtime.executions.get(self.app, ident)) is None:
                raise
            return stored
        if found is not None and found.app == self.app:
            return found
        stored = await self._runtime.executions.get(self.app, ident)
        if stored is None:
            raise NotFound("execution", execution_id)
        return stored

    async def get_status(self, execution_id: str) -> TaskStatus:
        return (await self.get_execution(execution_id)).status

    async def get_result(self, execution_id: str, timeout: float | None = None) -> Any:
        """Wait for the execution to end and return its result.

        Raises `ExecutionFailed` / `ExecutionCancelled` if it did not succeed and
        `ResultTimeout` if it is still going after `timeout` seconds (None = forever).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.002
        while True:
            execution = await self.get_execution(execution_id)
            if execution.status is TaskStatus.SUCCESS:
                return execution.result
            if execution.status is TaskStatus.FAILED:
                raise ExecutionFailed(execution.id, execution.status.value, execution.error)
            if execution.status is TaskStatus.CANCELLED:
                raise ExecutionCancelled(execution.id, execution.status.value, execution.error)
            if deadline is not None and time.monotonic() >= deadline:
                raise ResultTimeout(f"execution {execution_id} still {execution.status.value}")
            await asyncio.sleep(pause)
            pause = min(pause * 1.5, 0.1)

    async def cancel(self, execution_id: str, *, wait: float = 5.0) -> bool:
        """Cancel a queued, deferred or running execution; True if it ends `cancelled`.

        A queued job is removed at once. A running one has its coroutine cancelled by
        its worker (within a poll interval); if no worker confirms within `wait`
        seconds the record is marked cancelled anyway and the job is never retried.
        Returns False when it had already finished. `NotFound` if unknown.
        """
        execution = await self.get_execution(execution_id)
        if execution.is_terminal:
            return False
        outcome = await self.tracker.cancel(execution.id)
        if outcome == "cancelling":
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                await asyncio.sleep(0.01)
                current = await self.tracker.get(execution.id)
                if current is None or current.is_terminal:
                    return current is not None and current.status is TaskStatus.CANCELLED
            outcome = await self.tracker.cancel(execution.id, force=True)
        if outcome == "cancelled":  # ended here; a worker that stops it counts its own
            metrics.finished(self.app, execution.function, "cancelled")
        return outcome == "cancelled"

    async def list_executions(self, **filters: Any) -> tuple[list[Execution], int]:
        """A page of this app's history from SQL; see `ExecutionStore.list` for filters."""
        return await self._runtime.executions.list(self.app, **filters)
