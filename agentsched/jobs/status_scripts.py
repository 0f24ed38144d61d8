"""The Lua source of the status scripts: one per transition, no Python logic.

Every script starts with the prelude in `status_scripts.lua` (helpers that update the
execution hash `x:<id>` and append its snapshot to the `records` stream and its
lifecycle event to the bus stream); `tracker.Tracker` registers and calls them. The
start, finish and progress scripts also take per-app constants (`C`) in their text.
"""

from __future__ import annotations

from importlib import resources

PRELUDE = resources.files("agentsched.jobs").joinpath("status_scripts.lua").read_text()

# Enqueue one or many jobs in one call, in the form `batch.Batch` builds: the fields a
# group of jobs shares (a template: its hash fields, its `task.queued` event's JSON
# around the id) once, then per job only its own. KEYS: queue, records, events, wake
# channel, idle set. ARGV: maxlen, keep, x-key prefix, now, the call's first snapshots
# (one `records` entry), template count; per template: field count, the fields, the
# event's three parts; then per job: template (from 1), id, args, kwargs, arq payload,
# score, job ttl, idempotency key or ''. Returns {one '1' or '0' (not created) per job,
# the ids the duplicates found}. A job due now goes straight to an idle worker when one
# waits (the handoff: see arq_pool.py): claimed and started here for that worker,
# exactly as its own claim would, and published on its own channel with what the claim
# answers, so it starts without a round trip. `handed` marks the record until the
# worker renews the lease: if the worker never got it (it died while idle, the message
# was lost), the reaper queues it again without counting an attempt.
_ENQUEUE = """
local queue, records, events, wake, idle = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local maxlen, keep, xprefix, now = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local none_idle = false  -- no worker can become idle while the script runs
local function hand_off(id, xkey, payload, score)
  if none_idle then return false end
  local member = redis.call('ZRANGEBYSCORE', idle, now, '+inf', 'LIMIT', 0, 1)[1]
  if not member then none_idle = true; return false end
  redis.call('ZREM', idle, member)
  local worker, lease_ms = string.match(member, '^(.*)|(%d+)$')
  if not worker then return false end
  redis.call('PSETEX', 'arq:in-progress:' .. id, math.floor(tonumber(lease_ms) * 4 / 3), '1')
  local try = redis.call('INCR', 'arq:retry:' .. id)
  redis.call('EXPIRE', 'arq:retry:' .. id, 88400)
  redis.call('HSET', xkey, 'handed', '1')
  local start_job, C = starter()  -- built only for a handoff: an enqueue runs no prelude
  C.lease_ms = lease_ms
  local started = start_job({xkey}, {id, now, worker, ''})
  local status, attempt = started, 0
  if type(started) == 'table' then status, attempt = started[1], started[2] end
  redis.call('PUBLISH', wake .. ':' .. worker,
    table.concat({id, score, try, status, attempt, payload}, '\\n'))
  return true
end
local templates, i = {}, 7
for t = 1, tonumber(ARGV[6]) do
  local n = tonumber(ARGV[i])
  -- Where its fields are in ARGV, and its event's parts.
  templates[t] = {i + 1, i + n, ARGV[i + n + 1], ARGV[i + n + 2], ARGV[i + n + 3]}
  i = i + n + 4
end
local flags, found, skipped, queued, woke, last = {}, {}, {}, {}, false, nil
while i <= #ARGV do
  local t, id, args, kwargs, payload, score, job_ttl, idem = templates[tonumber(ARGV[i])],
    ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], tonumber(ARGV[i + 6]),
    ARGV[i + 7]
  i = i + 8
  local xkey, job = xprefix .. id, 'arq:job:' .. id
  local existing = idem ~= '' and redis.call('GET', idem)
  if existing or redis.call('EXISTS', xkey, job) > 0 then
    table.insert(flags, '0'); table.insert(found, existing or id)
    table.insert(skipped, #flags - 1)
  else
    redis.call('SET', job, payload, 'PX', job_ttl)
    table.insert(queued, score); table.insert(queued, id)
    redis.call('HSET', xkey, 'id', id, 'args', args, 'kwargs', kwargs, 'due', score,
      unpack(ARGV, t[1], t[2]))
    redis.call('PEXPIRE', xkey, job_ttl + keep)
    if idem ~= '' then redis.call('SET', idem, id, 'PX', job_ttl + keep) end
    local event = t[3] .. id .. t[4] .. id .. t[5]
    if i > #ARGV then  -- the call's last job trims the stream for all of them
      redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', 'data', event)
    else
      redis.call('XADD', events, '*', 'data', event)
    end
    table.insert(flags, '1')
    last = id
    if tonumber(score) > tonumber(now) or not hand_off(id, xkey, payload, score) then
      woke = true
    end
  end
end
if #queued > 0 then
  for from = 1, #queued, 2000 do  -- unpack's limit is about 8,000 values
    redis.call('ZADD', queue, unpack(queued, from, math.min(from + 1999, #queued)))
  end
  if #skipped > 0 then
    redis.call('XADD', records, '*', 'b', ARGV[5], 'x', table.concat(skipped, ','))
  else
    redis.call('XADD', records, '*', 'b', ARGV[5])
  end
end
-- Wakes idle workers; one id names the job for a single enqueue.
if woke then redis.call('PUBLISH', wake, #flags == 1 and last or 'jobs') end
return {table.concat(flags), found}
"""

