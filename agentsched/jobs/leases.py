"""A worker's hold on its running jobs, kept through Redis faults.

Each running job holds a lease in Redis that `maintain` renews every lease/3 seconds
(with arq's claim of the same job). When renewal fails for 0.8 of a lease, or another
worker holds the lease, the `watchdog` stops the job and marks it lost: nothing of it
reaches Redis from this worker again, since the reaper hands it to another worker.
This module also keeps what a Redis that restarts empty or fails over may have lost:
a job end that found its record gone goes to SQL directly (`orphaned`), and after an
outage the ends of recent jobs are sent again (`after_outage`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from agentsched.connections import BACKOFF_CAP, describe, is_transient
from agentsched.jobs.arq_pool import StatusRides
from agentsched.jobs.runtime import Runtime
from agentsched.jobs.tracker import Tracker
from agentsched.observability import metrics
from agentsched.serialization import now_ms
from agentsched.settings import Settings

log = logging.getLogger("agentsched.worker")
# A job whose lease was last renewed this share of a lease ago is stopped: the lease
# itself may run out soon after, and then the reaper hands the job to another worker.
LEASE_SAFETY = 0.8
# Most recent ends kept for re-sending after Redis comes back empty.
RECENT_MAX = 50_000


class Leases:
    """The running jobs of one worker, their leases, and their ends kept for a while."""

    def __init__(
        self,
        settings: Settings,
        rides: StatusRides,
        worker_id: str,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self.settings = settings
        self.rides = rides
        self.worker_id = worker_id
        self.spawn = spawn
        self.runtime: Runtime | None = None
        self.tracker: Tracker | None = None
        # Running job id -> the monotonic time by which its lease must have been renewed
        # again; past it the job is stopped (another worker may have taken it over).
        self.running: dict[str, float] = {}
        self._held = asyncio.Event()  # a job started: the watchdog has something to watch
        self._job_tasks: dict[str, asyncio.Task[Any]] = {}
        # Ends this worker sent lately (job id -> (monotonic time, finish command)): if
        # Redis comes back empty, their snapshots may never have reached SQL.
        self._recent: collections.OrderedDict[str, tuple[float, tuple[Any, ...]]] = (
            collections.OrderedDict()
        )
        self.started_ms = now_ms()
        self.hold_until = 0.0
        self.done = 0  # jobs this worker finished (the dashboard's Workers page)

    def attach(self, runtime: Runtime, tracker: Tracker) -> None:
        self.runtime, self.tracker = runtime, tracker

    def hold(self, job_id: str) -> None:
        """A job started here: its lease is fresh, and this task runs it."""
        self.running[job_id] = time.monotonic() + self.settings.lease_seconds * LEASE_SAFETY
        self._held.set()
        task = asyncio.current_task()
        if task is not None:
            self._job_tasks[job_id] = task

    def may_idle(self) -> bool:
        """Whether an enqueue may hand this worker a job (status_scripts.ENQUEUE): none
        of its jobs runs (arq_pool counts free slots), and no outage hold."""
        return not self.running and self.holding_ms() == 0

    def release(self, job_id: str) -> None:
        self.running.pop(job_id, None)
        self._job_tasks.pop(job_id, None)
        self.done += 1

    def is_lost(self, job_id: str) -> bool:
        return job_id in self.rides.lost

    async def maintain(self) -> None:
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
                    self.give_up(job_id, "its lease is held by another worker now")
                renewed_until = sent + lease * LEASE_SAFETY
                for job_id in ids:
                    if job_id in self.running and job_id not in lost:
                        self.running[job_id] = max(self.running[job_id], renewed_until)
                async with asyncio.timeout(period):
                    recovered = await self.tracker.reap()
                if recovered:
                    metrics.task_events(self.settings.app, len(recovered))  # retrying, failed
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

    async def watchdog(self) -> None:
        """Stop a job before its lease can expire unrenewed, so no two workers run it.
        It looks at the earliest deadline (renewals move them on), no more often than
        every lease/20 s, and sleeps while no job runs: an idle worker wakes for nothing."""
        tick = self.settings.lease_seconds / 20
        while True:
            if not self.running:
                self._held.clear()
                await self._held.wait()
            now = time.monotonic()
            for job_id, deadline in list(self.running.items()):
                if now >= deadline:
                    self.give_up(job_id, "its lease could not be renewed (Redis unreachable)")
            if self.running:
                await asyncio.sleep(max(min(self.running.values()) - now, tick))

    def give_up(self, job_id: str, why: str) -> None:
        """Cancel a running job and make sure nothing of it reaches Redis from here."""
        self.running.pop(job_id, None)
        self.rides.lost.add(job_id)
        self.rides.finishes.pop(job_id, None)
        task = self._job_tasks.pop(job_id, None)
        if task is not None:
            task.cancel()
        log.warning("job %s stopped on this worker: %s; another worker runs it", job_id, why)

    def remember(self, job_id: str, command: tuple[Any, ...]) -> None:
        """Keep a finish for as long as the reconciler could still act on a lost one."""
        now = time.monotonic()
        horizon = now - (2 * self.settings.reconcile_seconds + 2 * self.settings.lease_seconds)
        recent = self._recent
        recent[job_id] = (now, command)
        while recent and (len(recent) > RECENT_MAX or next(iter(recent.values()))[0] < horizon):
            recent.popitem(last=False)

    def after_outage(self) -> None:
        """Redis is back: tell SQL the recent ends a restart without persistence lost."""
        # At once, before any claim of this worker can recover a lease that ran out
        # during the outage (resettle_recent's own write of the hold comes a moment later).
        self.hold_until = time.monotonic() + 2 * self.settings.lease_seconds + BACKOFF_CAP
        self.spawn(self.resettle_recent())

    def holding_ms(self) -> int:
        """How long (ms) this worker still holds off recovering expired leases."""
        return max(0, int((self.hold_until - time.monotonic()) * 1000))

    async def resettle_recent(self) -> None:
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
                    await self.settle_in_sql(job_id, command)
                elif status not in (b"success", b"failed", b"cancelled"):
                    await tracker.run_command(command)  # the finish script, idempotent
                    resent += 1
            if resent:
                log.warning("re-sent %d job end(s) the new Redis did not have", resent)
        except Exception as exc:
            log.warning("cannot re-send recent job ends after the outage: %s", describe(exc))

    def orphaned(self, job_id: str, command: tuple[Any, ...]) -> None:
        """A finish found its execution gone from Redis (restarted empty): tell SQL."""
        self.spawn(self.settle_in_sql(job_id, command))

    async def settle_in_sql(self, job_id: str, command: tuple[Any, ...]) -> None:
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
