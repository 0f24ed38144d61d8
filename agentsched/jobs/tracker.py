"""Status tracking in Redis: the only module that joins a status write to its event.

Each transition (enqueue, start, finish, retry, cancel, recover) is one Lua script:
it updates the execution hash `x:<id>`, appends the full snapshot to the `records`
stream (written to SQL in batches by `recorder.py`) and the lifecycle event to the
bus stream, in one round trip. The enqueue script also writes arq's job key and
queue entry, so it is the only place that talks to arq's enqueue format.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from arq.jobs import serialize_job

from agentsched.errors import ConfigError
from agentsched.keys import Keys
from agentsched.records import Execution, from_redis
from agentsched.serialization import dumps, dumps_str, now_ms
from agentsched.settings import Settings

_PRELUDE = resources.files("agentsched").joinpath("tracking.lua").read_text()

_ENQUEUE = """
local xkey, job, queue, records, events, idem = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local id, payload, score, job_ttl, maxlen, now, keep, idem_ttl =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
if idem ~= '' then
  local existing = redis.call('GET', idem)
  if existing then return {0, existing} end
end
if redis.call('EXISTS', xkey) == 1 or redis.call('EXISTS', job) == 1 then return {0, id} end
redis.call('SET', job, payload, 'PX', job_ttl)
redis.call('ZADD', queue, score, id)
redis.call('HSET', xkey, unpack(ARGV, 9))
redis.call('PEXPIRE', xkey, tonumber(job_ttl) + tonumber(keep))
if idem ~= '' then redis.call('SET', idem, id, 'PX', tonumber(job_ttl) + tonumber(keep)) end
emit(xkey, records, events, maxlen, now, 'task.queued', keep)
return {1, id}
"""

# The start and finish scripts run once per job, inside arq's transactions: their
# per-app constants (C) are part of the script text, so a call carries only the job's.
_START = """
local id, now, worker, attempt = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local xkey, records, events, running = KEYS[1], C.records, C.events, C.running
local lease, maxlen, keep, lease_ms = C.lease_prefix .. id, C.maxlen, C.keep, C.lease_ms
if attempt == '' then
  -- Sent inside arq's own fetch transaction, right after its INCR of the try counter.
  attempt = redis.call('GET', 'arq:retry:' .. id) or '1'
end
local status = redis.call('HGET', xkey, 'status')
if not status then
  -- A job written to arq's keys without agentsched: the caller sends its details.
  if #ARGV < 10 then return 'missing' end
  redis.call('HSET', xkey, 'id', id, 'app', ARGV[5], 'function', ARGV[6], 'args', ARGV[7],
    'kwargs', ARGV[8], 'metadata', '{}', 'enqueued_at', ARGV[9], 'max_tries', ARGV[10])
elseif TERMINAL[status] then
  return status
end
if redis.call('HGET', xkey, 'cancel_requested') == '1' then
  redis.call('HSET', xkey, 'status', 'cancelled', 'finished_at', now)
  emit(xkey, records, events, maxlen, now, 'task.cancelled', keep)
  return 'cancelled'
end
redis.call('HSET', xkey, 'status', 'running', 'started_at', now, 'attempt', attempt,
  'worker', worker)
redis.call('HDEL', xkey, 'finished_at', 'error', 'error_kind', 'result', 'progress',
  'progress_message')
redis.call('SET', lease, worker, 'PX', lease_ms)
redis.call('SADD', running, id)
emit(xkey, records, events, maxlen, now, 'task.started', keep)
return 'running'
"""

_FINISH = """
local id, now, new, result, err, kind, next_attempt = ARGV[1], ARGV[2], ARGV[3], ARGV[4],
  ARGV[5], ARGV[6], ARGV[7]
local owner = ARGV[8] or ''
local xkey, records, events, running = KEYS[1], C.records, C.events, C.running
local lease, maxlen, keep = C.lease_prefix .. id, C.maxlen, C.keep
local status = redis.call('HGET', xkey, 'status')
if owner ~= '' and status == 'running' and redis.call('HGET', xkey, 'worker') ~= owner then
  -- This worker lost the job to the reaper and another worker runs it now: the late
  -- finish must not touch that run's lease or status.
  return 'stale'
end
redis.call('DEL', lease)
redis.call('SREM', running, id)
if not status or TERMINAL[status] then return status or '' end
if new == 'queued' then
  redis.call('HSET', xkey, 'status', 'queued', 'attempt', next_attempt, 'error', err,
    'error_kind', kind)
  emit(xkey, records, events, maxlen, now, 'task.retrying', keep)
  redis.call('HDEL', xkey, 'error', 'error_kind')
  return new
end
redis.call('HSET', xkey, 'status', new, 'finished_at', now)
if result ~= '' then redis.call('HSET', xkey, 'result', result) end
if err ~= '' then redis.call('HSET', xkey, 'error', err, 'error_kind', kind) end
if new == 'success' and redis.call('HEXISTS', xkey, 'progress') == 1 then
  redis.call('HSET', xkey, 'progress', '1')