# The start and finish scripts run once per job, inside arq's transactions: their
# per-app constants (C) are part of the script text, so a call carries only the job's.
START = """
local id, now, worker, attempt = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local xkey, records, events, running = KEYS[1], C.records, C.events, C.running
local lease, maxlen, keep, lease_ms = C.lease_prefix .. id, C.maxlen, C.keep, C.lease_ms
local riding = attempt == ''
if riding then
  -- Sent inside arq's own fetch transaction. The attempt is the record's own count:
  -- arq's try counter also counts runs a shutdown interrupted, which are not attempts.
  attempt = redis.call('HGET', xkey, 'attempt') or redis.call('GET', 'arq:retry:' .. id) or '1'
end
local status = redis.call('HGET', xkey, 'status')
if not status then
  -- A job written to arq's keys without agentsched: the caller sends its details.
  if #ARGV < 10 then return 'missing' end
  redis.call('HSET', xkey, 'id', id, 'app', ARGV[5], 'function', ARGV[6], 'args', ARGV[7],
    'kwargs', ARGV[8], 'metadata', '{}', 'enqueued_at', ARGV[9], 'max_tries', ARGV[10])
elseif TERMINAL[status] then
  return status
elseif status == 'running' then
  -- arq's claim outlived by the previous run: its worker died (the claim lives one
  -- lease). Still leased: another worker runs it, leave it. Otherwise recover it here,
  -- as the reaper would: one more attempt, or failed when none is left.
  if redis.call('EXISTS', lease) == 1 or redis.call('EXISTS', C.settling) == 1 then
    return 'elsewhere'
  end
  redis.call('SREM', running, id)
  if redis.call('HGET', xkey, 'handed') == '1' then
    -- Handed to a worker that never took it up (see ENQUEUE): that was no attempt.
    redis.call('HDEL', xkey, 'handed')
    attempt = tostring(tonumber(attempt) - 1)
  end
  local tries = tonumber(redis.call('HGET', xkey, 'max_tries') or '1')
  if tonumber(attempt) >= tries and redis.call('HGET', xkey, 'cancel_requested') ~= '1' then
    redis.call('HSET', xkey, 'status', 'failed', 'finished_at', now, 'error_kind',
      'worker_lost', 'error', 'WorkerLost: the worker running attempt ' .. attempt ..
      ' stopped renewing its lease')
    emit(xkey, records, events, maxlen, now, 'task.failed', keep)
    return 'failed'
  end
  attempt = tostring(tonumber(attempt) + 1)
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
if riding then return {'running', tonumber(attempt)} end
return 'running'
"""

