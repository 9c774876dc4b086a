//! The Lua scripts of the Redis store: each is one atomic step on the keys of one session (one
//! hash tag) or on the index, so that each runs on one shard of a cluster.
//!
//! Times are Redis's own (`TIME`, in unix milliseconds), so that every node agrees on when a
//! detached session expires. Numbers the scripts format into stream ids stay below 10^14 (the
//! store clamps what clients send), which Lua prints without an exponent.

use std::sync::LazyLock;

use redis::Script;

/// `now` in unix milliseconds and `now_us` in microseconds, by Redis's clock.
macro_rules! lua_now {
    () => {
        "local t = redis.call('TIME')\nlocal now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\nlocal now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    };
}

/// KEYS: meta, gone. ARGV: identity (`has_client .. client`), client, has_client, node.
pub(super) static CREATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'client', ARGV[2], 'has_client', ARGV[3], 'last', 0, 'acked', 0,
  'dropped', 0, 'processed', 0, 'bytes', 0, 'node', ARGV[4], 'exp', 0)
return 1
",
    )
});

/// KEYS: attached index, detached index. ARGV: token, max_sessions, lease in ms. Adds the
/// token as attached (leased), first taking out the oldest detached sessions past
/// `max_sessions` (returned, for the caller to free); nil when too few are detached.
pub(super) static ADMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        lua_now!(),
        r"
local detached = redis.call('ZCARD', KEYS[2])
local over = redis.call('ZCARD', KEYS[1]) + detached - tonumber(ARGV[2]) + 1
local evicted = {}
if over > 0 then
  if over > detached then return false end
  evicted = redis.call('ZRANGE', KEYS[2], 0, over - 1)
  for _, token in ipairs(evicted) do redis.call('ZREM', KEYS[2], token) end
end
redis.call('ZADD', KEYS[1], now_us + tonumber(ARGV[3]) * 1000, ARGV[1])
return evicted
"
    ))
});

/// KEYS: attached index, detached index. ARGV: token, lease in ms. The session is attached: in
/// the attached index, leased.
pub(super) static HOLD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        lua_now!(),
        r"
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[1], now_us + tonumber(ARGV[2]) * 1000, ARGV[1])
return 1
"
    ))
});

/// KEYS: attached index, detached index. ARGV: token, expiry in µs. The session is detached:
/// in the detached index, by expiry.
pub(super) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
",
    )
});

/// KEYS: attached index. ARGV: lease in ms, tokens. Extends the leases of sessions this node
/// holds (only those still in the index).
pub(super) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        lua_now!(),
        r"
local lease = now_us + tonumber(ARGV[1]) * 1000
local args = {}
for i = 2, #ARGV do
  args[#args + 1] = lease
  args[#args + 1] = ARGV[i]
end
if #args == 0 then return 0 end
return redis.call('ZADD', KEYS[1], 'XX', 'CH', unpack(args))
"
    ))
});

/// KEYS: meta, log, gone. ARGV: mode (`evict`, `expire` or `orphan`), ttl in ms, node. Frees a
/// detached session (`expire`: only once its time is past) and leaves a tombstone for one
/// `ttl`, so that its resume is answered `expired`. Answers `freed`, `gone` (no such session:
/// Redis expired it), `attached`, or the expiry time (ms) of a session still alive.
///
/// `orphan`: the session's lease lapsed (`node`, which holds it, stopped renewing it: it died):
/// it is detached from now, as that node would have done, and its expiry time answered; held
/// by another node since, it is `attached`.
pub(super) static FREE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        lua_now!(),
        r"
local m = redis.call('HMGET', KEYS[1], 'exp', 'client', 'has_client', 'node')
if not m[1] then return 'gone' end
local exp = tonumber(m[1])
if exp == 0 and ARGV[1] == 'orphan' and m[4] == ARGV[3] then
  local ttl = tonumber(ARGV[2])
  exp = now + ttl
  redis.call('HSET', KEYS[1], 'exp', exp)
  redis.call('PEXPIREAT', KEYS[1], exp)
  redis.call('PEXPIREAT', KEYS[2], exp)
  redis.call('SET', KEYS[3], m[3] .. m[2], 'PXAT', exp + ttl)
  return tostring(exp)
