//! The Redis side of the redis broker: key layout and the two Lua scripts that make a
//! publish and a history read atomic.
//!
//! Keys (every one under `broker.key_prefix`, `{…}` a Redis Cluster hash tag so one
//! channel's keys and pub/sub channel live on one shard):
//! - `<p>epoch`: the history epoch, a random number set once. Redis restarted empty has
//!   none, so the next script call sets a new one and every old cursor reads as lost. In a
//!   cluster the scripts cannot touch it (another shard): instances read it once a second
//!   and pass it in; a shard that lost its data shows as counters that start afresh.
//! - `<p>{<channel>}:seq`: the channel's last id (INCR).
//! - `<p>{<channel>}:log`: the channel's history, a stream with entry ids `<seq>-0` and
//!   fields `p` (the previous id) and `m` (the message envelope).
//! - `<p>{<channel>}`: the pub/sub channel; payload `<epoch> <seq> <prev> <envelope>`.
//! - `<p>{<channel>}:idem:<sha256(key)>`: `<fingerprint>|<ids>` for 5 minutes, on the
//!   shard of the first channel of the (part of the) request it records.
//! - `<p>{<channel>}:present`, `:info`, `:present:<instance>`: presence (see `PRESENCE`);
//!   `<p>instances`, `<p>alive:<instance>`, `<p>inst:<instance>`: which instances are
//!   alive and where they have members, so a dead one's members can be made to leave.
//! - Presence announcements travel on the channel's pub/sub channel with epoch 0 and
//!   seq 0 (ephemeral).
//!
//! Why the order holds by construction: the publish script numbers, appends and
//! publishes in one atomic step, so Redis emits a channel's messages on pub/sub in id
//! order, each carrying the id before it (`prev`). A receiver delivers a message only
//! when `prev` is the last id it delivered on that channel; anything else is a duplicate
//! (dropped) or a gap, back-filled from the stream before delivery goes on.

use redis::Script;