# arq's claim of a job and its fetch, with the start script, in one round trip (see
# arq_pool.py). arq claims with WATCH/EXISTS/ZSCORE/MULTI PSETEX EXEC, then fetches
# with MULTI GET job, INCR retry, EXPIRE retry, ZREM abort EXEC: the same commands,
# in the same order, atomically; the start script follows as it did inside the fetch.
# Not claimed: {exists, score or ''}. Claimed: {0, score, job payload or false,
# try, aborted, start status, start attempt}.
_CLAIM = """
local inprog, queue, xkey, job, retry, abort = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5],
  KEYS[6]
local id, now, ttl, worker, hold = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5] or '0')
-- A worker that claims is no longer idle: no enqueue hands it a job from here on.
if ARGV[6] and ARGV[6] ~= '' then redis.call('ZREM', C.idle, ARGV[6]) end
local exists = redis.call('EXISTS', inprog)
local score = redis.call('ZSCORE', queue, id)
if exists == 1 or not score or tonumber(score) > tonumber(now) then
  return {exists, score or ''}
end
redis.call('PSETEX', inprog, ttl, '1')
local payload = redis.call('GET', job)
local try = redis.call('INCR', retry)
redis.call('EXPIRE', retry, 88400)
local aborted = redis.call('ZREM', abort, id)
-- Just after an outage, a lease that ran out meanwhile is no proof its worker is gone
-- (its end may still be on the way): this claim must not recover it.
if hold > 0 then redis.call('SET', C.settling, worker, 'PX', hold, 'NX') end
local started = start_job({xkey}, {id, now, worker, ''})
local status, attempt = started, 0
if type(started) == 'table' then status, attempt = started[1], started[2] end
return {0, score, payload, try, aborted, status, attempt}
"""
CLAIM_START = f"local function start_job(KEYS, ARGV)\n{START}\nend\n{_CLAIM}"


def enqueue_script(prelude: str) -> str:
    """The enqueue script, with `prelude` (PRELUDE and an app's constants `C`) and the
    start script inside `starter()`, which only a handoff calls."""
    start = f"local function start_job(KEYS, ARGV)\n{START}\nend\nreturn start_job, C\n"
    return f"local function starter()\n{prelude}{start}end\n{_ENQUEUE}"


# arq's poll of its queue (ZRANGEBYSCORE), answering only jobs that can be claimed: arq
# keeps a running job in its queue until it ends, and a poll that returned those made an
# idle-looking worker spin on claims that fail. Up to ARGV[3] due ids without a claim
# (of the first 1,000 due), and when there are none the score of the earliest job not
# yet due: {ids, ''} or {{}, earliest score or ''}. With ARGV[4] (`<worker>|<lease ms>`)
# a poll that finds nothing registers the worker as idle until ARGV[5] (ms) in the idle
# set, KEYS[2], for the enqueue script's handoff.
POLL = """
local now, offset, count = ARGV[1], ARGV[2], tonumber(ARGV[3])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', offset, 1000)
local ids = {}
for _, id in ipairs(due) do
  if redis.call('EXISTS', 'arq:in-progress:' .. id) == 0 then
    table.insert(ids, id)
    if #ids >= count then break end
  end
end
if #ids > 0 then return {ids, ''} end
if ARGV[4] and ARGV[4] ~= '' then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. now)  -- stopped waiting long ago
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[4])
end
local first = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
return {ids, first[2] or ''}
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
    'error_kind', kind, 'due', tonumber(now) + tonumber(ARGV[9] or '0'))
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

# arq's finish transaction and the finish script as one script (see arq_pool.py): arq's
# commands (ARGV from 10: per command its argument count, then its arguments) run first,
# as they did inside MULTI (each on its own: one that fails does not stop the others),
# then the finish script. Returns {finish reply, first error of arq's commands or ''}.
_FINISH_WITH = """
local errors = ''
local i = 10
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local reply = redis.pcall(unpack(ARGV, i + 1, i + n))
  if type(reply) == 'table' and reply.err and errors == '' then errors = reply.err end
  i = i + n + 1
end
return {finish_job(KEYS, {unpack(ARGV, 1, 9)}), errors}
"""
FINISH_WITH = f"local function finish_job(KEYS, ARGV)\n{FINISH}\nend\n{_FINISH_WITH}"

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
redis.call('PUBLISH', KEYS[8], id)  -- the worker looks at the abort set now
return 'cancelling'
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