end
if exp == 0 then return 'attached' end
if ARGV[1] ~= 'evict' and exp > now then return m[1] end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('SET', KEYS[3], m[3] .. m[2], 'PX', ARGV[2])
return 'freed'
"
    ))
});

/// KEYS: meta, log, gone. ARGV: identity, first id to read (`after + 1`), node, ttl in ms, key
/// prefix, token, mode. Attaches the session to `node` and reads it: `{'held', last, acked,
/// dropped, processed, first entry, entries after}`, or `{'expired'}` / `{'unknown'}`.
///
/// A session attached to another node is handed over: mode `ask` tells that node it is
/// superseded and answers `{'busy'}`, `wait` answers `{'busy'}` until that node has detached
/// it (after its calls in flight, so that their replies and processed marks are in), and
/// `take` attaches it regardless (that node did not let go in time).
pub(super) static ATTACH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        lua_now!(),
        r"
local m = redis.call('HMGET', KEYS[1], 'exp', 'client', 'has_client', 'node', 'last', 'acked',
  'dropped', 'processed')
if not m[1] then
  if redis.call('GET', KEYS[3]) == ARGV[1] then return {'expired'} end
  return {'unknown'}
end
if m[3] .. m[2] ~= ARGV[1] then return {'unknown'} end
local exp = tonumber(m[1])
if exp ~= 0 and exp <= now then
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[4])
  return {'expired'}
end
if exp == 0 and m[4] ~= ARGV[3] then
  if ARGV[7] ~= 'wait' then
    redis.call('PUBLISH', ARGV[5] .. 'node:' .. m[4], 'superseded ' .. ARGV[6])
  end
  if ARGV[7] ~= 'take' then return {'busy'} end
end
redis.call('HSET', KEYS[1], 'exp', 0, 'node', ARGV[3])
redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[2])
redis.call('DEL', KEYS[3])
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
local entries = redis.call('XRANGE', KEYS[2], ARGV[2], '+')
return {'held', m[5], m[6], m[7], m[8], first, entries}
"
    ))
});

/// KEYS: meta, log. ARGV: kind (`j` or `b`), data, max_messages, max_bytes, node, key prefix,
/// token, step. Logs a message as stream entry `seq-0`, records in the same step that `node`'s
/// append number `step` is in (field `w:<node>`, which a processed mark may wait for: see
/// `PROCESSED`), drops the oldest past the bounds (the newest always stays), keeps a detached
/// session's log expiring with it, and tells the node the session is attached to, if another,
/// that it was logged. Answers `{seq, dropped}`, or nil without a session.
pub(super) static APPEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local m = redis.call('HMGET', KEYS[1], 'exp', 'node', 'acked')
if not m[1] then return false end
local seq = redis.call('HINCRBY', KEYS[1], 'last', 1)
redis.call('XADD', KEYS[2], seq .. '-0', 'k', ARGV[1], 'd', ARGV[2])
redis.call('HSET', KEYS[1], 'w:' .. ARGV[5], ARGV[8])
local bytes = redis.call('HINCRBY', KEYS[1], 'bytes', string.len(ARGV[2]))
local n = redis.call('XLEN', KEYS[2])
local acked = tonumber(m[3])
local max_messages, max_bytes = tonumber(ARGV[3]), tonumber(ARGV[4])
local dropped = 0
while n > 1 and (n > max_messages or bytes > max_bytes) do
  local e = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
  redis.call('XDEL', KEYS[2], e[1])
  bytes = bytes - string.len(e[2][4])
  n = n - 1
  if tonumber(string.match(e[1], '^(%d+)')) > acked then dropped = dropped + 1 end
end
if dropped > 0 then
  redis.call('HINCRBY', KEYS[1], 'dropped', dropped)
  redis.call('HSET', KEYS[1], 'bytes', bytes)
end
local exp = tonumber(m[1])
if exp ~= 0 then
  redis.call('PEXPIREAT', KEYS[2], exp)
