-- Shared prelude of agentsched's status scripts (prepended to each one).
-- Every status change of an execution happens in one of these scripts, so the
-- change, its SQL-bound snapshot (the records stream) and its lifecycle event
-- (the event bus stream) are one atomic step and one round trip.
-- A terminal status (success, failed, cancelled) never changes again.
local TERMINAL = {success = true, failed = true, cancelled = true}

local function first_line(s)
  if not s then return nil end
  local line = string.match(s, '[^\n]*') or s
  return string.sub(line, 1, 300)
end

-- emit(xkey, records_key, events_key, maxlen, now_ms, event_type, ttl_ms)
local function emit(xkey, records, events, maxlen, now_ms, event_type, ttl_ms)
  local seq = redis.call('HINCRBY', xkey, 'seq', 1)
  local flat = redis.call('HGETALL', xkey)
  local h = {}
  for i = 1, #flat, 2 do h[flat[i]] = flat[i + 1] end
  -- One JSON field per entry: the recorder decodes it in C instead of field by field.
  redis.call('XADD', records, '*', 'i', h['id'], 'q', seq, 's', cjson.encode(h))
  local payload = {
    execution_id = h['id'], ['function'] = h['function'], app = h['app'],
    status = h['status'], attempt = tonumber(h['attempt']),
    task_id = h['task_id'] or cjson.null,
  }
  if h['error_kind'] then
    payload['error_kind'] = h['error_kind']
    payload['error'] = first_line(h['error'])
  end
  if h['progress'] then payload['progress'] = tonumber(h['progress']) end
  if h['progress_message'] then payload['progress_message'] = h['progress_message'] end
  local event = {
    id = h['id'] .. '-' .. seq, event_type = event_type, source_agent = h['app'],
    target_agent = cjson.null, payload = payload, created_at = tonumber(now_ms) / 1000,
  }
  redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', 'data', cjson.encode(event))
  if TERMINAL[h['status']] then
    redis.call('PEXPIRE', xkey, ttl_ms)
  end
  return seq
end
