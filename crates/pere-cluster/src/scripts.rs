//! The Lua scripts, each one atomic on the primary and replicated to its
//! replicas as one `MULTI`/`EXEC` of its effects (Redis 7's only script
//! replication mode, which is what makes calling `TIME` inside them safe).
//!
//! They run with `EVALSHA` through [`redis::Script`], falling back to `EVAL`
//! on `NOSCRIPT` (after a restart or a failover), so Redis 7.0 is enough: no
//! `FUNCTION`s to load, nothing from 7.2+.
//!
//! Numbers cross Lua as doubles: event ids are microseconds since the epoch
//! (about 1.8e15 now, exact below 2^53, i.e. until the year 2255) and are
//! always written with `%.0f`, since `tostring` would print `1.8e+15`.

use std::sync::LazyLock;

use redis::Script;

/// Appends one node batch to the log: assigns its event ids, settles its
/// idempotency keys and `XADD`s the entry, all or nothing.
///
/// - `KEYS[1]` `{prefix}:seq`, `KEYS[2]` `{prefix}:log`, `KEYS[3]`
///   `{prefix}:head`, `KEYS[4]` `{prefix}:genesis`, `KEYS[5]`
///   `{prefix}:serial:NODE:INSTANCE`, `KEYS[6..]` one `{prefix}:idem:…`
///   key per event that has an idempotency key.
/// - `ARGV[1]` node, `ARGV[2]` blob, `ARGV[3]` event count, `ARGV[4]`
///   idempotency ttl in ms, `ARGV[5]` the entry's serial or empty,
///   `ARGV[6]` the serial key's ttl in ms, `ARGV[7..]` the event index of
///   each idem key.
///
/// Serials ([`crate::NewEntry::serial`]): the serial key holds the
/// engine's highest serial taken and that entry's position (a value that
/// does not read so counts as none). A serial equal
/// to it is an append already made (a retry after no answer came): nothing
/// is added, and the reply is `{'again', pos}`. A lower one was overtaken
/// (a later append of the node landed first): `{'stale', highest}`. The
/// `again` path touches the key so that the connection's `WAIT` covers
/// the entry, which another connection may have written.
///
/// The first entry of an empty log records the log's beginning (`genesis`,
/// unless set): a node still running when Redis lost its data appends
/// before it notices, and the nodes that restart must still find it.
///
/// Ids: `first = max(TIME in µs, seq + 1)`, event `i` is `first + i`, and
/// `seq = first + events - 1`. An event whose key is already known keeps its
/// slot (so ids stay `first + i` for everyone) but is listed as a duplicate
/// `i:original`; its slot id is never used. `SET … NX GET` (Redis 7.0) both
/// tests and claims a key in one command, also for a key repeated within
/// the batch. `head` is the last entry's position: each entry records it as
/// `prev`, which chains the log so a tail can tell a trimmed log from one a
/// failover cut short.
///
/// Returns `{pos, first, time, i1, id1, i2, id2, …}` when it appended.
pub(crate) static APPEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local serial = tonumber(ARGV[5])
if serial then
  local last, at = string.match(redis.call('GET', KEYS[5]) or '', '^(%d+) (%S+)$')
  last = tonumber(last)
  if last and serial == last then
    redis.call('PEXPIRE', KEYS[5], ARGV[6])
    return {'again', at}
  end
  if last and serial < last then
    return {'stale', string.format('%.0f', last)}
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local events = tonumber(ARGV[3])
local first = 0
if events > 0 then
  local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
  first = now
  if seq + 1 > first then first = seq + 1 end
  redis.call('SET', KEYS[1], string.format('%.0f', first + events - 1))
end
local reply = {false, first, now}
local dups = {}
for k = 6, #KEYS do
  local index = ARGV[k + 1]
  local id = string.format('%.0f', first + tonumber(index))
  local old = redis.call('SET', KEYS[k], id, 'NX', 'GET', 'PX', ARGV[4])
  if old then
    dups[#dups + 1] = index .. ':' .. old
    reply[#reply + 1] = tonumber(index)
    reply[#reply + 1] = tonumber(old)
  end
end
local prev = redis.call('GET', KEYS[3])
if not prev then
  prev = '0-0'
  redis.call('SET', KEYS[4], t[1] .. string.format('%06d', tonumber(t[2])), 'NX')
end
local pos = redis.call('XADD', KEYS[2], '*',
  'node', ARGV[1], 'prev', prev, 'events', ARGV[3],
  'first', string.format('%.0f', first), 'time', string.format('%.0f', now),
  'dup', table.concat(dups, ','), 'blob', ARGV[2])
redis.call('SET', KEYS[3], pos)
if serial then
  redis.call('SET', KEYS[5], ARGV[5] .. ' ' .. pos, 'PX', ARGV[6])
end
reply[1] = pos
return reply
"#,
    )
});

