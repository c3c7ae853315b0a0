//! The Lua scripts: each state change of a job is one script, so it is one
//! atomic step on the server. docs/REDIS.md describes each of them.
//!
//! Every script gets the same `KEYS` (all under the queue's hash tag):
//!
//! | index | key            | what |
//! |-------|----------------|------|
//! | 1     | `jm:{N}:m`     | meta hash: counters, closed flag, settings |
//! | 2     | `jm:{N}:s`     | the job stream, consumer group `g` |
//! | 3     | `jm:{N}:l`     | lease hash: entry id → `attempt|consumer` |
//! | 4     | `jm:{N}:e`     | wake-up stream (close, drained, room) |
//! | 5     | `jm:{N}:d`     | dead-letter hash: job id → JSON record |
//! | 6     | `jm:{N}:rp`    | replay hash: connection slot → last call and reply |
//! | 7     | `jm:{N}:pr`    | producer liveness key, with a TTL |
//! | 8     | `jm:{N}:r`     | results hash: job id → JSON record of its end |
//!
//! and `ARGV[1]` = key prefix `jm:{N}:` (payload keys `jm:{N}:p:<job id>`
//! are built from it and share the hash tag), `ARGV[2]` = replay slot,
//! `ARGV[3]` = call number. A script that finds its own (slot, call number)
//! in the replay hash returns the stored reply instead of running again, so
//! a call retried after a lost reply (connection cut, server restart) takes
//! effect once.

use ::redis::Script;
use std::sync::OnceLock;

const PRELUDE: &str = r#"
local M, S, L, E, D, RP, PR, R = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local PFX, RK, RN = ARGV[1], ARGV[2], ARGV[3]
local G = 'g'
local function cached()
  if RK == '' then return nil end
  local prev = redis.call('HGET', RP, RK)
  if not prev then return nil end
  local sep = string.find(prev, '\n', 1, true)
  if string.sub(prev, 1, sep - 1) ~= RN then return nil end
  return cjson.decode(string.sub(prev, sep + 1))
end
local function remember(v)
  if RK ~= '' then redis.call('HSET', RP, RK, RN .. '\n' .. cjson.encode(v)) end
  return v
end
local function fields(flat)
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  return t
end
local function last_id(key)
  local r = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
  if r[1] then return r[1][1] end
  return '0-0'
end
local function num(k) return tonumber(redis.call('HGET', M, k)) or 0 end
local function drained()
  local v = redis.call('HMGET', M, 'closed', 'produced', 'done', 'failed', 'dead')
  return v[1] == '1' and (tonumber(v[2]) or 0) ==
    (tonumber(v[3]) or 0) + (tonumber(v[4]) or 0) + (tonumber(v[5]) or 0)
end
-- Jobs put and not yet final: queued plus leased.
local function unfinished()
  local v = redis.call('HMGET', M, 'produced', 'done', 'failed', 'dead')
  return (tonumber(v[1]) or 0) - (tonumber(v[2]) or 0) - (tonumber(v[3]) or 0) - (tonumber(v[4]) or 0)
end
-- Settled entries stay in the stream (no XDEL per job) until this trims
-- them: everything below the oldest pending entry, and never past the
-- group's last delivered entry, so no pending or undelivered entry is
-- ever trimmed. Runs only when settled entries outnumber live ones.
local function trim()
  local live = unfinished()
  if redis.call('XLEN', S) < 2 * live + 1000 then return end
  local p = redis.call('XPENDING', S, G)
  local cut
  if p[1] > 0 then
    cut = p[2]
  else
    local groups = redis.call('XINFO', 'GROUPS', S)
    for _, g in ipairs(groups) do
      local f = fields(g)
      if f['name'] == G then cut = f['last-delivered-id'] end
    end
  end
  if cut then redis.call('XTRIM', S, 'MINID', '~', cut) end
