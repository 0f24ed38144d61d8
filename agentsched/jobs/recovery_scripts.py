"""The Lua source of the recovery scripts: lease renewal, the reaper, arq's endings
outside a run, and the reconciler's check against SQL. Like the status scripts
(`status_scripts.py`) each status change here writes the record, its snapshot and its
event in one step: `tracker.Tracker` prepends `status_scripts.PRELUDE`.
"""

from __future__ import annotations

REAP = """
local running, records, events, queue = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, maxlen, keep, xprefix, lprefix = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local recovered = {}
-- Just after an outage, workers first re-send the ends Redis may have lost: a lease
-- that ran out during the outage is no proof its worker is gone.
if redis.call('EXISTS', ARGV[6]) == 1 then return recovered end
for _, id in ipairs(redis.call('SMEMBERS', running)) do
  if redis.call('EXISTS', lprefix .. id) == 0 then
    redis.call('SREM', running, id)
    redis.call('DEL', 'arq:in-progress:' .. id)
    local xkey = xprefix .. id
    local status = redis.call('HGET', xkey, 'status')
    if status and not TERMINAL[status] then
      local attempt = tonumber(redis.call('HGET', xkey, 'attempt') or '1')
      local max_tries = tonumber(redis.call('HGET', xkey, 'max_tries') or '1')
      if redis.call('HGET', xkey, 'handed') == '1' then
        -- Handed to a worker that never took it up (see ENQUEUE): that was no attempt.
        redis.call('HDEL', xkey, 'handed')
        attempt = attempt - 1
      end
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
if #recovered > 0 then redis.call('PUBLISH', KEYS[5], 'reaped') end
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
-- An expired job whose record is gone too: Redis lost both (a restart, a flush), it
-- did not expire. The reconciler puts it back from SQL; record nothing here.
if not status and ARGV[16] == '1' then return 'unknown' end
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


# Every lease period: extend this worker's leases (and arq's claim of the same jobs).
# A lease held by no one on an execution Redis has forgotten (a restart without
# persistence, FLUSHDB) is taken again: the job still runs here and its end goes to SQL.
# Returns the ids whose lease another worker holds or the reaper ended: stop those.
# KEYS: the workers set, this worker's info hash (the dashboard's: kept three leases).
# ARGV: lease prefix, x-key prefix, worker, now, lease ms, the count of the info's
# fields and values, those, then the ids of the jobs running here.
RENEW = """
local workers, lprefix, xprefix = KEYS[1], ARGV[1], ARGV[2]
local worker, now, lease_ms = ARGV[3], ARGV[4], ARGV[5]
local info = tonumber(ARGV[6])
if info > 0 then
  redis.call('HSET', KEYS[2], unpack(ARGV, 7, 6 + info))
  redis.call('PEXPIRE', KEYS[2], 3 * tonumber(lease_ms))
end
local lost = {}
for i = 7 + info, #ARGV do
  local id = ARGV[i]
  local lease = lprefix .. id
  local owner = redis.call('GET', lease)
  if owner == worker then
    redis.call('PEXPIRE', lease, lease_ms)
    redis.call('HDEL', xprefix .. id, 'handed')  -- a handed job: its worker took it up
    redis.call('PEXPIRE', 'arq:in-progress:' .. id, math.floor(tonumber(lease_ms) * 4 / 3))
  elseif not owner and (redis.call('EXISTS', xprefix .. id) == 0
      or (redis.call('HGET', xprefix .. id, 'status') == 'running'
          and redis.call('HGET', xprefix .. id, 'worker') == worker)) then
    -- Forgotten by Redis, or run out but not yet taken by anyone: still ours.
    redis.call('SET', lease, worker, 'PX', lease_ms)
  else
    table.insert(lost, id)
  end
end
redis.call('ZADD', workers, now, worker)
return lost
"""

# The reconciler's check of one execution SQL holds as queued or running, against
# what Redis has. Returns what it did: ok, held, requeued, recovered, failed,
# restored, reaping or settled (see reconciler.py).
RECONCILE = """
local xkey, job, queue, records, events, lease, running = KEYS[1], KEYS[2], KEYS[3],
  KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local id, now, maxlen, keep, sql_status, sql_seq, payload, due, job_ttl =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6]), ARGV[7], ARGV[8], ARGV[9]
local attempt, max_tries = tonumber(ARGV[10]), tonumber(ARGV[11])
local redis_settled = ARGV[12] == '1'
local status = redis.call('HGET', xkey, 'status')
if not status then
  -- Redis forgot this execution. A worker that still runs it (SQL may not know it
  -- started) takes its lease again within a lease period: wait until Redis has been
  -- back that long.
  if redis.call('EXISTS', lease) == 1 or not redis_settled then return 'held' end
  redis.call('HSET', xkey, unpack(ARGV, 13))
  redis.call('HSET', xkey, 'seq', sql_seq)
  if sql_status == 'running' and attempt >= max_tries then
    redis.call('HSET', xkey, 'status', 'failed', 'finished_at', now, 'error_kind',
      'worker_lost', 'error', 'WorkerLost: Redis lost attempt ' .. attempt .. ' while it ran')
    emit(xkey, records, events, maxlen, now, 'task.failed', keep)
    return 'failed'
  end
  local action, event = 'requeued', 'task.queued'
  if sql_status == 'running' then
    attempt, action, event = attempt + 1, 'recovered', 'task.retrying'
    redis.call('HSET', xkey, 'error_kind', 'worker_lost', 'error', 'WorkerLost: retrying')
  end
  redis.call('HSET', xkey, 'status', 'queued', 'attempt', attempt)
  redis.call('SET', job, payload, 'PX', job_ttl)
  redis.call('ZADD', queue, due, id)
  redis.call('PUBLISH', KEYS[8], id)
  redis.call('PEXPIRE', xkey, tonumber(job_ttl) + tonumber(keep))
  emit(xkey, records, events, maxlen, now, event, keep)
  redis.call('HDEL', xkey, 'error', 'error_kind')
  return action
end
if TERMINAL[status] then
  -- Finished in Redis, not (yet) in SQL: never run again; hand SQL the snapshot once
  -- more, numbered past SQL's row in case Redis restarted its count.
  local seq = tonumber(redis.call('HGET', xkey, 'seq') or '0')
  if seq <= sql_seq then redis.call('HSET', xkey, 'seq', sql_seq + 1) end
  local flat = redis.call('HGETALL', xkey)
  local h = {}
  for i = 1, #flat, 2 do h[flat[i]] = flat[i + 1] end
  redis.call('XADD', records, '*', 'i', id, 'q', h['seq'], 's', cjson.encode(h))
  return 'settled'
end
if status == 'queued' then
  if redis.call('EXISTS', 'arq:in-progress:' .. id) == 1 then return 'ok' end
  local has_job = redis.call('EXISTS', job) == 1
  local score = redis.call('ZSCORE', queue, id)
  if has_job and score then return 'ok' end
  if not has_job then redis.call('SET', job, payload, 'PX', job_ttl) end
  if not score then redis.call('ZADD', queue, due, id) end
  redis.call('PUBLISH', KEYS[8], id)
  return 'restored'
end
-- running: without a lease and outside the running set, the reaper would never see it
if redis.call('EXISTS', lease) == 0 and redis.call('SISMEMBER', running, id) == 0 then
  redis.call('SADD', running, id)
  return 'reaping'
end
return 'ok'
"""
