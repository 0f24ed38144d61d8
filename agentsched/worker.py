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
import contextlib
import gc
import logging
import os
import random
import socket
import sys
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, cast

from arq.connections import RedisSettings
from arq.worker import Retry, func

from agentsched.connections import OUTAGE, connection_pool
from agentsched.errors import AgentschedError, ConfigError
from agentsched.jobs import progress as progress_reports
from agentsched.jobs.arq_endings import record_arq_ending
from agentsched.jobs.arq_pool import RidingArqRedis, StatusRides
from agentsched.jobs.leases import Leases
from agentsched.jobs.reconciler import Reconciler
from agentsched.jobs.recorder import Recorder
from agentsched.jobs.redis_checks import warn_if_redis_can_lose_jobs
from agentsched.jobs.retention import run_retention
from agentsched.jobs.runtime import Runtime
from agentsched.jobs.tracker import Encoded, Tracker
from agentsched.jobs.wake import Waker
from agentsched.keys import Keys
from agentsched.observability import MetricsServer, logs, metrics, observe_process, tracing
from agentsched.registry import TaskDef, import_task_modules, registered
from agentsched.scheduling.service import SchedulerService, load_tasks_files
from agentsched.scheduling.tasks_file import check_app, parse_tasks_file
from agentsched.serialization import dumps, dumps_str, loads
from agentsched.settings import Settings, get_settings
from agentsched.status import ErrorKind