end
local function wake(what) redis.call('XADD', E, 'MAXLEN', '~', '100', '*', 'w', what) end
-- Delayed retries: a sorted set by not-before time (ms), of JSON members
-- {j, s, a, l, x}; an inline payload waits in the key `p:w:<job id>`.
local W = PFX .. 'w'
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- The input of an entry for a record: inline payload and its size, or ''
-- and the size of the payload key.
local function entry_input(out, f)
  if f['x'] == '1' then
    out[#out + 1] = ''
    out[#out + 1] = redis.call('STRLEN', PFX .. 'p:' .. f['j'])
  else
    out[#out + 1] = f['p'] or ''
    out[#out + 1] = string.len(f['p'] or '')
  end
end
local function payload_of(f)
  if f['x'] == '1' then return redis.call('GET', PFX .. 'p:' .. f['j']) or '' end
  return f['p'] or ''
end
"#;

/// Creates the stream and group if missing, records the settings if unset
/// (first creator wins) and hands out an instance number.
/// ARGV[4..8] = max_attempts, visibility_ms, capacity, create ('0': only
/// open an existing queue), max_lost. Returns {instance, max_attempts,
/// visibility_ms, capacity, max_lost}, or {0} when the queue does not
/// exist and create is '0'.
const INIT: &str = r#"
if ARGV[7] == '0' and redis.call('EXISTS', S) == 0 then return {0} end
if redis.call('EXISTS', S) == 0 then
  redis.call('XGROUP', 'CREATE', S, G, '0', 'MKSTREAM')
else
  redis.pcall('XGROUP', 'CREATE', S, G, '0')
end
redis.call('HSETNX', M, 'max_attempts', ARGV[4])
redis.call('HSETNX', M, 'visibility_ms', ARGV[5])
redis.call('HSETNX', M, 'capacity', ARGV[6])
redis.call('HSETNX', M, 'max_lost', ARGV[8])
local inst = redis.call('HINCRBY', M, 'instances', 1)
return {inst, num('max_attempts'), num('visibility_ms'), num('capacity'), num('max_lost')}
"#;

/// Enqueues up to k jobs (as many as there is room for).
/// ARGV[4] = producer TTL ms, ARGV[5] = k, then per job: seq, attempts,
/// lost, external flag ('1' = payload in its own key), payload.
/// Returns {0} closed, {-1, wake id} full, {n, first job id}.
const PUT: &str = r#"
local c = cached()
if c then return c end
if num('closed') == 1 then return {0} end
local k = tonumber(ARGV[5])
local room = num('capacity') - (unfinished() - redis.call('HLEN', L))
if room <= 0 then return {-1, last_id(E)} end
local n = math.min(k, room)
local last = redis.call('HINCRBY', M, 'next_id', n)
local first = last - n + 1
for i = 0, n - 1 do
  local b = 6 + i * 5
  local id = tostring(first + i)
  if ARGV[b + 3] == '1' then
    redis.call('SET', PFX .. 'p:' .. id, ARGV[b + 4])
    redis.call('XADD', S, '*', 'j', id, 's', ARGV[b], 'a', ARGV[b + 1], 'l', ARGV[b + 2], 'x', '1')
  else
    redis.call('XADD', S, '*', 'j', id, 's', ARGV[b], 'a', ARGV[b + 1], 'l', ARGV[b + 2], 'p', ARGV[b + 4])
  end
end
redis.call('HINCRBY', M, 'produced', n)
redis.call('HSET', M, 'producer_seen', '1')
redis.call('SET', PR, '1', 'PX', ARGV[4])
return remember({n, tostring(first)})
"#;

/// Leases up to `count` new entries for a consumer (XREADGROUP `>`), counting
/// an attempt for each in the lease hash.
/// ARGV[4] = consumer, ARGV[5] = count.
/// Returns {1, max_attempts, visibility_ms, max_lost, id, job, seq, attempt,
/// lost, payload, id, ...} or, when nothing is queued, {0, max_attempts,
/// visibility_ms, max_lost, closed, produced, done, failed, dead,
/// producer_seen, producer_alive, leased, stream last id, wake last id,
/// ms until the next delayed retry is due or -1}. (The settings ride along
/// so that clients follow a change made by `set_settings`.) Delayed
/// retries that are due are first moved from `jm:{N}:w` to the stream.
const LEASE: &str = r#"
local function entry(out, id, f, attempt)
  out[#out + 1] = id
  out[#out + 1] = f['j']
  out[#out + 1] = f['s']
  out[#out + 1] = tostring(attempt)
  out[#out + 1] = f['l'] or '0'
  out[#out + 1] = payload_of(f)
end
local c = cached()
if c then
  -- One XREADGROUP delivers consecutive entries: the range first..last
  -- holds them all; keep those this consumer still holds.
  local out = {1, num('max_attempts'), num('visibility_ms'), num('max_lost')}
  for _, e in ipairs(redis.call('XRANGE', S, c[1], c[2])) do
    local held = redis.call('HGET', L, e[1])
    if held then
      local attempt, owner = string.match(held, '^(%d+)|(.*)$')
      if owner == ARGV[4] then entry(out, e[1], fields(e[2]), attempt) end
    end
  end
  return out
end
local cap = num('capacity')
local before = unfinished() - redis.call('HLEN', L)
-- Delayed retries whose time has come join the stream (see SETTLE).
local due_in = -1
if redis.call('EXISTS', W) == 1 then
  local now = now_ms()
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', W, '-inf', now, 'LIMIT', 0, 1000)) do
    local f = cjson.decode(m)
    if f['x'] == '1' then
      redis.call('XADD', S, '*', 'j', f['j'], 's', f['s'], 'a', f['a'], 'l', f['l'], 'x', '1')
    else
      local pk = PFX .. 'p:w:' .. f['j']
      redis.call('XADD', S, '*', 'j', f['j'], 's', f['s'], 'a', f['a'], 'l', f['l'], 'p', redis.call('GET', pk) or '')
      redis.call('DEL', pk)
    end
    redis.call('ZREM', W, m)
  end
  local first = redis.call('ZRANGE', W, 0, 0, 'WITHSCORES')
  if first[2] then due_in = math.max(0, tonumber(first[2]) - now) end
end
local r = redis.call('XREADGROUP', 'GROUP', G, ARGV[4], 'COUNT', ARGV[5], 'STREAMS', S, '>')
if not r then
  local v = redis.call('HMGET', M, 'closed', 'produced', 'done', 'failed', 'dead', 'producer_seen')
  local out = {0, num('max_attempts'), num('visibility_ms'), num('max_lost')}
  for i = 1, 6 do out[#out + 1] = tonumber(v[i]) or 0 end
  out[#out + 1] = redis.call('EXISTS', PR)
  out[#out + 1] = redis.call('HLEN', L)
  out[#out + 1] = last_id(S)
  out[#out + 1] = last_id(E)
  out[#out + 1] = due_in
  return out
end
local out = {1, num('max_attempts'), num('visibility_ms'), num('max_lost')}
local got = r[1][2]
-- The lease hash fields of the whole batch in one HSET (in chunks, within
-- Lua's unpack limit).
local held = {}
for _, e in ipairs(got) do
  local id = e[1]
  local f = fields(e[2])
  local attempt = (tonumber(f['a']) or 0) + 1
  held[#held + 1] = id
  held[#held + 1] = attempt .. '|' .. ARGV[4]
  entry(out, id, f, attempt)
end
for from = 1, #held, 1000 do
  redis.call('HSET', L, unpack(held, from, math.min(#held, from + 999)))
end
if before >= cap and before - #got < cap then wake('room') end
remember({got[1][1], got[#got][1]})
return out
"#;

/// Takes over entries idle for at least `min_idle` ms (their worker died or
/// hung) with XAUTOCLAIM JUSTID; the lease hash now names the reclaimer,
/// with the attempt unchanged, so the old holder's late report is stale.
/// The caller then fails each one with `WorkerLost` (SETTLE).
/// ARGV[4] = consumer, ARGV[5] = min idle ms, ARGV[6] = count, ARGV[7] = cursor.
/// Returns {next cursor, id, job, seq, attempt, lost, old owner, inline
/// payload ('' when external), payload size, ...}: the payload so that a
/// job dead-lettered by the reclaimer keeps its input in its record.
const RECLAIM: &str = r#"
local c = cached()
if c then return c end
local r = redis.call('XAUTOCLAIM', S, G, ARGV[4], ARGV[5], ARGV[7], 'COUNT', ARGV[6], 'JUSTID')
local out = {r[1]}
for _, id in ipairs(r[2]) do
  local held = redis.call('HGET', L, id)
  local e = redis.call('XRANGE', S, id, id)
  if e[1] then
    local f = fields(e[1][2])
    local attempt, owner
    if held then
      attempt, owner = string.match(held, '^(%d+)|(.*)$')
    else
      attempt, owner = tostring((tonumber(f['a']) or 0) + 1), '?'
    end
    redis.call('HSET', L, id, attempt .. '|' .. ARGV[4])
    out[#out + 1] = id
    out[#out + 1] = f['j']
    out[#out + 1] = f['s']
    out[#out + 1] = attempt
    out[#out + 1] = f['l'] or '0'
    out[#out + 1] = owner
    entry_input(out, f)
  end
end
return remember(out)
"#;

/// Resolves k leases, each only if it is still current (lease hash matches
/// and XACK returned 1). Actions: 'd' done, 'q' requeue (a new entry with
/// the attempts given; the old one is acked), 'f' failed and 'x' dead
/// (record stored as dead letter and as result; a payload in its own key is
/// kept, for `requeue`); 'd' stores its record as the result when one is
/// given. Settled entries are left for `trim`.
/// ARGV[4] = k, then per lease: entry id, expected lease, action, attempts,
/// record, job id, external payload flag, lost, delay ms. A 'q' with a
/// delay goes to the delayed set `jm:{N}:w` (scored by its not-before time,
/// the server's clock) instead of the stream; LEASE moves it back once due.
/// Returns {1|0 per lease} (0 = stale).
const SETTLE: &str = r#"
local c = cached()
if c then return c end
local k = tonumber(ARGV[4])
local out = {}
local nd, nf, nx = 0, 0, 0
-- The current leases of the whole batch in one HMGET (in chunks, within
-- Lua's unpack limit); the matched ones are removed with one HDEL and the
-- done records stored with one HSET at the end.
local cur = {}
for from = 0, k - 1, 1000 do
  local ids = {}
  for i = from, math.min(k, from + 1000) - 1 do ids[#ids + 1] = ARGV[5 + i * 9] end
  local got = redis.call('HMGET', L, unpack(ids))
  for j = 1, #got do cur[from + j] = got[j] end
end
local seen, gone, recs = {}, {}, {}
local delayed = false
for i = 0, k - 1 do
  local b = 5 + i * 9
  local id, action = ARGV[b], ARGV[b + 2]
  local ok = 0
  if cur[i + 1] == ARGV[b + 1] and not seen[id] then
    seen[id] = true
    gone[#gone + 1] = id
    if action == 'd' then
      if redis.call('XACK', S, G, id) == 1 then
        ok = 1
        nd = nd + 1
        if ARGV[b + 6] == '1' then redis.call('DEL', PFX .. 'p:' .. ARGV[b + 5]) end
        if ARGV[b + 4] ~= '' then
          recs[#recs + 1] = ARGV[b + 5]
          recs[#recs + 1] = ARGV[b + 4]
        end
      end
    else
      local e = redis.call('XRANGE', S, id, id)
      if redis.call('XACK', S, G, id) == 1 and e[1] then
        ok = 1
        local f = fields(e[1][2])
        local delay = tonumber(ARGV[b + 8]) or 0
        if action == 'q' and delay > 0 then
          local m = {j = f['j'], s = f['s'], a = ARGV[b + 3], l = ARGV[b + 7]}
          if f['x'] == '1' then
            m['x'] = '1'
          else
            redis.call('SET', PFX .. 'p:w:' .. f['j'], f['p'] or '')
          end
          redis.call('ZADD', W, now_ms() + delay, cjson.encode(m))
          delayed = true
        elseif action == 'q' then
          if f['x'] == '1' then
            redis.call('XADD', S, '*', 'j', f['j'], 's', f['s'], 'a', ARGV[b + 3], 'l', ARGV[b + 7], 'x', '1')
          else
            redis.call('XADD', S, '*', 'j', f['j'], 's', f['s'], 'a', ARGV[b + 3], 'l', ARGV[b + 7], 'p', f['p'] or '')
          end
        else
          redis.call('HSET', D, f['j'], ARGV[b + 4])
          redis.call('HSET', R, f['j'], ARGV[b + 4])
          if action == 'f' then nf = nf + 1 else nx = nx + 1 end
        end
      end
    end
  end
  out[#out + 1] = ok
end
for from = 1, #gone, 1000 do
  redis.call('HDEL', L, unpack(gone, from, math.min(#gone, from + 999)))
end
for from = 1, #recs, 1000 do
  redis.call('HSET', R, unpack(recs, from, math.min(#recs, from + 999)))
end
if nd > 0 then redis.call('HINCRBY', M, 'done', nd) end
if nf > 0 then redis.call('HINCRBY', M, 'failed', nf) end
if nx > 0 then redis.call('HINCRBY', M, 'dead', nx) end
-- Waiting clients compute their wait from the next due retry.
if delayed then wake('delayed') end
if nd + nf + nx > 0 then
  if drained() then wake('drained') end
  trim()
end
return remember(out)
"#;

/// Extends leases: for each (entry id, expected lease) still current,
/// XCLAIM with min-idle 0 and JUSTID by its own consumer resets the idle
/// time without counting a delivery. ARGV[4] = k, then pairs.
/// Returns {1|0 per lease} (0 = lost).
const HEARTBEAT: &str = r#"
local k = tonumber(ARGV[4])
local out = {}
for i = 0, k - 1 do
  local id, expected = ARGV[5 + i * 2], ARGV[6 + i * 2]
  if redis.call('HGET', L, id) == expected then
    local owner = string.match(expected, '|(.*)$')
    redis.call('XCLAIM', S, G, owner, 0, id, 'JUSTID')
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"#;

/// Lists the leases one consumer holds (for `worker_lost`).
/// ARGV[4] = consumer. Returns {id, job, seq, lease, lost, inline payload,
/// payload size, ...}.
const HELD: &str = r#"
local out = {}
local p = redis.call('XPENDING', S, G, '-', '+', 1000000, ARGV[4])
for _, x in ipairs(p) do
  local id = x[1]
  local held = redis.call('HGET', L, id)
  local e = redis.call('XRANGE', S, id, id)
  if held and e[1] then
    local f = fields(e[1][2])
    out[#out + 1] = id
    out[#out + 1] = f['j']
    out[#out + 1] = f['s']
    out[#out + 1] = held
    out[#out + 1] = f['l'] or '0'
    entry_input(out, f)
  end
end
return out
"#;

/// Puts failed or dead jobs back (`jobmill requeue`): for each job whose
/// dead-letter record still equals the one given, removes the record (dead
/// letter and result), takes it off its counter and adds a new entry with
/// no attempts made. The input comes from the job's payload key when it
/// has one, else from the caller (the record's input).
/// ARGV[4] = k, then per job: job id, record, counter ('failed' or 'dead'),
/// seq, input flag ('1' = the input follows), input.
/// Returns {1 requeued | 0 record changed | -1 input not kept, per job}.
const REQUEUE: &str = r#"
local c = cached()
if c then return c end
local k = tonumber(ARGV[4])
local out = {}
local n = 0
for i = 0, k - 1 do
  local b = 5 + i * 6
  local job = ARGV[b]
  local r = 0
  if redis.call('HGET', D, job) == ARGV[b + 1] then
    local ext = redis.call('EXISTS', PFX .. 'p:' .. job) == 1
    if ext or ARGV[b + 4] == '1' then
      redis.call('HDEL', D, job)
      redis.call('HDEL', R, job)
      redis.call('HINCRBY', M, ARGV[b + 2], -1)
      if ext then
        redis.call('XADD', S, '*', 'j', job, 's', ARGV[b + 3], 'a', '0', 'l', '0', 'x', '1')
      else
        redis.call('XADD', S, '*', 'j', job, 's', ARGV[b + 3], 'a', '0', 'l', '0', 'p', ARGV[b + 5])
      end
      n = n + 1
      r = 1
    else
      r = -1
    end
  end
  out[#out + 1] = r
end
if n > 0 then wake('requeued') end
return remember(out)
"#;

/// Closes the queue: sets the flag, drops the producer key, wakes waiters.
const CLOSE: &str = r#"
redis.call('HSET', M, 'closed', '1')
redis.call('DEL', PR)
wake('closed')
if drained() then wake('drained') end
return 1
"#;

/// One consistent snapshot of the counters.
/// Returns {closed, produced, done, failed, dead, stream length (settled
/// entries not yet trimmed included), leased, producer alive, producer seen}.
const COUNTS: &str = r#"
local v = redis.call('HMGET', M, 'closed', 'produced', 'done', 'failed', 'dead', 'producer_seen')
return {tonumber(v[1]) or 0, tonumber(v[2]) or 0, tonumber(v[3]) or 0, tonumber(v[4]) or 0,
  tonumber(v[5]) or 0, redis.call('XLEN', S), redis.call('HLEN', L), redis.call('EXISTS', PR),
  tonumber(v[6]) or 0}
"#;

/// Refreshes the producer liveness key. ARGV[4] = TTL ms.
const PRODUCER_ALIVE: &str = r#"
if num('closed') == 1 then return 0 end
redis.call('SET', PR, '1', 'PX', ARGV[4])
redis.call('HSET', M, 'producer_seen', '1')
return 1
"#;

/// A producer leaves the queue open on purpose (`submit --keep-open`):
/// workers go on waiting for a later producer instead of reporting this
/// one lost. A producer still putting sets `producer_seen` again.
const LEAVE_OPEN: &str = r#"
redis.call('HSET', M, 'producer_seen', '0')
redis.call('DEL', PR)
return 1
"#;

/// Forgets this instance's replay slots. ARGV[4..] = slot names.
const FORGET: &str = r#"
for i = 4, #ARGV do redis.call('HDEL', RP, ARGV[i]) end
return 1
"#;

/// The compiled scripts, built once per process.
pub(crate) struct Scripts {
    pub init: Script,
    pub put: Script,
    pub lease: Script,
    pub reclaim: Script,
    pub settle: Script,
    pub heartbeat: Script,
    pub held: Script,
    pub close: Script,
    pub counts: Script,
    pub producer_alive: Script,
    pub leave_open: Script,
    pub forget: Script,
    pub requeue: Script,
}

/// The scripts, each with the shared prelude.
pub(crate) fn scripts() -> &'static Scripts {
    static SCRIPTS: OnceLock<Scripts> = OnceLock::new();
    SCRIPTS.get_or_init(|| {
        let s = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
        Scripts {
            init: s(INIT),
            put: s(PUT),
            lease: s(LEASE),
            reclaim: s(RECLAIM),
            settle: s(SETTLE),
            heartbeat: s(HEARTBEAT),
            held: s(HELD),
            close: s(CLOSE),
            counts: s(COUNTS),
            producer_alive: s(PRODUCER_ALIVE),
            leave_open: s(LEAVE_OPEN),
            forget: s(FORGET),
            requeue: s(REQUEUE),
        }
    })
}