end
local names = {success = 'task.completed', failed = 'task.failed', cancelled = 'task.cancelled'}
emit(xkey, records, events, maxlen, now, names[new], keep)
return new
"""

_CANCEL = """
local xkey, queue, job, retry, abort, records, events = KEYS[1], KEYS[2], KEYS[3], KEYS[4],
  KEYS[5], KEYS[6], KEYS[7]
local id, now, maxlen, keep, force = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local status = redis.call('HGET', xkey, 'status')
if not status then return 'missing' end
if TERMINAL[status] then return status end
if status == 'queued' or force == '1' then
  -- A worker that already claimed it finds the record cancelled and does not run it.
  redis.call('ZREM', queue, id)
  redis.call('ZREM', abort, id)
  redis.call('DEL', job, retry)
  redis.call('HSET', xkey, 'status', 'cancelled', 'finished_at', now)
  emit(xkey, records, events, maxlen, now, 'task.cancelled', keep)
  return 'cancelled'
end
-- Running: arq's abort set makes the worker cancel the coroutine on its next poll.
redis.call('HSET', xkey, 'cancel_requested', '1')
redis.call('ZADD', abort, now, id)
return 'cancelling'
"""

_REAP = """
local running, records, events, queue = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, maxlen, keep, xprefix, lprefix = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local recovered = {}
for _, id in ipairs(redis.call('SMEMBERS', running)) do
  if redis.call('EXISTS', lprefix .. id) == 0 then
    redis.call('SREM', running, id)
    redis.call('DEL', 'arq:in-progress:' .. id)
    local xkey = xprefix .. id
    local status = redis.call('HGET', xkey, 'status')
    if status and not TERMINAL[status] then
      local attempt = tonumber(redis.call('HGET', xkey, 'attempt') or '1')
      local max_tries = tonumber(redis.call('HGET', xkey, 'max_tries') or '1')
      -- A job arq already removed cannot run again: requeueing it would leave it queued
      -- forever.
      local gone = redis.call('EXISTS', 'arq:job:' .. id) == 0
        or not redis.call('ZSCORE', queue, id)
      if redis.call('HGET', xkey, 'cancel_requested') == '1' or attempt >= max_tries or gone then
        redis.call('ZREM', queue, id)
        redis.call('ZREM', 'arq:abort', id)
        redis.call('DEL', 'arq:job:' .. id, 'arq:retry:' .. id)
        if redis.call('HGET', xkey, 'cancel_requested') == '1' then
          redis.call('HSET', xkey, 'status', 'cancelled', 'finished_at', now)
          emit(xkey, records, events, maxlen, now, 'task.cancelled', keep)
        else
          redis.call('HSET', xkey, 'status', 'failed', 'finished_at', now, 'error_kind',
            'worker_lost', 'error', 'WorkerLost: the worker running attempt ' .. attempt ..
            ' stopped renewing its lease')
          emit(xkey, records, events, maxlen, now, 'task.failed', keep)
        end
      else
        redis.call('HSET', xkey, 'status', 'queued', 'attempt', attempt + 1,
          'error_kind', 'worker_lost', 'error', 'WorkerLost: retrying')
        emit(xkey, records, events, maxlen, now, 'task.retrying', keep)
        redis.call('HDEL', xkey, 'error', 'error_kind')
      end
      table.insert(recovered, id)
    end
  end
end
return recovered
"""

_OUTSIDE = """
local xkey, records, events = KEYS[1], KEYS[2], KEYS[3]
local id, now, maxlen, keep, new, err, kind = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5],
  ARGV[6], ARGV[7]
redis.call('DEL', ARGV[14])
redis.call('SREM', ARGV[15], id)
local status = redis.call('HGET', xkey, 'status')
if status and TERMINAL[status] then return status end
if not status then
  redis.call('HSET', xkey, 'id', id, 'app', ARGV[8], 'function', ARGV[9], 'args', ARGV[10],
    'kwargs', ARGV[11], 'metadata', '{}', 'enqueued_at', ARGV[12], 'attempt', ARGV[13],
    'max_tries', '1')
end
redis.call('HSET', xkey, 'status', new, 'finished_at', now)
if err ~= '' then redis.call('HSET', xkey, 'error', err, 'error_kind', kind) end
local names = {failed = 'task.failed', cancelled = 'task.cancelled'}
emit(xkey, records, events, maxlen, now, names[new], keep)
return new
"""


_PROGRESS = """
local now, worker, attempt, fraction, message = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local xkey, records, events = KEYS[1], C.records, C.events
-- Only the worker running this attempt reports on it; anything late is dropped.
if redis.call('HGET', xkey, 'status') ~= 'running'
  or redis.call('HGET', xkey, 'worker') ~= worker
  or redis.call('HGET', xkey, 'attempt') ~= attempt then
  return 0