elseif m[2] ~= ARGV[5] then
  redis.call('PUBLISH', ARGV[6] .. 'node:' .. m[2], 'logged ' .. ARGV[7] .. ' ' .. seq)
end
return {seq, dropped}
",
    )
});

/// KEYS: meta, log. ARGV: seq (at most 10^14). Frees the messages up to `seq` (clamped to the
/// last one given) and records the acknowledgement.
pub(super) static TRIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local m = redis.call('HMGET', KEYS[1], 'last', 'acked')
if not m[1] then return 0 end
local seq = math.min(tonumber(ARGV[1]), tonumber(m[1]))
if seq <= tonumber(m[2]) then return 0 end
redis.call('HSET', KEYS[1], 'acked', seq)
local gone = redis.call('XRANGE', KEYS[2], '-', seq .. '-0')
if #gone == 0 then return 0 end
local freed = 0
for _, e in ipairs(gone) do freed = freed + string.len(e[2][4]) end
redis.call('XTRIM', KEYS[2], 'MINID', (seq + 1) .. '-0')
redis.call('HINCRBY', KEYS[1], 'bytes', -freed)
return #gone
",
    )
});

/// KEYS: meta. ARGV: id, node, after. Raises the processed mark, only if Redis holds `node`'s
/// append number `after` (0: no condition), the last append of the session that node sent before
/// the mark: a mark never covers a reply that did not reach Redis, and a mark sent behind an
/// append whose answer never came is recorded if that append ran first. Answers 0 when refused
/// for that, else 1.
pub(super) static PROCESSED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local m = redis.call('HMGET', KEYS[1], 'processed', 'w:' .. ARGV[2])
if not m[1] then return 1 end
if ARGV[3] ~= '0' and (not m[2] or tonumber(m[2]) < tonumber(ARGV[3])) then return 0 end
if tonumber(ARGV[1]) > tonumber(m[1]) then redis.call('HSET', KEYS[1], 'processed', ARGV[1]) end
return 1
",
    )
});

/// KEYS: meta, log, gone. ARGV: node, ttl in ms. Detaches the session if `node` holds it:
/// it and its log expire after `ttl`, and a tombstone outlives them by another `ttl`. Answers
/// `{expiry in ms, expiry in µs}`, or `{0, 0}` if another node holds the session (or none
/// does).
pub(super) static DETACH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        lua_now!(),
        r"
local m = redis.call('HMGET', KEYS[1], 'node', 'exp', 'client', 'has_client')
if not m[1] or m[1] ~= ARGV[1] or tonumber(m[2]) ~= 0 then return {0, 0} end
local ttl = tonumber(ARGV[2])
local exp = now + ttl
redis.call('HSET', KEYS[1], 'exp', exp)
redis.call('PEXPIREAT', KEYS[1], exp)
redis.call('PEXPIREAT', KEYS[2], exp)
redis.call('SET', KEYS[3], m[4] .. m[3], 'PXAT', exp + ttl)
return {exp, now_us + ttl * 1000}
"
    ))
});

/// KEYS: attached index, detached index. ARGV: how many. The detached sessions whose expiry
/// time is past and the attached ones whose lease lapsed, with their scores: `{detached,
/// attached}`.
pub(super) static DUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        lua_now!(),
        r"
return {
  redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now_us, 'WITHSCORES', 'LIMIT', 0, ARGV[1]),
  redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_us, 'WITHSCORES', 'LIMIT', 0, ARGV[1])
}
"
    ))
});

/// KEYS: the index the entry is in, the index it moves to. ARGV: token, score it had, new
/// score (empty: remove). Moves an entry only if nobody changed it since it was read; answers 1
/// if it did.
pub(super) static RESCORE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('ZSCORE', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[3] ~= '' then redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1]) end
return 1
",
    )
});

/// KEYS: client. ARGV: token, action (`persist`, `expire` with a unix ms time, or `del`). Acts
/// on the client's entry only while it names this session.
pub(super) static CLIENT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == 'persist' then redis.call('PERSIST', KEYS[1])
elseif ARGV[2] == 'expire' then redis.call('PEXPIREAT', KEYS[1], ARGV[3])
else redis.call('DEL', KEYS[1]) end
return 1
",
    )
});
