"""The arq worker: `arq agentsched.WorkerSettings`, built from the settings on demand.

arq runs the jobs; agentsched wraps each registered task in `JobRunner.wrap`, which
enforces the task's own timeout, retries with backoff via arq's `Retry`, and honours
cancellation. The start and finish status scripts ride in arq's own fetch and finish
transactions (`arq_pool.py`), so tracking adds no round trip per job. Jobs arq ends
without calling a task (unknown function, undecodable payload, expired, aborted
before start) reach us through the result serializer hook and are recorded too.
Beside arq's poll loop each worker runs: lease renewal, recovery of jobs whose worker
died (`Tracker.reap`), the SQL recorder and the scheduler loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import random
import socket
import sys
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, cast

from arq.connections import RedisSettings
from arq.jobs import DeserializationError, SerializationError
from arq.worker import JobExecutionFailed, Retry, func

from agentsched.connections import (
    BACKOFF_CAP,
    OUTAGE,
    connection_pool,
    describe,
    is_transient,
)
from agentsched.errors import AgentschedError, ConfigError
from agentsched.jobs import progress as progress_reports
from agentsched.jobs.arq_pool import CLAIM, RidingArqRedis, StatusRides
from agentsched.jobs.reconciler import Reconciler
from agentsched.jobs.recorder import Recorder
from agentsched.jobs.redis_checks import warn_if_redis_can_lose_jobs
from agentsched.jobs.retention import run_retention
from agentsched.jobs.runtime import Runtime
from agentsched.jobs.tracker import Encoded, Tracker
from agentsched.keys import Keys
from agentsched.logs import configure_logging, keep_argument_values_out
from agentsched.observability import MetricsServer, logs, metrics, observe_process, tracing
from agentsched.registry import TaskDef, import_task_modules, registered
from agentsched.scheduling.service import SchedulerService, load_tasks_files
from agentsched.scheduling.tasks_file import check_app, parse_tasks_file
from agentsched.serialization import dumps, dumps_str, loads, now_ms
from agentsched.settings import Settings, get_settings
from agentsched.status import ErrorKind

log = logging.getLogger("agentsched.worker")
# Slack arq gives a job beyond its tries, so a run interrupted by a shutdown is re-run.
INTERRUPT_SLACK = 3
# arq's own timeout is a backstop behind the task timeout agentsched enforces itself.
TIMEOUT_MARGIN = 5.0
# A job whose lease was last renewed this share of a lease ago is stopped: the lease
# itself may run out soon after, and then the reaper hands the job to another worker.
LEASE_SAFETY = 0.8
# Most recent ends kept for re-settling after Redis comes back empty.
RECENT_MAX = 50_000
# A shutdown waits this long at most for each step that needs Redis.
SHUTDOWN_STEP = 5.0


def format_error(exc: BaseException, limit: int = 5) -> str:
    """One line naming the exception, then a short traceback (last `limit` frames)."""
    head = f"{type(exc).__name__}: {exc}"
    frames = "".join(traceback.format_tb(exc.__traceback__, limit=-limit)).rstrip()
    return (head + ("\n" + frames if frames else ""))[:4000]


class JobRunner:
    """Per-process state of a worker: its id, running jobs and background loops."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.runtime: Runtime | None = None
        self.tracker: Tracker | None = None
        # Running job id -> the monotonic time by which its lease must have been renewed
        # again; past it the job is stopped (another worker may have taken it over).
        self.running: dict[str, float] = {}
        self._job_tasks: dict[str, asyncio.Task[Any]] = {}
        # Ends this worker sent lately (job id -> (monotonic time, finish command)): if
        # Redis comes back empty, their snapshots may never have reached SQL.
        self._recent: collections.OrderedDict[str, tuple[float, tuple[Any, ...]]] = (
            collections.OrderedDict()
        )
        self.started_ms = now_ms()
        self.done = 0  # jobs this worker finished (the dashboard's Workers page)
        self._loops: list[asyncio.Task[None]] = []
        self._pending: set[asyncio.Task[Any]] = set()
        self._recorder: Recorder | None = None
        self._scheduler: SchedulerService | None = None
        self._metrics: MetricsServer | None = None
        self.rides = StatusRides()

    # --- lifecycle -------------------------------------------------------------------
    async def startup(self, ctx: dict[str, Any]) -> None:
        keep_argument_values_out()  # also for workers built in-process
        if self.settings.log_level != "DEBUG":
            # arq logs every job start and end; at thousands of jobs per second that
            # costs more than the job. agentsched logs failures and retries itself.
            logging.getLogger("arq.worker").setLevel(logging.WARNING)
        self.runtime = await Runtime(self.settings, retry_forever=True).open()
        self._metrics = observe_process(self.settings, self.runtime.redis)
        self.tracker = self.runtime.tracker()
        await self.tracker.load_scripts()
        await self.tracker.redis.script_load(CLAIM)
        await warn_if_redis_can_lose_jobs(self.tracker.redis)
        self.rides.tracker = self.tracker
        self.rides.worker = self.worker_id
        self.rides.orphaned = self._orphaned
        self.rides.finished = self._remember
        OUTAGE.on_recovered.append(self._after_outage)
        self._recorder = Recorder(
            self.runtime.redis,
            self.runtime.executions,
            self.tracker.keys.records,
            batch=self.settings.record_batch,
        )
        self._recorder.start()
        self._loops.append(asyncio.create_task(self._maintain(), name="agentsched-lease"))
        self._loops.append(asyncio.create_task(self._watchdog(), name="agentsched-watchdog"))
        if self.settings.reconcile_seconds > 0:
            reconciler = Reconciler(
                self.runtime, self.tracker, owner=self.worker_id, count=metrics.count_reconciled
            )
            self._loops.append(asyncio.create_task(reconciler.run(), name="agentsched-reconcile"))
        if self.settings.history_days > 0:
            retention = run_retention(
                self.runtime.executions,
                self.settings.app,
                self.settings.history_days,
                first_delay=random.uniform(10, 60),
            )
            self._loops.append(asyncio.create_task(retention, name="agentsched-retention"))
        if self.settings.tasks_file:
            await load_tasks_files(self.runtime, self.settings.tasks_file)
        if self.settings.scheduler_enabled:
            self._scheduler = SchedulerService(self.runtime)
            await self._scheduler.start()
        log.info(
            "agentsched worker %s for app %s: %d task(s) on queue %s",
            self.worker_id,
            self.settings.app,
            len(registered()),
            self.tracker.keys.queue,
        )

    async def shutdown(self, ctx: dict[str, Any]) -> None:
        if self._after_outage in OUTAGE.on_recovered:
            OUTAGE.on_recovered.remove(self._after_outage)
        if self._scheduler is not None:
            await self._scheduler.stop()
        for loop in self._loops:
            loop.cancel()
        for loop in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        # Redis may be away now: each step waits a bounded time, never forever.
        if self._pending:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SHUTDOWN_STEP):
                    await asyncio.gather(*self._pending, return_exceptions=True)
        if self.tracker is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(SHUTDOWN_STEP):
                    await self.tracker.redis.zrem(self.tracker.keys.workers, self.worker_id)
        if self._recorder is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SHUTDOWN_STEP):
                    await self._recorder.stop()
        if self._metrics is not None:
            self._metrics.stop()
        if self.runtime is not None:
            await self.runtime.close()

    async def _maintain(self) -> None:
        """Renew leases of running jobs and recover jobs whose worker died.

        Through a Redis outage each call gives up after one period (the connection
        layer logs the outage once); the watchdog stops jobs whose lease ran out.
        """
        assert self.tracker is not None
        lease = self.settings.lease_seconds
        period = lease / 3
        while True:
            try:
                ids = list(self.running)
                sent = time.monotonic()
                async with asyncio.timeout(period):
                    lost = await self.tracker.renew(
                        ids,
                        self.worker_id,
                        info={"started": self.started_ms, "running": len(ids), "done": self.done},
                    )
                for job_id in lost:
                    self._give_up(job_id, "its lease is held by another worker now")
                renewed_until = sent + lease * LEASE_SAFETY
                for job_id in ids:
                    if job_id in self.running and job_id not in lost:
                        self.running[job_id] = max(self.running[job_id], renewed_until)
                async with asyncio.timeout(period):
                    recovered = await self.tracker.reap()
                if recovered:
                    log.warning(
                        "recovered %d job(s) from a lost worker: %s",
                        len(recovered),
                        ", ".join(recovered),
                    )
            except asyncio.CancelledError:
                raise
            except TimeoutError:
                pass  # Redis is not answering: logged once by the connection layer
            except Exception as exc:
                if not is_transient(exc):
                    log.error("lease renewal failed: %s", describe(exc))
            await asyncio.sleep(period)

    async def _watchdog(self) -> None:
        """Stop a job before its lease can expire unrenewed, so no two workers run it."""
        tick = self.settings.lease_seconds / 20
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for job_id, deadline in list(self.running.items()):
                if now >= deadline:
                    self._give_up(job_id, "its lease could not be renewed (Redis unreachable)")

    def _give_up(self, job_id: str, why: str) -> None:
        """Cancel a running job and make sure nothing of it reaches Redis from here."""
        self.running.pop(job_id, None)
        self.rides.lost.add(job_id)
        self.rides.finishes.pop(job_id, None)
        task = self._job_tasks.pop(job_id, None)
        if task is not None:
            task.cancel()
        log.warning("job %s stopped on this worker: %s; another worker runs it", job_id, why)

    def _remember(self, job_id: str, command: tuple[Any, ...]) -> None:
        """Keep a finish for as long as the reconciler could still act on a lost one."""
        now = time.monotonic()
        horizon = now - (2 * self.settings.reconcile_seconds + 2 * self.settings.lease_seconds)
        recent = self._recent
        recent[job_id] = (now, command)
        while recent and (len(recent) > RECENT_MAX or next(iter(recent.values()))[0] < horizon):
            recent.popitem(last=False)

    def _after_outage(self) -> None:
        """Redis is back: tell SQL the recent ends a restart without persistence lost."""
        task = asyncio.get_running_loop().create_task(self._resettle_recent())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _resettle_recent(self) -> None:
        """Send again the ends Redis may have lost (a restart, a failover to a replica).

        First, every worker holds off recovering expired leases for a moment, so a job
        that finished here is not re-run because its end never reached the new Redis.
        """
        assert self.tracker is not None
        tracker = self.tracker
        hold_ms = int((2 * self.settings.lease_seconds + BACKOFF_CAP) * 1000)
        recent = list(self._recent.items())
        try:
            await tracker.redis.set(tracker.keys.settling, self.worker_id, px=hold_ms)
            async with tracker.redis.pipeline(transaction=False) as pipe:
                for job_id, _ in recent:
                    pipe.hget(tracker.keys.execution(job_id), "status")
                statuses = await pipe.execute()
            resent = 0
            for (job_id, (_, command)), status in zip(recent, statuses, strict=True):
                if status is None:
                    await self._settle_in_sql(job_id, command)
                elif status not in (b"success", b"failed", b"cancelled"):
                    await tracker.run_command(command)  # the finish script, idempotent
                    resent += 1
            if resent:
                log.warning("re-sent %d job end(s) the new Redis did not have", resent)
        except Exception as exc:
            log.warning("cannot re-send recent job ends after the outage: %s", describe(exc))

    def _orphaned(self, job_id: str, command: tuple[Any, ...]) -> None:
        """A finish found its execution gone from Redis (restarted empty): tell SQL."""
        task = asyncio.get_running_loop().create_task(self._settle_in_sql(job_id, command))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _settle_in_sql(self, job_id: str, command: tuple[Any, ...]) -> None:
        assert self.runtime is not None
        # finish_command's arguments after the key: id, now, status, result, error, kind,
        # next attempt, worker, defer.
        _id, _now, status, result, error, kind, next_attempt = command[4:11]
        try:
            await self.runtime.executions.settle(
                job_id,
                status=status,
                result=result or None,
                error=error or None,
                error_kind=kind or None,
                attempt=int(next_attempt) if status == "queued" else None,
            )
            log.warning(
                "job %s ended %s after Redis lost its record; written to SQL directly",
                job_id,
                status,
            )
        except Exception as exc:
            log.error("cannot record the end of job %s in SQL: %s", job_id, describe(exc))

    # --- running a job ---------------------------------------------------------------
    def wrap(self, definition: TaskDef) -> Callable[..., Awaitable[Any]]:
        async def run(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            return await self._run(definition, ctx, args, kwargs)

        run.__qualname__ = definition.name
        return run

    async def _run(
        self,
        definition: TaskDef,
        ctx: dict[str, Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        assert self.tracker is not None
        job_id: str = ctx["job_id"]
        # Normally the start script rode in arq's fetch of this job; a job enqueued
        # around agentsched ('missing') sends its details in a call of its own.
        status, attempt = self.rides.started.pop(job_id, ("missing", 0))
        if status == "missing":
            attempt = ctx["job_try"]
            status = await self.tracker.start(
                job_id,
                worker=self.worker_id,
                attempt=attempt,
                function=definition.name,
                args=list(args),
                kwargs=kwargs,
                enqueued_ms=int(ctx["enqueue_time"].timestamp() * 1000),
                max_tries=definition.max_tries,
            )
        if status == "elsewhere":
            # Still leased by a worker that stopped renewing: look again once the
            # lease has run out (the reaper or the next start recovers it).
            raise Retry(defer=self.settings.lease_seconds / 2)
        if status != "running":
            log.debug("job %s not run: its record says %s", job_id, status)
            return None  # cancelled (or already finished) before it started
        self.running[job_id] = time.monotonic() + self.settings.lease_seconds * LEASE_SAFETY
        task = asyncio.current_task()
        if task is not None:
            self._job_tasks[job_id] = task
        app, began = self.settings.app, time.perf_counter()
        metrics.picked_up(app, time.time() - ctx["score"] / 1000)
        span = tracing.run_span(definition.name, app, job_id, attempt)
        bound = logs.bind(job_id, definition.name, attempt)
        timeout = task_timeout(definition, self.settings)
        tracker, worker = self.tracker, self.worker_id
        reporter = progress_reports.Reporter(
            lambda fraction, message: tracker.progress(job_id, worker, attempt, fraction, message),
            asyncio.get_running_loop(),
        )
        token = progress_reports.current.set(reporter)
        try:
            async with asyncio.timeout(timeout) as deadline:
                if definition.is_async:
                    result = await definition.func(*args, **kwargs)
                else:
                    result = await asyncio.to_thread(definition.func, *args, **kwargs)
            encoded = Encoded(dumps_str(result))
            await reporter.close()  # still in `running`: its lease stays renewed
        except asyncio.CancelledError as exc:
            reporter.cancel()
            span.end("cancelled", exc)
            if job_id not in self.rides.lost:
                await self._interrupted(job_id, attempt, definition.name)
            raise
        except Exception as exc:
            span.end("failed", exc)
            await reporter.close()
            if isinstance(exc, TimeoutError) and deadline.expired():
                kind, error = (
                    ErrorKind.TIMEOUT,
                    f"TimeoutError: exceeded the task timeout of {timeout}s",
                )
            else:
                kind, error = ErrorKind.EXCEPTION, format_error(exc)
            return await self._failed(definition, job_id, attempt, kind, error)
        finally:
            progress_reports.current.reset(token)
            self.running.pop(job_id, None)
            self._job_tasks.pop(job_id, None)
            self.done += 1
            metrics.attempt_ran(app, definition.name, time.perf_counter() - began)
            logs.unbind(bound)
        if job_id in self.rides.lost:
            return None  # given up: its result is discarded, another worker runs it
        # Rides in arq's finish transaction of this job, right after we return.
        self.rides.finishes[job_id] = self.tracker.finish_command(
            job_id, "success", result=encoded, worker=self.worker_id
        )
        span.end("success")
        metrics.finished(app, definition.name, "success")
        return None

    async def _failed(
        self, definition: TaskDef, job_id: str, attempt: int, kind: ErrorKind, error: str
    ) -> None:
        assert self.tracker is not None
        if attempt < definition.max_tries:
            delay = definition.backoff(attempt)
            log.info(
                "%s %s attempt %d failed (%s), retrying in %.1fs: %s",
                definition.name,
                job_id,
                attempt,
                kind.value,
                delay,
                error.splitlines()[0],
            )
            self.rides.finishes[job_id] = self.tracker.finish_command(
                job_id,
                "queued",
                error=error,
                error_kind=kind.value,
                next_attempt=attempt + 1,
                worker=self.worker_id,
                defer_ms=int(delay * 1000),
            )
            # A finish that finds the execution cancelled meanwhile changes nothing, and
            # the re-run's start script sees it cancelled and does not run it.
            metrics.retried(self.settings.app, definition.name)
            raise Retry(defer=delay)
        log.warning(
            "%s %s failed (%s) after %d attempt(s): %s",
            definition.name,
            job_id,
            kind.value,
            attempt,
            error.splitlines()[0],
        )
        self.rides.finishes[job_id] = self.tracker.finish_command(
            job_id, "failed", error=error, error_kind=kind.value, worker=self.worker_id
        )
        metrics.finished(self.settings.app, definition.name, "failed", kind.value)
        return None

    async def _interrupted(self, job_id: str, attempt: int, function: str = "") -> None:
        """The coroutine was cancelled: by a user's cancel, or by a worker shutdown.

        Never raises: the caller re-raises the CancelledError, which arq relies on.
        """
        assert self.tracker is not None
        tracker = self.tracker
        try:
            key = tracker.keys.execution(job_id)
            requested = await tracker.redis.hget(key, "cancel_requested")  # type: ignore[misc]
            if requested == b"1":
                ending = tracker.finish(job_id, "cancelled", worker=self.worker_id)
                metrics.finished(self.settings.app, function or "<unknown>", "cancelled")
            else:
                # arq re-runs a job cancelled by a shutdown; record it as queued again.
                # The interrupted run is not a failed attempt: the re-run has the same
                # number, so no row shows an attempt above max_tries.
                ending = tracker.finish(
                    job_id,
                    "queued",
                    error="WorkerShutdown",
                    error_kind=ErrorKind.WORKER_LOST.value,
                    next_attempt=attempt,
                    worker=self.worker_id,
                )
            await asyncio.shield(ending)
        except Exception as exc:  # the reaper settles it when the lease runs out
            log.error("cannot record the interruption of job %s: %s", job_id, exc)

    async def after_job(self, ctx: dict[str, Any]) -> None:
        """arq's after_job_end: settle a job arq cancelled before its coroutine began."""
        started = self.rides.started.pop(ctx["job_id"], None)
        if started is not None and started[0] == "running":
            await self._interrupted(ctx["job_id"], started[1] or ctx["job_try"])

    # --- arq's own endings, seen through the serializer --------------------------------
    def serialize(self, data: dict[str, Any]) -> bytes:
        if data.get("s") is False and "id" in data and self.tracker is not None:
            task = asyncio.get_running_loop().create_task(self._record_arq_failure(data))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        return dumps(data)

    async def _record_arq_failure(self, data: dict[str, Any]) -> None:
        assert self.tracker is not None
        self.rides.started.pop(str(data["id"]), None)
        exc = data.get("r")
        status, kind = "failed", ErrorKind.EXCEPTION
        message = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, asyncio.CancelledError):
            status, kind, message = "cancelled", ErrorKind.EXCEPTION, ""
        elif isinstance(exc, DeserializationError | SerializationError):
            kind = ErrorKind.DESERIALIZATION
            message = "DeserializationError: the job payload is not agentsched JSON"
        elif isinstance(exc, JobExecutionFailed):
            text = str(exc)
            if "expired" in text:
                kind = ErrorKind.EXPIRED
            elif "not found" in text:
                kind, message = (
                    ErrorKind.UNKNOWN_FUNCTION,
                    f"UnknownFunction: {data.get('f')!r} is not a registered task",
                )
            elif "retries" in text:
                kind = ErrorKind.WORKER_LOST
        expired = kind is ErrorKind.EXPIRED
        function = data.get("f") if isinstance(data.get("f"), str) else "<unknown>"
        log.warning("job %s (%s) ended by the worker: %s", data["id"], function, kind.value)
        label = str(function) if function in registered() else "<unknown>"  # bounded labels
        metrics.finished(self.settings.app, label, status, kind.value)
        try:
            await self.tracker.fail_outside(
                str(data["id"]),
                status,
                error=message,
                error_kind=kind.value,
                function=str(function),
                args=data.get("a") or (),
                kwargs=data.get("k") or {},
                enqueued_ms=int(data.get("et") or 0),
                attempt=int(data.get("t") or 1),
                only_if_known=expired,
            )
        except Exception as exc2:
            log.error("cannot record the end of job %s: %s", data["id"], exc2)

    @staticmethod
    def deserialize(payload: bytes) -> dict[str, Any]:
        """JSON only: a pickle (or anything else) is rejected without being executed."""
        data = loads(payload)
        if not isinstance(data, dict):
            raise ValueError("job payload must be a JSON object")
        tracing.take_context(data)
        return data


def task_timeout(definition: TaskDef, settings: Settings) -> float:
    """The timeout agentsched enforces for a task (arq's own is a later backstop)."""
    return definition.timeout or settings.job_timeout


def build_worker_settings(settings: Settings | None = None) -> type:
    """A fresh arq settings class for this process's settings and registered tasks."""
    settings = settings or get_settings()
    import_task_modules(settings.task_modules)
    tasks = registered()
    if not tasks:
        raise ConfigError("AGENTSCHED_TASK_MODULES: no @task functions registered")
    runner = JobRunner(settings)
    queue = Keys(settings.redis_prefix, settings.app).queue
    runner.rides.queue = queue
    # arq's claim of a job lives 4/3 of a lease (not arq's longest task timeout) and is
    # renewed with the lease: a worker that dies right after claiming frees the job
    # within the lease bound, and a running job's lease always runs out first.
    runner.rides.in_progress_ms = int(settings.lease_seconds * 1000 * 4 / 3)
    functions = [
        func(
            cast(Any, runner.wrap(d)),
            name=d.name,
            timeout=task_timeout(d, settings) + TIMEOUT_MARGIN,
            max_tries=d.max_tries + INTERRUPT_SLACK,
        )
        for d in tasks.values()
    ]
    attrs = {
        "functions": functions,
        "queue_name": queue,
        # arq opens no connection of its own: it uses the pool below.
        "redis_settings": RedisSettings(),
        "redis_pool": RidingArqRedis(
            runner.rides,
            # A worker rides out any Redis outage, however long.
            connection_pool=connection_pool(settings.redis_url, retry_seconds=None),
            job_serializer=runner.serialize,
            job_deserializer=runner.deserialize,
            default_queue_name=queue,
        ),
        "on_startup": runner.startup,
        "on_shutdown": runner.shutdown,
        "after_job_end": runner.after_job,
        "poll_delay": settings.poll_delay,
        "max_jobs": settings.max_jobs,
        "job_timeout": settings.job_timeout + TIMEOUT_MARGIN,
        "keep_result": 0,
        "allow_abort_jobs": True,
        "job_serializer": runner.serialize,
        "job_deserializer": runner.deserialize,
        "health_check_interval": 10,
        "health_check_key": f"{settings.redis_prefix}health:{settings.app}",
        "job_completion_wait": 10,
    }
    return type("WorkerSettings", (), attrs)


async def _check_services(settings: Settings) -> None:
    async with Runtime(settings):
        pass


def worker_settings_for_cli() -> type:
    """What `arq agentsched.WorkerSettings` gets: settings checked, services reachable.

    A configuration or connection problem ends the process with one line, not a traceback.
    """
    try:
        settings = get_settings()
        configure_logging(settings.log_level)  # agentsched's INFO lines show; no arg values
        built = build_worker_settings(settings)
        for path in settings.tasks_file:
            check_app(parse_tasks_file(path, check_functions=True), settings.app, "AGENTSCHED_APP")
        asyncio.run(_check_services(settings))
    except AgentschedError as exc:
        print(f"agentsched: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return built