/// Publishes messages atomically (all of them on one Redis; in a cluster, the part of
/// a request whose channels live on one shard).
///
/// KEYS: per message `seq`, `log`; then per idempotent item its key; then, unless in a
/// cluster, `epoch`. ARGV: `epoch` (a candidate, or in a cluster the known epoch),
/// `1` when the last key is `epoch`, `idem ttl s`, `n items`, then per item
/// `n messages, idem key index (0 = none), fingerprint`, then per message
/// `pub/sub channel, history size, ttl ms, ephemeral 0/1, envelope`.
/// Returns `{epoch, conflict index (0 = none), per item "<ids comma separated>"}`.
/// A fresh counter starts at the clock in microseconds (and above the log's last id), so
/// an id is never reused within an epoch even after a quiet channel's keys expired.
/// In a cluster, messages go out with SPUBLISH (sharded pub/sub).
const PUBLISH: &str = r"
local epoch = ARGV[1]
if ARGV[2] == '1' then
  epoch = redis.call('GET', KEYS[#KEYS])
  if not epoch then
    epoch = ARGV[1]
    redis.call('SET', KEYS[#KEYS], epoch)
  end
end
local publish = 'PUBLISH'
if ARGV[2] ~= '1' then publish = 'SPUBLISH' end
local ttl_idem = tonumber(ARGV[3])
local nitems = tonumber(ARGV[4])
-- First pass: idempotency conflicts publish nothing.
local a = 5
for i = 1, nitems do
  local nmsg, ki, fp = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), ARGV[a + 2]
  if ki > 0 then
    local seen = redis.call('GET', KEYS[ki])
    if seen and string.sub(seen, 1, #fp) ~= fp then
      return {epoch, i, {}}
    end
  end
  a = a + 3 + nmsg * 5
end
local out = {}
local k = 1
a = 5
for i = 1, nitems do
  local nmsg, ki, fp = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), ARGV[a + 2]
  a = a + 3
  local seen = false
  if ki > 0 then seen = redis.call('GET', KEYS[ki]) end
  if seen then
    out[i] = string.sub(seen, #fp + 2)
    a = a + nmsg * 5
    k = k + nmsg * 2
  else
    local ids = {}
    for m = 1, nmsg do
      local chan, size, ttl, eph, env =
        ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), ARGV[a + 3], ARGV[a + 4]
      local seqk, logk = KEYS[k], KEYS[k + 1]
      a = a + 5
      k = k + 2
      if eph == '1' then
        redis.call(publish, chan, epoch .. ' 0 0 ' .. env)
        ids[m] = '0'
      else
        local seq = redis.call('INCR', seqk)
        local prev = seq - 1
        if seq == 1 then
          local t = redis.call('TIME')
          seq = tonumber(t[1]) * 1000000 + tonumber(t[2])
          local top = redis.call('XREVRANGE', logk, '+', '-', 'COUNT', 1)
          if top[1] then
            local last = tonumber(string.match(top[1][1], '^(%d+)'))
            if last >= seq then seq = last + 1 end
          end
          redis.call('SET', seqk, string.format('%.0f', seq))
          prev = 0
        end
        local s, p = string.format('%.0f', seq), string.format('%.0f', prev)
        redis.call('PEXPIRE', seqk, ttl)
        if size > 0 then
          redis.call('XADD', logk, 'MAXLEN', size, s .. '-0', 'p', p, 'm', env)
          redis.call('PEXPIRE', logk, ttl)
        end
        redis.call(publish, chan, epoch .. ' ' .. s .. ' ' .. p .. ' ' .. env)
        ids[m] = s
      end
    end
    out[i] = table.concat(ids, ',')
    if ki > 0 then
      redis.call('SET', KEYS[ki], fp .. '|' .. out[i], 'EX', ttl_idem)
    end
  end
end
return {epoch, 0, out}
";

/// Reads where a channel stands and, optionally, its history after a position.
///
/// KEYS: `seq`, `log`, then (unless in a cluster) `epoch`. ARGV: `epoch` (candidate or
/// known, as for `PUBLISH`), `1` when the last key is `epoch`, `after` (-1: head only),
/// `count`. Returns `{epoch, head, entries}` with entries as XRANGE gives them.
const READ: &str = r"
local epoch = ARGV[1]
if ARGV[2] == '1' then
  epoch = redis.call('GET', KEYS[3])
  if not epoch then
    epoch = ARGV[1]
    redis.call('SET', KEYS[3], epoch)
  end
end
local head = redis.call('GET', KEYS[1]) or '0'
if ARGV[3] == '-1' then
  return {epoch, head, {}}
end
local entries = redis.call('XRANGE', KEYS[2], '(' .. ARGV[3] .. '-0', '+', 'COUNT', ARGV[4])
return {epoch, head, entries}
";

/// Writes one instance's presence on one channel and announces the cluster-wide
/// changes it makes: `join` when a user's connection count across the cluster leaves 0,
/// `leave` when it returns to 0 (once per user, whatever the number of instances).
///
/// KEYS: `count` (user → connections, cluster-wide), `info` (user → info JSON), `mine`
/// (user → connections on this instance). ARGV: pub/sub channel, `PUBLISH` or
/// `SPUBLISH` (cluster), then per present user `user, connections, info JSON`. An empty list is the instance leaving the channel
/// (also how a dead instance is reaped). Returns the number of users present here.
const PRESENCE: &str = r#"
local old = redis.call('HGETALL', KEYS[3])
local before = {}
for i = 1, #old, 2 do before[old[i]] = tonumber(old[i + 1]) end
local seen = {}
local function announce(kind, user, info)
  local env = '{"k":"' .. kind .. '","u":' .. cjson.encode(user) .. ',"i":' .. info .. ',"d":null}'
  redis.call(ARGV[2], ARGV[1], '0 0 0 ' .. env)
end
local here = 0
for i = 3, #ARGV, 3 do
  local user, n, info = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  seen[user] = true
  here = here + 1
  local was = before[user] or 0
  redis.call('HSET', KEYS[2], user, info)
  if n ~= was then
    redis.call('HSET', KEYS[3], user, n)
    local total = redis.call('HINCRBY', KEYS[1], user, n - was)
    if total - (n - was) <= 0 then announce('join', user, info) end
  end
end
for user, was in pairs(before) do
  if not seen[user] then
    redis.call('HDEL', KEYS[3], user)
    local total = redis.call('HINCRBY', KEYS[1], user, -was)
    if total <= 0 then
      redis.call('HDEL', KEYS[1], user)
      redis.call('HDEL', KEYS[2], user)
      announce('leave', user, 'null')
    end
  end
end
return here
"#;

/// The scripts, hashed once.
pub struct Scripts {
    pub publish: Script,
    pub read: Script,
    pub presence: Script,
}

impl Scripts {
    pub fn new() -> Self {
        Self { publish: Script::new(PUBLISH), read: Script::new(READ), presence: Script::new(PRESENCE) }
    }
}

/// Key names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned() }
    }

    pub fn epoch(&self) -> String {
        format!("{}epoch", self.prefix)
    }

    pub fn seq(&self, channel: &str) -> String {
        format!("{}{{{channel}}}:seq", self.prefix)
    }

    pub fn log(&self, channel: &str) -> String {
        format!("{}{{{channel}}}:log", self.prefix)
    }

    pub fn pubsub(&self, channel: &str) -> String {
        format!("{}{{{channel}}}", self.prefix)
    }

    /// user → connections on every instance.
    pub fn present(&self, channel: &str) -> String {
        format!("{}{{{channel}}}:present", self.prefix)
    }

    /// user → info JSON.
    pub fn present_info(&self, channel: &str) -> String {
        format!("{}{{{channel}}}:info", self.prefix)
    }

    /// user → connections on one instance.
    pub fn present_on(&self, channel: &str, instance: &str) -> String {
        format!("{}{{{channel}}}:present:{instance}", self.prefix)
    }

    /// Instances that announced themselves (set of names).
    pub fn instances(&self) -> String {
        format!("{}instances", self.prefix)
    }

    /// Exists while `instance` is alive (expires 2 heartbeat intervals after its last tick).
    pub fn alive(&self, instance: &str) -> String {
        format!("{}alive:{instance}", self.prefix)
    }

    /// Channels where `instance` has present users (for reaping it).
    pub fn presence_of(&self, instance: &str) -> String {
        format!("{}inst:{instance}", self.prefix)
    }

    /// An idempotency record, on the shard of `channel` (the first channel of the part
    /// of a request that shard publishes).
    pub fn idempotency(&self, channel: &str, hashed: &str) -> String {
        format!("{}{{{channel}}}:idem:{hashed}", self.prefix)
    }

    /// The sidewire channel a pub/sub channel name carries, if it is one of ours.
    pub fn channel_of<'a>(&self, pubsub: &'a str) -> Option<&'a str> {
        pubsub.strip_prefix(self.prefix.as_str())?.strip_prefix('{')?.strip_suffix('}')
    }
}