log = logging.getLogger("agentsched.worker")
# Slack arq gives a job beyond its tries, so a run interrupted by a shutdown is re-run.
INTERRUPT_SLACK = 3
# arq's own timeout is a backstop behind the task timeout agentsched enforces itself.
TIMEOUT_MARGIN = 5.0
# A shutdown waits this long at most for each step that needs Redis.
SHUTDOWN_STEP = 5.0
GC_YOUNG = 10_000  # a worker owning its process: allocations between young collections


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
        self._loops: list[asyncio.Task[None]] = []
        self._pending: set[asyncio.Task[Any]] = set()
        self._recorder: Recorder | None = None
        self._scheduler: SchedulerService | None = None
        self._metrics: MetricsServer | None = None
        self.rides = StatusRides()
        self.waker = Waker()
        self.leases = Leases(settings, self.rides, self.worker_id, self._spawn)
        self.freeze_gc = False  # the process is this worker's alone (arq's CLI)

    # --- lifecycle -------------------------------------------------------------------
    async def startup(self, ctx: dict[str, Any]) -> None:
        logs.keep_argument_values_out()  # also for workers built in-process
        if self.settings.log_level != "DEBUG":
            # arq logs every job start and end; at thousands of jobs per second that
            # costs more than the job. agentsched logs failures and retries itself.
            logging.getLogger("arq.worker").setLevel(logging.WARNING)
        self.runtime = await Runtime(self.settings, retry_forever=True).open()
        self._metrics = observe_process(self.settings, self.runtime.redis)
        self.tracker = self.runtime.tracker()
        await self.tracker.load_scripts()
        await warn_if_redis_can_lose_jobs(self.tracker.redis)
        keys = self.tracker.keys
        self.waker.start(self.tracker.redis, keys.wake, keys.handoff(self.worker_id))
        self.rides.waker = self.waker
        self.rides.tracker = self.tracker
        self.rides.worker = self.worker_id
        self.rides.idle_as = f"{self.worker_id}|{int(self.settings.lease_seconds * 1000)}"
        self.rides.may_idle = self.leases.may_idle
        self.leases.attach(self.runtime, self.tracker)
        self.rides.orphaned = self.leases.orphaned
        self.rides.finished = self.leases.remember
        self.rides.holding_ms = self.leases.holding_ms
        OUTAGE.on_recovered.append(self.leases.after_outage)
        self._recorder = Recorder(
            self.runtime.redis,
            self.runtime.executions,
            self.tracker.keys.records,
            batch=self.settings.record_batch,
        )
        self._recorder.start()
        self._loops.append(asyncio.create_task(self.leases.maintain(), name="agentsched-lease"))
        self._loops.append(asyncio.create_task(self.leases.watchdog(), name="agentsched-watchdog"))
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
        if self.freeze_gc:
            # What start-up built lives as long as the process: out of the collector's
            # sight, full collections scan only what jobs allocate (a 100,000-object
            # scan, about 55 ms, every 1,500-3,000 jobs before; every span adds to it).
            gc.collect()
            gc.freeze()
            # Young collections every 10,000 objects, not 700, which caught and promoted
            # each job's objects in flight: 11-16 µs of collections a job, 5-7.5 at 10,000.
            gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])

    async def shutdown(self, ctx: dict[str, Any]) -> None:
        if self.leases.after_outage in OUTAGE.on_recovered:
            OUTAGE.on_recovered.remove(self.leases.after_outage)
        if self._scheduler is not None:
            await self._scheduler.stop()
        self.rides.waker = None  # arq's last polls must not wait
        await self.waker.stop()
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
                    await self.tracker.redis.zrem(self.tracker.keys.idle, self.rides.idle_as)
        if self._recorder is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SHUTDOWN_STEP):
                    await self._recorder.stop()
        if self._metrics is not None:
            self._metrics.stop()
        if self.runtime is not None:
            await self.runtime.close()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` beside the jobs; shutdown waits for it (a bounded time)."""
        task = asyncio.get_running_loop().create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

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
        self.leases.hold(job_id)
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
            self.leases.release(job_id)
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
                definition.name, job_id, attempt, kind.value, delay, logs.error_type(error),
            )  # fmt: skip
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
            definition.name, job_id, kind.value, attempt, logs.error_type(error),
        )  # fmt: skip
        self.rides.finishes[job_id] = self.tracker.finish_command(
            job_id, "failed", error=error, error_kind=kind.value, worker=self.worker_id
        )
        metrics.finished(self.settings.app, definition.name, "failed", kind.value)
        return None

    async def _interrupted(self, job_id: str, attempt: int, function: str = "") -> None:
        """The coroutine was cancelled: by a user's cancel, or by a worker shutdown.

        Never raises: the caller re-raises the CancelledError, which arq relies on."""
        assert self.tracker is not None
        tracker = self.tracker
        try:
            key = tracker.keys.execution(job_id)
            fields = tracker.redis.hmget(key, ["cancel_requested", "status"])
            requested, status = await fields  # type: ignore[misc]
            if requested == b"1":
                ending = tracker.finish(job_id, "cancelled", worker=self.worker_id)
                if status != b"cancelled":  # a forced cancel counted it where it was forced
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
            self.rides.started.pop(str(data["id"]), None)
            self._spawn(record_arq_ending(self.tracker, self.settings.app, data))
        return dumps(data)

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


def build_worker_settings(settings: Settings | None = None, *, own_process: bool = False) -> type:
    """A fresh arq settings class for this process's settings and registered tasks
    (`own_process`: the worker is all the process runs, so start-up may freeze its GC)."""
    settings = settings or get_settings()
    import_task_modules(settings.task_modules)
    tasks = registered()
    if not tasks:
        raise ConfigError("AGENTSCHED_TASK_MODULES: no @task functions registered")
    runner = JobRunner(settings)
    runner.freeze_gc = own_process
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
            connection_pool=connection_pool(
                settings.redis_url,
                retry_seconds=None,
                max_connections=settings.redis_max_connections,
            ),
            job_serializer=runner.serialize,
            job_deserializer=runner.deserialize,
            default_queue_name=queue,
            idle_poll=settings.idle_poll,
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
        logs.configure_logging(settings.log_level)  # agentsched's INFO lines show; no arg values
        built = build_worker_settings(settings, own_process=True)
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
