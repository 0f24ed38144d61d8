"""arq's Redis pool, with agentsched's status scripts riding in arq's own transactions.

arq claims a job with four round trips (WATCH the in-progress key, EXISTS, ZSCORE,
then MULTI/PSETEX/EXEC) and then fetches it (MULTI GET job, INCR retry, EXPIRE retry,
ZREM abort EXEC). The pipelines of this pool answer the claim's EXISTS with one script
(`CLAIM_START`) that makes the claim, the fetch and agentsched's start (status
`running`, the lease, `task.started`) atomically, and hand arq the same answers it
would have had: the MULTI/EXEC of the claim and the whole fetch transaction are then
already done, and a job starts with one round trip.

arq finishes a job (`DEL ... arq:in-progress:<id> ...`) in a MULTI/EXEC of its own; the
pipelines recognise it by its commands and send them, with the finish script the job
runner left for that job, as one script call (`FINISH_WITH`): arq's finish and
agentsched's commit together, in one round trip.

arq polls its queue every `poll_delay`; the pool's `zrangebyscore` of the queue waits
instead while nothing is due (`wake.py`): until a wake-up, the earliest deferred job,
or `idle_poll` seconds. With every slot busy arq skips the poll, so its abort check
waits likewise, until a job ends or a cancel comes. A poll that finds nothing while no
job of this worker runs registers it as idle, and the next enqueue claims its job for
this worker (the handoff, status_scripts.ENQUEUE): arq's claim of a handed job is
answered from the message, with no round trip. Only this module knows the shape
of arq's transactions (arq 0.26-0.28; a new shape of the fetch stops the first job
with a RuntimeError, so every test that runs a job fails); anything else it does not
recognise runs unchanged, and the runner falls back to sending its scripts.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from arq.connections import ArqRedis
from arq.constants import abort_jobs_ss, in_progress_key_prefix, job_key_prefix, retry_key_prefix
from arq.worker import Worker
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError, ResponseError

from agentsched.jobs.tracker import Tracker
from agentsched.jobs.wake import Waker

# arq's fetch transaction, command by command: what a claim already answered.
FETCH_SHAPE = ("GET", "INCRBY", "EXPIRE", "ZREM")  # redis-py sends INCR as INCRBY
# arq's abort check, once per poll: ZRANGE arq:abort, ZREMRANGEBYSCORE arq:abort.
ABORT_SHAPE = ("ZRANGE", "ZREMRANGEBYSCORE")
# Loop passes the abort check after a handoff waits at most for the handed jobs to begin
# (start_jobs -> run_job's task -> the function's task: two passes; more when run_job
# awaits something of its own, such as an on_job_start hook).
_HEAD_START_PASSES = 4


class StatusRides:
    """What rides along: start results waiting for their job, finishes waiting for arq."""

    def __init__(self, queue: str = "", in_progress_ms: int = 0) -> None:
        # arq's in-progress TTL (its largest function timeout + 10 s) for the claim.
        self.queue = queue
        self.in_progress_ms = in_progress_ms
        self.tracker: Tracker | None = None
        self.worker = ""
        # job id -> (status the start script answered, the attempt it started).
        self.started: dict[str, tuple[str, int]] = {}
        # Jobs this worker stopped because it could not renew their lease: another
        # worker may run them now, so nothing of theirs may reach Redis from here.
        self.lost: set[str] = set()
        # Called with (job id, finish command) after a finish rode in arq's transaction:
        # `orphaned` when it found no record in Redis, `finished` otherwise.
        self.orphaned: Callable[[str, tuple[Any, ...]], None] | None = None
        self.finished: Callable[[str, tuple[Any, ...]], None] | None = None
        self.finishes: dict[str, tuple[Any, ...]] = {}
        self.pool: RidingArqRedis | None = None
        # job id -> the replies of arq's fetch transaction, made by the claim already.
        self.fetched: dict[str, list[Any]] = {}
        self.waker: Waker | None = None
        # ms this worker still holds off recovering expired leases after an outage.
        self.holding_ms: Callable[[], int] | None = None
        # `<worker id>|<lease ms>`: how this worker registers as idle for the enqueue's
        # handoff, while `may_idle()` (nothing running, a slot to spare, no outage hold).
        self.idle_as = ""
        self.may_idle: Callable[[], bool] | None = None

    def extra_for(
        self, stack: Sequence[tuple[tuple[Any, ...], Mapping[str, Any]]]
    ) -> tuple[str, str]:
        """('start' | 'finish' | 'drop' | 'abort' | '', job id) for a transaction of arq's."""
        if self.tracker is None or not stack:
            return "", ""
        first = stack[0][0]
        if tuple(args[0] for args, _ in stack) == ABORT_SHAPE and str(first[1]) == abort_jobs_ss:
            return "abort", ""
        if (
            len(stack) >= 2
            and first[0] == "GET"
            and str(first[1]).startswith(job_key_prefix)
            and stack[1][0][0] in ("INCR", "INCRBY")
            and str(stack[1][0][1]).startswith(retry_key_prefix)
        ):
            return "start", str(first[1])[len(job_key_prefix) :]
        for args, _options in stack:
            if args[0] == "DEL":
                for name in args[1:]:
                    if str(name).startswith(in_progress_key_prefix):
                        job_id = str(name)[len(in_progress_key_prefix) :]
                        if job_id in self.lost:
                            return "drop", job_id
                        if job_id in self.finishes:
                            return "finish", job_id
        return "", ""