/// A pub/sub payload: `<epoch> <seq> <prev> <envelope>`.
#[derive(Debug, PartialEq, Eq)]
pub struct Wire<'a> {
    pub epoch: u32,
    pub seq: u64,
    pub prev: u64,
    pub envelope: &'a str,
}

impl<'a> Wire<'a> {
    pub fn parse(payload: &'a str) -> Option<Self> {
        let mut parts = payload.splitn(4, ' ');
        let epoch = parts.next()?.parse().ok()?;
        let seq = parts.next()?.parse().ok()?;
        let prev = parts.next()?.parse().ok()?;
        Some(Self { epoch, seq, prev, envelope: parts.next()? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_a_hash_tag_per_channel() {
        let k = Keys::new("sw:");
        assert_eq!(k.seq("room:1"), "sw:{room:1}:seq");
        assert_eq!(k.log("room:1"), "sw:{room:1}:log");
        assert_eq!(k.pubsub("room:1"), "sw:{room:1}");
        assert_eq!(k.channel_of("sw:{room:1}"), Some("room:1"));
        assert_eq!(k.channel_of("other:{room:1}"), None);
    }

    #[test]
    fn wire() {
        let w = Wire::parse(r#"77 1733331234567890 0 {"d":1}"#).unwrap();
        assert_eq!((w.epoch, w.seq, w.prev, w.envelope), (77, 1_733_331_234_567_890, 0, r#"{"d":1}"#));
        assert!(Wire::parse("77 1 0").is_none());
        assert!(Wire::parse("x 1 0 {}").is_none());
    }
}