/// Commits an uploaded snapshot unless a newer one is stored, then trims
/// the log.
///
/// - `KEYS[1]` `{prefix}:snapshot` (a hash: `pos`, `upload`, `chunks`),
///   `KEYS[2]` `{prefix}:log`.
/// - `ARGV[1]` pos `MS-SEQ`, `ARGV[2]` its ms, `ARGV[3]` its seq, `ARGV[4]`
///   the upload's key prefix, `ARGV[5]` its chunk count, `ARGV[6]` log_keep
///   in ms.
///
/// The chunks (`UPLOAD:0`, `UPLOAD:1`, …) were `SET` beforehand, one
/// command each, with a ttl so that a node dying mid-upload leaves no
/// garbage; committing `PERSIST`s them and deletes the replaced snapshot's
/// chunks. Chunk keys are built here, not passed as `KEYS`: fine on a
/// standalone or Sentinel-managed Redis, which is all the engine supports.
/// Two nodes may snapshot at once: the older never replaces the newer, and
/// its chunks go. Trimming is `XTRIM MINID (stored ms - keep)`: only entries
/// the stored snapshot covers, and older than `keep` before it, ever go.
///
/// Returns `{stored (0/1), entries trimmed}`, or an error if a chunk expired
/// before the commit.
pub(crate) static SNAPSHOT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local ms = tonumber(ARGV[2])
local seq = tonumber(ARGV[3])
local chunks = tonumber(ARGV[5])
local cur = redis.call('HMGET', KEYS[1], 'pos', 'upload', 'chunks')
local newer = true
if cur[1] then
  local cms, cseq = string.match(cur[1], '^(%d+)-(%d+)$')
  cms = tonumber(cms)
  cseq = tonumber(cseq)
  if cms > ms or (cms == ms and cseq >= seq) then
    newer = false
    ms = cms
  end
end
local stored = 0
if newer then
  for i = 0, chunks - 1 do
    if redis.call('PERSIST', ARGV[4] .. ':' .. i) == 0 and
       redis.call('EXISTS', ARGV[4] .. ':' .. i) == 0 then
      return redis.error_reply('ERR snapshot chunk ' .. i .. ' expired before the commit')
    end
  end
  if cur[2] and cur[2] ~= ARGV[4] then
    for i = 0, tonumber(cur[3] or '0') - 1 do
      redis.call('DEL', cur[2] .. ':' .. i)
    end
  end
  redis.call('HSET', KEYS[1], 'pos', ARGV[1], 'upload', ARGV[4], 'chunks', ARGV[5])
  stored = 1
elseif cur[2] ~= ARGV[4] then
  for i = 0, chunks - 1 do
    redis.call('DEL', ARGV[4] .. ':' .. i)
  end
end
local trimmed = 0
local minid = ms - tonumber(ARGV[6])
if minid > 0 then
  trimmed = redis.call('XTRIM', KEYS[2], 'MINID', string.format('%.0f', minid))
end
return {stored, trimmed}
"#,
    )
});

/// Records a node's heartbeat: its expiry (Redis `TIME` + ttl, in ms) as its
/// score in the `{prefix}:nodes` sorted set. Scores by the Redis clock mean
/// node clocks never matter. When `ARGV[4]` is `1` it also renews the
/// process's claim on the node id (`claim.rs`) for the same ttl, unless
/// another process holds it. Returns 0 when another process does.
///
/// `KEYS[1]` nodes, `KEYS[2]` the claim, `ARGV[1]` node, `ARGV[2]` ttl in
/// ms, `ARGV[3]` instance token, `ARGV[4]` whether to renew the claim.
pub(crate) static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], string.format('%.0f', now + tonumber(ARGV[2])), ARGV[1])
local cur = redis.call('GET', KEYS[2])
if cur and string.sub(cur, 1, #ARGV[3] + 1) ~= ARGV[3] .. ' ' then
  return 0
end
if ARGV[4] == '1' then
  redis.call('SET', KEYS[2], ARGV[3] .. ' ' .. t[1] .. '.' .. t[2], 'PX', ARGV[2])
end
return 1
"#,
    )
});

/// Lists nodes: `ARGV[1]` is `live` (expiry after now) or `expired`.
///
/// `KEYS[1]` nodes.
pub(crate) static NODES: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
if ARGV[1] == 'live' then
  return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
end
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
"#,
    )
});

/// The log's beginning ([`Engine::genesis`](crate::Engine::genesis)):
/// set once, to Redis's time when the log is empty, else to `0` (unknown).
///
/// `KEYS[1]` genesis, `KEYS[2]` head. Returns it, as a decimal string.
pub(crate) static GENESIS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local g = redis.call('GET', KEYS[1])
if g then return g end
if redis.call('EXISTS', KEYS[2]) == 1 then
  g = '0'
else
  local t = redis.call('TIME')
  g = t[1] .. string.format('%06d', tonumber(t[2]))
end
redis.call('SET', KEYS[1], g)
return g
"#,
    )
});

/// Forgets a node whose heartbeat expired, and only then: a node that came
/// back between the sweeper's look and this call stays.
///
/// `KEYS[1]` nodes, `ARGV[1]` node. Returns 1 if it was forgotten.
pub(crate) static FORGET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) <= now then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
"#,
    )
});

/// Takes a free lease or renews one this node holds.
///
/// `KEYS[1]` `{prefix}:lease:NAME`, `ARGV[1]` node, `ARGV[2]` ttl in ms.
/// Returns 1 when this node holds the lease for the next ttl.
pub(crate) static LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"#,
    )
});

/// Gives a lease up if this node holds it, so a successor need not wait for
/// its expiry (a clean shutdown).
///
/// `KEYS[1]` the lease, `ARGV[1]` node. Returns 1 if it was released.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#,
    )
});