class RidingPipeline(Pipeline):
    """A pipeline that appends agentsched's script to arq's fetch and finish."""

    def __init__(self, rides: StatusRides, *args: Any) -> None:
        super().__init__(*args)
        self.rides = rides
        self._claim: tuple[str, str] | None = None  # (in-progress key, job id)
        self._claimed: tuple[int, float | None, bool] | None = None

    async def watch(self, *names: Any) -> Any:  # type: ignore[override]
        name = str(names[0]) if len(names) == 1 else ""
        if self.rides.queue and name.startswith(in_progress_key_prefix):
            self._claim = (name, name[len(in_progress_key_prefix) :])
            return True
        return await super().watch(*names)

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if self._claim is not None and not self.explicit_transaction:
            if args[0] == "EXISTS":
                return self._claim_exists()
            if args[0] == "ZSCORE" and self._claimed is not None:
                return self._claim_score()
        return super().execute_command(*args, **kwargs)

    async def _claim_exists(self) -> int:
        assert self._claim is not None
        _key, job_id = self._claim
        tracker = self.rides.tracker
        if tracker is None:  # not started yet: nothing may run
            self._claimed = (1, None, False)
            return 1
        waker = self.rides.waker
        # A job an enqueue already claimed for this worker (the handoff), if it is fresh:
        # well inside the lease the handoff took, which this worker renews from its start.
        fresh = self.rides.in_progress_ms * 3 / 8000  # half a lease, in s
        reply = waker.take_handed(job_id.encode(), fresh) if waker is not None else None
        if reply is None:
            hold = self.rides.holding_ms() if self.rides.holding_ms is not None else 0
            command = tracker.claim_start_command(
                job_id, self.rides.worker, self.rides.in_progress_ms, hold, self.rides.idle_as
            )
            reply = await run_script(self.immediate_execute_command, tracker, command)
        exists, score = int(reply[0]), (float(reply[1]) if reply[1] else None)
        claimed = len(reply) > 2
        if claimed:
            payload, tries, aborted, status, attempt = reply[2:7]
            self.rides.fetched[job_id] = [payload, int(tries), True, int(aborted)]
            self.rides.started[job_id] = started_reply([status, attempt])
        self._claimed = (exists, score, claimed)
        return exists

    async def _claim_score(self) -> float | None:
        assert self._claimed is not None
        return self._claimed[1]

    async def reset(self) -> None:
        self._claim = None
        self._claimed = None
        await super().reset()  # type: ignore[no-untyped-call]

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        if self._claimed is not None and self._claimed[2]:
            # arq's MULTI/PSETEX/EXEC after a claim the script already made.
            size = len(self.command_stack)
            await self.reset()
            return [True] * size
        kind, job_id = self.rides.extra_for(self.command_stack)
        if kind == "start" and job_id in self.rides.fetched:
            names = tuple(args[0] for args, _ in self.command_stack)
            if names != FETCH_SHAPE:  # the claim already did these: never twice
                raise RuntimeError(f"arq's fetch of a job changed shape: {names}")
            await self.reset()
            return self.rides.fetched.pop(job_id)
        if kind == "abort":
            pool = self.rides.pool
            if pool is not None:
                await pool.abort_check_wait()
                running = getattr(pool.arq_worker, "job_tasks", None)  # arq's running jobs
                if running is not None and not running:
                    # No job runs here to cancel: an idle worker's loop asks Redis
                    # nothing (arq's ZREMRANGEBYSCORE only trims scores in the future).
                    await self.reset()
                    return [[], 0]
            return await super().execute(raise_on_error)
        if kind == "drop":
            # arq's end of a job this worker gave up: its keys belong to whoever took it.
            size = len(self.command_stack)
            self.rides.lost.discard(job_id)
            self.rides.finishes.pop(job_id, None)
            await self.reset()
            return [True] * size
        tracker = self.rides.tracker
        if not kind or tracker is None:
            return await super().execute(raise_on_error)
        if kind == "finish":
            return await self._finish(tracker, job_id)
        command = tracker.start_command(job_id, self.rides.worker)
        size = len(self.command_stack)
        self.execute_command(*command)
        results = await super().execute(raise_on_error=False)
        own, results = results[size], results[:size]
        if isinstance(own, NoScriptError):  # Redis lost its scripts: run it on its own
            own = await tracker.run_command(command)
        elif isinstance(own, Exception):
            raise own
        self.rides.started[job_id] = started_reply(own)
        if raise_on_error:
            for result in results:
                if isinstance(result, Exception):
                    raise result
        return results

    async def _finish(self, tracker: Tracker, job_id: str) -> list[Any]:
        """arq's finish transaction and the job's finish script, as one script call."""
        command = self.rides.finishes.pop(job_id)
        waker, pool = self.rides.waker, self.rides.pool
        # arq's run_job task: its end frees the slot, once arq has counted it (arq's own
        # callback comes first). This transaction runs in a task of its own (arq shields
        # it), which ends before arq counts the slot free.
        arq = pool.arq_worker if pool is not None else None
        job_task = arq.tasks.get(job_id) if arq is not None else asyncio.current_task()
        if waker is not None and job_task is not None:
            job_task.add_done_callback(waker.slot_freed)
        commands = [args for args, _options in self.command_stack]
        try:
            own, error = await run_script(
                self.immediate_execute_command,
                tracker,
                tracker.finish_with_command(command, commands),
            )
        finally:
            await self.reset()
        if own in (b"", "") and self.rides.orphaned is not None:
            self.rides.orphaned(job_id, command)
        elif self.rides.finished is not None:
            self.rides.finished(job_id, command)
        if error:
            raise ResponseError(error.decode() if isinstance(error, bytes) else str(error))
        return [True] * len(commands)


