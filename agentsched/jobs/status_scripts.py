"""The Lua source of the status scripts: one per transition, no Python logic.

Every script starts with the prelude in `status_scripts.lua` (helpers that update the
execution hash `x:<id>` and append its snapshot to the `records` stream and its
lifecycle event to the bus stream); `tracker.Tracker` registers and calls them. The
start, finish and progress scripts also take per-app constants (`C`) in their text.
"""

from __future__ import annotations

from importlib import resources

PRELUDE = resources.files("agentsched.jobs").joinpath("status_scripts.lua").read_text()

ENQUEUE = """
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
START = """
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

FINISH = """
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

CANCEL = """
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

REAP = """
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

OUTSIDE = """
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


PROGRESS = """
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