end
if fraction ~= '' then redis.call('HSET', xkey, 'progress', fraction) end
if message ~= '' then redis.call('HSET', xkey, 'progress_message', message) end
emit(xkey, records, events, C.maxlen, now, 'task.progress', C.keep)
return 1
"""


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
        self._enqueue = redis.register_script(_PRELUDE + _ENQUEUE)
        consts = self._constants()
        self._start = redis.register_script(_PRELUDE + consts + _START)
        self._finish = redis.register_script(_PRELUDE + consts + _FINISH)
        self._progress = redis.register_script(_PRELUDE + consts + _PROGRESS)
        self._cancel = redis.register_script(_PRELUDE + _CANCEL)
        self._reap = redis.register_script(_PRELUDE + _REAP)
        self._outside = redis.register_script(_PRELUDE + _OUTSIDE)

    def _constants(self) -> str:
        k = self.keys
        values = {
            "records": k.records,
            "events": k.events,
            "running": k.running,
            "lease_prefix": k.lease_prefix(),
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
        k = self.keys
        payload = serialize_job(
            execution.function,
            execution.args,  # type: ignore[arg-type]
            execution.kwargs,
            None,
            score_ms
            if execution.enqueued_at is None
            else int(execution.enqueued_at.timestamp() * 1000),
            serializer=dumps,
        )
        fields: list[str] = [
            "id",
            execution.id,
            "app",
            execution.app,
            "function",
            execution.function,
            "status",
            "queued",
            "attempt",
            "1",
            "max_tries",
            str(execution.max_tries),
            "args",
            dumps_str(execution.args),
            "kwargs",
            dumps_str(execution.kwargs),
            "metadata",
            dumps_str(execution.metadata),
            "enqueued_at",
            str(now_ms()),
            "seq",
            "0",
        ]
        if execution.task_id:
            fields += ["task_id", execution.task_id]
        if execution.scheduled_for:
            fields += ["scheduled_for", str(int(execution.scheduled_for.timestamp() * 1000))]
        idem = k.idempotency(idempotency_key) if idempotency_key else ""
        created, ident = await self._enqueue(
            keys=[
                k.execution(execution.id),
                k.job(execution.id),
                k.queue,
                k.records,
                k.events,
                idem,
            ],
            args=[
                execution.id,
                payload,
                score_ms,
                job_ttl_ms,
                self._maxlen,
                now_ms(),
                self._keep_ms,
                0,
                *fields,
            ],
        )
        return bool(created), ident.decode() if isinstance(ident, bytes) else str(ident)

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
        result = _text(await self._start(keys=keys, args=[*common, attempt]))
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
            result = _text(await self._start(keys=keys, args=[*common, attempt, *details]))
        return result

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
        keys = [self.keys.execution(execution_id)]
        args = [execution_id, now_ms(), status, encoded, error, error_kind, next_attempt, worker]
        return ("EVALSHA", self._finish.sha, len(keys), *keys, *args)

    async def run_command(self, command: tuple[Any, ...]) -> str:
        """Run a command from `start_command`/`finish_command` on its own."""
        script = self._start if command[1] == self._start.sha else self._finish
        count = command[2]
        keys, args = command[3 : 3 + count], command[3 + count :]
        return _text(await script(keys=list(keys), args=list(args)))

    async def load_scripts(self) -> None:
        """Load the worker's scripts, so EVALSHA inside arq's transactions finds them."""
        for script in (self._start, self._finish):
            await self.redis.script_load(script.script)

    async def finish(self, execution_id: str, status: str, **options: Any) -> str:
        """End an attempt: success/failed/cancelled, or back to queued (a retry).

        Takes `finish_command`'s options and runs its command on its own.
        """
        return await self.run_command(self.finish_command(execution_id, status, **options))

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
            ],
            args=[execution_id, now_ms(), self._maxlen, self._keep_ms, "1" if force else "0"],
        )
        return _text(out)

    async def reap(self) -> list[str]:
        """Recover executions whose worker stopped renewing the lease; returns their ids."""
        k = self.keys
        out = await self._reap(
            keys=[k.running, k.records, k.events, k.queue],
            args=[now_ms(), self._maxlen, self._keep_ms, k.exec_prefix(), k.lease_prefix()],
        )
        return [_text(i) for i in out]

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
    ) -> str:
        """Record an end decided by arq itself (unknown function, bad payload, abort)."""
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
            ],
        )
        return _text(out)

    async def renew(self, execution_ids: list[str], worker: str) -> None:
        """Extend the leases of running executions and record this worker as alive."""
        ms = int(self.settings.lease_seconds * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            for ident in execution_ids:
                pipe.pexpire(self.keys.lease(ident), ms)
            pipe.zadd(self.keys.workers, {worker: now_ms()})
            await pipe.execute()

    async def progress(
        self,
        execution_id: str,
        worker: str,
        attempt: int,
        fraction: float | None,
        message: str | None,
    ) -> bool:
        """Record a running attempt's progress; False if that attempt is not running here."""
        args: list[str | int] = [
            now_ms(),
            worker,
            str(attempt),
            "" if fraction is None else repr(float(fraction)),
            message or "",
        ]
        return bool(await self._progress(keys=[self.keys.execution(execution_id)], args=args))

    async def get(self, execution_id: str) -> Execution | None:
        raw = await self.redis.hgetall(self.keys.execution(execution_id))  # type: ignore[misc]
        if not raw or b"id" not in raw:
            return None
        return from_redis(raw)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
