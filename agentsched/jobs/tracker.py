"""Status tracking in Redis: the only module that joins a status write to its event.

Each transition (enqueue, start, finish, retry, cancel, recover) is one Lua script:
it updates the execution hash `x:<id>`, appends the full snapshot to the `records`
stream (written to SQL in batches by `recorder.py`) and the lifecycle event to the
bus stream, in one round trip. The enqueue script also writes arq's job key and
queue entry, so it is the only place that talks to arq's enqueue format.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from arq.constants import expires_extra_ms  # a job key lives one day past its due time
from arq.jobs import serialize_job
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from agentsched.connections import script_line_of
from agentsched.errors import ConfigError
from agentsched.execution import Execution, from_redis
from agentsched.jobs import recovery_scripts as rlua
from agentsched.jobs import status_scripts as lua
from agentsched.jobs.batch import Batch
from agentsched.keys import Keys
from agentsched.observability import metrics
from agentsched.observability.tracing import job_serializer
from agentsched.serialization import dumps_str, now_ms, text
from agentsched.settings import Settings


class Encoded(str):
    """A result already encoded as JSON (the worker checks it is JSON once)."""


class Tracker:
    """Status transitions of one app's executions, each one atomic script call."""

    def __init__(self, redis: aioredis.Redis, settings: Settings, app: str | None = None) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = Keys(settings.redis_prefix, app or settings.app)
        self._maxlen = str(settings.event_maxlen)
        self._keep_ms = str(int(settings.keep_result * 1000))
        self._lease_ms = str(int(settings.lease_seconds * 1000))
        consts = self._constants()
        self._enqueue = redis.register_script(lua.enqueue_script(lua.PRELUDE + consts))
        self._start = redis.register_script(lua.PRELUDE + consts + lua.START)
        self._claim_start = redis.register_script(lua.PRELUDE + consts + lua.CLAIM_START)
        self._finish_with = redis.register_script(lua.PRELUDE + consts + lua.FINISH_WITH)
        self._poll = redis.register_script(lua.POLL)
        self._finish = redis.register_script(lua.PRELUDE + consts + lua.FINISH)
        self._progress = redis.register_script(lua.PRELUDE + consts + lua.PROGRESS)
        self._cancel = redis.register_script(lua.PRELUDE + lua.CANCEL)
        self._reap = redis.register_script(lua.PRELUDE + rlua.REAP)
        self._outside = redis.register_script(lua.PRELUDE + rlua.OUTSIDE)
        self._renew = redis.register_script(rlua.RENEW)
        self._reconcile = redis.register_script(lua.PRELUDE + rlua.RECONCILE)
        # The hot path's scripts (enqueue, claim, finish, poll) go by the pool's script
        # line when it has one (script_line.py).
        self._line = script_line_of(redis)

    def _constants(self) -> str:
        k = self.keys
        values = {
            "records": k.records,
            "events": k.events,
            "running": k.running,
            "lease_prefix": k.lease_prefix(),
            "settling": k.settling,
            "idle": k.idle,
            "maxlen": self._maxlen,
            "keep": self._keep_ms,
            "lease_ms": self._lease_ms,
        }
        if any("]==]" in v for v in values.values()):
            raise ConfigError("AGENTSCHED_REDIS_PREFIX: must not contain ']==]'")
        fields = ", ".join(f"{name} = [==[{value}]==]" for name, value in values.items())
        return f"local C = {{{fields}}}\n"

    async def enqueue(
        self,
        execution: Execution,
        *,
        score_ms: int,
        job_ttl_ms: int,
        idempotency_key: str | None = None,
    ) -> tuple[bool, str]:
        """Write the arq job and the queued record; (created, id). Dedups on id and key."""
        batch = await self.enqueue_many([(execution, score_ms, job_ttl_ms, idempotency_key)])
        return batch.results[0]

    async def enqueue_many(self, jobs: list[tuple[Execution, int, int, str | None]]) -> Batch:
        """`enqueue` for many (execution, score_ms, job_ttl_ms, idempotency_key): one call
        of the enqueue script, one round trip. The batch's `results` say what it made."""
        k = self.keys
        batch = Batch()
        for execution, score_ms, job_ttl_ms, idempotency_key in jobs:
            idem = k.idempotency(idempotency_key) if idempotency_key else ""
            batch.add(execution, score_ms, job_ttl_ms, idem)
        keys = [k.queue, k.records, k.events, k.wake, k.idle]
        args = batch.argv(self._maxlen, self._keep_ms, k.exec_prefix())
        batch.done(await self._call(self._enqueue, keys, args))
        return batch

    async def send(self, slow: Callable[..., Awaitable[Any]], *command: Any) -> Any:
        """One raw script command by the script line, or by `slow` (redis-py)."""
        if self._line is None:
            return await slow(*command)
        return await self._line.call(slow, *command)

    async def _call(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            return await self.send(self.redis.execute_command, *command)
        except NoScriptError:  # Redis lost its scripts: the Script loads it again
            return await script(keys=keys, args=args)

    async def start(
        self,
        execution_id: str,
        *,
        worker: str,
        attempt: int,
        function: str,
        args: Any,
        kwargs: Any,
        enqueued_ms: int,
        max_tries: int,
    ) -> str:
        """Mark running and take the lease; returns the status ('cancelled' = do not run)."""
        keys = [self.keys.execution(execution_id)]
        common: list[str | int] = [execution_id, now_ms(), worker]
        result = text(await self._start(keys=keys, args=[*common, attempt]))
        if result == "missing":
            # Only jobs enqueued around agentsched pay for sending their details.
            details: list[str | int] = [
                self.keys.app,
                function,
                dumps_str(args),
                dumps_str(kwargs),
                enqueued_ms,
                max_tries,
            ]
            result = text(await self._start(keys=keys, args=[*common, attempt, *details]))
        return result

    def claim_start_command(
        self, execution_id: str, worker: str, in_progress_ms: int, hold_ms: int = 0,
        idle_as: str = "",
    ) -> tuple[Any, ...]:  # fmt: skip
        """arq's claim and fetch of a job with the start script, as one raw command.
        `hold_ms` > 0 (Redis came back lately): every worker first holds off recovering
        expired leases that long. The claim ends `idle_as` (see `poll_command`)."""
        k = self.keys
        keys = (
            k.in_progress(execution_id),
            k.queue,
            k.execution(execution_id),
            k.job(execution_id),
            k.retry(execution_id),
            k.abort,
        )
        args = (execution_id, now_ms(), in_progress_ms, worker, hold_ms, idle_as)
        return ("EVALSHA", self._claim_start.sha, len(keys), *keys, *args)

    def poll_command(
        self, due_ms: int, offset: int, count: int, idle_as: str = "", idle_until: int = 0
    ) -> tuple[Any, ...]:
        """arq's poll of the queue, answering also when the earliest job is due; with
        `idle_as` (`<worker id>|<lease ms>`) an empty poll registers the worker as idle
        until `idle_until` (ms), to be handed the next job enqueued."""
        args = (due_ms, offset, count, idle_as, idle_until)
        return ("EVALSHA", self._poll.sha, 2, self.keys.queue, self.keys.idle, *args)

    def finish_with_command(
        self, finish: tuple[Any, ...], commands: list[tuple[Any, ...]]
    ) -> tuple[Any, ...]:
        """`finish` (from `finish_command`) run after `commands` (arq's finish
        transaction), atomically, as one script call."""
        flat: list[Any] = []
        for command in commands:
            flat += [len(command), *command]
        return ("EVALSHA", self._finish_with.sha, *finish[2:], *flat)

    def script_source(self, sha: str) -> str | None:
        """The text of one of this tracker's scripts, to load it again (NOSCRIPT)."""
        scripts = (self._start, self._finish, self._claim_start, self._poll, self._finish_with)
        return next((str(s.script) for s in scripts if s.sha == sha), None)

    def start_command(self, execution_id: str, worker: str) -> tuple[Any, ...]:
        """The start script as a raw command, to ride in arq's fetch transaction."""
        xkey = self.keys.execution(execution_id)
        return ("EVALSHA", self._start.sha, 1, xkey, execution_id, now_ms(), worker, "")

    def finish_command(
        self,
        execution_id: str,
        status: str,
        *,
        result: Any = None,
        error: str = "",
        error_kind: str = "",
        next_attempt: int = 0,
        worker: str = "",
        defer_ms: int = 0,
    ) -> tuple[Any, ...]:
        """The finish script as a raw command (see `finish`).

        With `worker`, a finish from a worker that lost the job to the reaper (while
        another worker runs it) changes nothing and returns 'stale'.
        """
        encoded = (
            (result if isinstance(result, Encoded) else dumps_str(result))
            if status == "success"
            else ""
        )
        args = (execution_id, now_ms(), status, encoded, error, error_kind, next_attempt)
        xkey = self.keys.execution(execution_id)
        return ("EVALSHA", self._finish.sha, 1, xkey, *args, worker, defer_ms)

    async def run_command(self, command: tuple[Any, ...]) -> Any:
        """Run a command from `start_command`/`finish_command` on its own; the raw reply."""
        script = self._start if command[1] == self._start.sha else self._finish
        count = command[2]
        keys, args = command[3 : 3 + count], command[3 + count :]
        return await script(keys=list(keys), args=list(args))

    async def load_scripts(self) -> None:
        """Load the worker's scripts, so EVALSHA inside arq's transactions finds them."""
        for script in (self._start, self._finish, self._claim_start, self._poll, self._finish_with):
            await self.redis.script_load(script.script)

    async def finish(self, execution_id: str, status: str, **options: Any) -> str:
        """End an attempt: success/failed/cancelled, or back to queued (a retry).

        Takes `finish_command`'s options and runs its command on its own.
        """
        return text(await self.run_command(self.finish_command(execution_id, status, **options)))

    async def cancel(self, execution_id: str, *, force: bool = False) -> str:
        """'cancelled', 'cancelling' (a worker will stop it), 'missing' or the terminal status."""
        k = self.keys
        out = await self._cancel(
            keys=[
                k.execution(execution_id),
                k.queue,
                k.job(execution_id),
                k.retry(execution_id),
                k.abort,
                k.records,
                k.events,
                k.wake,
            ],
            args=[execution_id, now_ms(), self._maxlen, self._keep_ms, "1" if force else "0"],
        )
        return text(out)

    async def reap(self) -> list[str]:
        """Recover executions whose worker stopped renewing the lease; returns their ids."""
        k = self.keys
        keys = [k.running, k.records, k.events, k.queue, k.wake]
        args = [now_ms(), self._maxlen, self._keep_ms, k.exec_prefix(), k.lease_prefix()]
        out = await self._call(self._reap, keys, [*args, k.settling])
        return [text(i) for i in out]

    async def fail_outside(
        self,
        execution_id: str,
        status: str,
        *,
        error: str,
        error_kind: str,
        function: str = "<unknown>",
        args: Any = (),
        kwargs: Any = None,
        enqueued_ms: int = 0,
        attempt: int = 1,
        only_if_known: bool = False,
    ) -> str:
        """Record an end decided by arq itself (unknown function, bad payload, abort).

        `only_if_known`: write nothing when Redis has no record of the execution.
        """
        k = self.keys
        out = await self._outside(
            keys=[k.execution(execution_id), k.records, k.events],
            args=[
                execution_id,
                now_ms(),
                self._maxlen,
                self._keep_ms,
                status,
                error,
                error_kind,
                self.keys.app,
                function,
                dumps_str(list(args)),
                dumps_str(kwargs or {}),
                enqueued_ms or now_ms(),
                attempt,
                k.lease(execution_id),
                k.running,
                "1" if only_if_known else "0",
            ],
        )
        return text(out)

    async def renew(
        self, execution_ids: list[str], worker: str, info: dict[str, int] | None = None
    ) -> list[str]:
        """Extend this worker's leases and record it as alive; returns the leases it lost.

        A lost lease belongs to another worker now (or the reaper ended the run): the
        caller must stop that job and write nothing for it. `info` (start time, jobs
        running and done) is kept for three leases under `Keys.worker_info`, for the
        dashboard's Workers page.
        """
        k = self.keys
        fields = [item for pair in (info or {}).items() for item in pair]
        args = [k.lease_prefix(), k.exec_prefix(), worker, now_ms(), self._lease_ms]
        args += [len(fields), *fields, *execution_ids]
        lost = await self._call(self._renew, [k.workers, k.worker_info(worker)], args)
        return [text(i) for i in lost]

    async def reconcile(
        self, row: Execution, *, sql_status: str, due_ms: int, redis_settled: bool
    ) -> str:
        """Compare one execution SQL holds as unfinished with Redis, and heal Redis.

        Returns the action taken (see `recovery_scripts.RECONCILE`).
        """
        k = self.keys
        enqueued_ms = int(row.enqueued_at.timestamp() * 1000) if row.enqueued_at else now_ms()
        payload = serialize_job(
            row.function,
            row.args,  # type: ignore[arg-type]
            row.kwargs,
            None,
            enqueued_ms,
            serializer=job_serializer(row.metadata),
        )
        now = now_ms()
        ttl = max(due_ms - now, 0) + expires_extra_ms
        fields: list[str | int] = [
            "id", row.id, "app", row.app, "function", row.function,
            "args", dumps_str(row.args), "kwargs", dumps_str(row.kwargs),
            "metadata", dumps_str(row.metadata), "enqueued_at", enqueued_ms,
            "max_tries", row.max_tries, "attempt", row.attempt, "due", max(due_ms, now),
        ]  # fmt: skip
        if row.task_id:
            fields += ["task_id", row.task_id]
        if row.scheduled_for:
            fields += ["scheduled_for", int(row.scheduled_for.timestamp() * 1000)]
        out = await self._reconcile(
            keys=[
                k.execution(row.id),
                k.job(row.id),
                k.queue,
                k.records,
                k.events,
                k.lease(row.id),
                k.running,
                k.wake,
            ],
            args=[
                row.id,
                now,
                self._maxlen,
                self._keep_ms,
                sql_status,
                row.seq,
                payload,
                max(due_ms, now),
                ttl,
                row.attempt,
                row.max_tries,
                "1" if redis_settled else "0",
                *fields,
            ],
        )
        return text(out)

    async def progress(
        self, execution_id: str, worker: str, attempt: int, fraction: float | None,
        message: str | None,
    ) -> bool:  # fmt: skip
        """Record a running attempt's progress; False if that attempt is not running here."""
        value = "" if fraction is None else repr(float(fraction))
        args: list[str | int] = [now_ms(), worker, str(attempt), value, message or ""]
        recorded = bool(await self._progress(keys=[self.keys.execution(execution_id)], args=args))
        if recorded:
            metrics.task_events(self.keys.app)  # its task.progress event
        return recorded

    async def get(self, execution_id: str) -> Execution | None:
        raw = await self.redis.hgetall(self.keys.execution(execution_id))  # type: ignore[misc]
        if not raw or b"id" not in raw:
            return None
        return from_redis(raw)