def started_reply(reply: Any) -> tuple[str, int]:
    """(status, attempt) from the start script's reply inside arq's fetch."""
    if isinstance(reply, list):
        status, attempt = reply
        return (status.decode() if isinstance(status, bytes) else str(status)), int(attempt)
    return (reply.decode() if isinstance(reply, bytes) else str(reply)), 0


async def run_script(
    run: Callable[..., Awaitable[Any]], tracker: Tracker, command: tuple[Any, ...]
) -> Any:
    """Run one of the tracker's EVALSHA commands (by its script line, else with `run`);
    after a restart, EVAL it."""
    try:
        return await tracker.send(run, *command)
    except NoScriptError:
        source = tracker.script_source(command[1])
        if source is None:
            raise
        return await tracker.send(run, "EVAL", source, *command[2:])


class RidingArqRedis(ArqRedis):
    """arq's pool whose transactions carry agentsched's status scripts, and whose poll
    of the queue waits for work instead of spinning."""

    def __init__(self, rides: StatusRides, *, idle_poll: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rides = rides
        rides.pool = self
        self.idle_poll = idle_poll
        self._polls = 0  # polls of the queue so far
        self._polled = False  # a poll since the last abort check
        self._handed: set[str] = set()  # ids a wake-up named (handed first) for start_jobs
        self._burst = False  # arq counts the queue after each poll only in burst mode
        self.arq_worker: Worker | None = None  # the arq worker polling (its free slots)

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        return RidingPipeline(
            self.rides, self.connection_pool, self.response_callbacks, transaction, shard_hint
        )

    async def zcard(self, name: Any) -> Any:
        # arq counts its queue in `Worker.main` after each poll only in burst mode (and
        # every 10 s in `record_health`, burst or not): a burst worker must never wait.
        if name == self.rides.queue and sys._getframe(1).f_code.co_name == "main":
            self._burst = True
        return await super().zcard(name)

    def _may_wait(self) -> bool:
        # Never on the first poll (a burst worker must see an empty queue at once), never
        # in burst mode, never before the worker has started.
        return (
            self.rides.waker is not None
            and self.rides.tracker is not None
            and not self._burst
            and self._polls > 1
        )

    async def zrangebyscore(  # type: ignore[override]
        self, name: Any, min: Any, max: Any, start: int | None = None, num: int | None = None,
        **options: Any,
    ) -> Any:  # fmt: skip
        tracker, waker = self.rides.tracker, self.rides.waker
        if name != self.rides.queue or tracker is None or options or start is None:
            return await super().zrangebyscore(name, min, max, start, num, **options)
        self._polls += 1
        self._polled = True
        if self.arq_worker is None:  # arq's _poll_iteration: its worker counts the free slots
            caller = sys._getframe(1).f_locals.get("self")
            self.arq_worker = caller if isinstance(caller, Worker) else None
        if waker is not None and waker.handed:
            return self._start_handed(list(waker.handed))  # claimed for it already: start
        since = waker.mark() if waker is not None else (0, 0)
        idle = self._may_wait() and self._may_idle()
        ids, earliest = await self._poll(tracker, start, num or 100, idle)
        if ids or waker is None or not self._may_wait():
            return ids
        wait = self.idle_poll  # (`min` and `max` are arq's arguments here)
        if earliest is not None and earliest / 1000 - time.time() < wait:
            wait = earliest / 1000 - time.time()
        waker.take_hints()  # older than this poll, which found nothing due
        if wait > 0 and not await self._wait(waker, tracker, since, wait, idle, start):
            return ids  # nothing came: arq's loop goes round (abort check, heartbeat)
        # The wake-up named its jobs: claim those (the claim checks each is due) and
        # leave the rest of the queue to the next poll, a moment later.
        hints = waker.take_hints()
        if waker.handed:  # handed jobs first: a slot waits for each
            rest = (h for h in hints if h not in waker.handed)
            hints = self._start_handed([*waker.handed, *rest])
        if hints:
            return hints
        ids, _ = await self._poll(tracker, start, num or 100)
        return ids

    async def _wait(
        self, waker: Waker, tracker: Tracker, since: tuple[int, int], wait: float,
        idle: bool, start: int,
    ) -> bool:  # fmt: skip
        """Wait up to `wait` s for a wake-up after `since`; True if one came. A worker
        that could not register as idle (a job of its own still ran) registers once the
        last of its jobs ends, so the next enqueue hands it the job."""
        deadline = time.monotonic() + wait
        arq = self.arq_worker
        busy = not idle and arq is not None and arq.job_counter > 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not await waker.wait(since, left, freed=busy):
                return False
            if waker.published != since[0]:
                return True
            since = waker.mark()  # a job of this worker ended
            if self._may_idle():
                busy = False
                ids, _ = await self._poll(tracker, start, 1, idle=True)
                if ids:  # queued meanwhile: the woken path claims it
                    waker.poke(ids[0])
                    return True

    def _may_idle(self) -> bool:
        # No job of this worker runs (one may still be finishing), and two slots are free:
        # for the job handed and for a claim already on its way meanwhile. (A busy worker
        # finds its jobs by its polls: an A/B of 10,000 jobs end to end with busy workers
        # registering handed 3 of them, for a poll at each job end.)
        waker, may_idle, arq = self.rides.waker, self.rides.may_idle, self.arq_worker
        return bool(
            waker is not None
            and waker.handoff_ready
            and arq is not None
            and arq.job_counter + 2 <= arq.max_jobs
            and may_idle is not None
            and may_idle()
        )

    async def _poll(
        self, tracker: Tracker, start: int, count: int, idle: bool = False
    ) -> tuple[list[Any], float | None]:
        now = int(time.time() * 1000)
        # Registered as idle a second past the longest wait that may follow.
        until = now + int(self.idle_poll * 1000) + 1000 if idle else 0
        idle_as = self.rides.idle_as if idle else ""
        command = tracker.poll_command(now, start, count, idle_as, until)
        ids, earliest = await run_script(self.execute_command, tracker, command)
        return list(ids), float(earliest) if earliest else None

    def _start_handed(self, ids: list[Any]) -> list[Any]:
        self._handed = {i.decode() if isinstance(i, bytes) else i for i in ids}
        return ids

    async def abort_check_wait(self) -> None:
        """Before arq's abort check: with every slot busy (no poll since the last check),
        wait for a job to end or a cancel to come, instead of checking every poll_delay.

        Right after starting handed jobs it first lets them begin: arq's loop would
        otherwise send the abort check (and a poll) before their run_job tasks ran, and
        an idle worker's pickup would wait for that round trip's write."""
        handed, self._handed = self._handed, set()
        started = self.rides.started  # a job's entry goes when its function begins
        for _ in range(_HEAD_START_PASSES):
            if not handed & started.keys():
                break
            await asyncio.sleep(0)
        polled, self._polled = self._polled, False
        waker, arq = self.rides.waker, self.arq_worker
        if polled or waker is None or not self._may_wait():
            return
        if arq is not None and arq.job_counter < arq.max_jobs:
            return  # a slot is free already: arq polls next
        await waker.wait(waker.mark(), self.idle_poll, freed=True)
