package mesh

import "github.com/redis/rueidis"

// Redis keys and Lua scripts; the package comment documents both. Every script touches
// the keys of one hash slot.

const (
	connIndexKey = "nc:{idx}:connectors"
	hubURLsKey   = "nc:{hubs}:urls"
	hubExpiryKey = "nc:{hubs}:expiry"
)

func epochKey(agent string) string      { return "nc:{a:" + agent + "}:epoch" }
func ownerKey(agent string) string      { return "nc:{a:" + agent + "}:owner" }
func connectorsKey(agent string) string { return "nc:{a:" + agent + "}:connectors" }
func membersKey(connector string) string {
	return "nc:{c:" + connector + "}:agents"
}
func replicaKey(replica string) string { return "nc:{r:" + replica + "}:agents" }

// luaNowMS sets now to Redis TIME in milliseconds.
const luaNowMS = `local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
`

// epochOverflowReply is in the error reply of claimScript when the epoch would pass
// 2^53-1 (the reply is "ERR …"; how the prefix shows differs between Redis versions).
const epochOverflowReply = "nowconnect epoch overflow"

// claimScript: KEYS owner, epoch, connectors; ARGV replica, hint, ttl_ms → epoch.
var claimScript = rueidis.NewLuaScriptRetryable(luaNowMS + `
local e = now
local stored = redis.call('GET', KEYS[2])
if stored then
  local s = tonumber(stored)
  if not s then return redis.error_reply('ERR epoch key holds ' .. stored) end
  if s + 1 > e then e = s + 1 end
end
local h = tonumber(ARGV[2])
if h + 1 > e then e = h + 1 end
if e > 9007199254740991 then return redis.error_reply('ERR nowconnect epoch overflow') end
local es = string.format('%d', e)
redis.call('SET', KEYS[2], es)
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. es, 'PX', ARGV[3])
redis.call('DEL', KEYS[3])
return es
`)

// heartbeatScript: KEYS owner, connectors; ARGV "replica|epoch", ttl_ms → 1 owned, 0 another
// owner, 2 no owner at all.
var heartbeatScript = rueidis.NewLuaScriptRetryable(`
local v = redis.call('GET', KEYS[1])
if not v then return 2 end
if v ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
`)

// releaseScript: KEYS owner, connectors; ARGV "replica|epoch" → 1 released, 0 not owner.
var releaseScript = rueidis.NewLuaScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
`)

// addConnectorsScript: KEYS owner, connectors; ARGV "replica|epoch", epoch, connector…
// → 1 recorded, 0 not owner.
var addConnectorsScript = rueidis.NewLuaScriptRetryable(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
for i = 3, #ARGV do redis.call('HSET', KEYS[2], ARGV[i], ARGV[2]) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
return 1
`)

// clearOwnScript: KEYS owner, connectors; ARGV "replica|" → 1 cleared, 0 not ours.
var clearOwnScript = rueidis.NewLuaScriptRetryable(`
local v = redis.call('GET', KEYS[1])
if not v or string.sub(v, 1, #ARGV[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
`)

// pruneMembersScript: KEYS members; ARGV agent, epoch, … → {removed, remaining}.
var pruneMembersScript = rueidis.NewLuaScriptRetryable(`
local n = 0
for i = 1, #ARGV, 2 do
  local s = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if s and string.format('%d', tonumber(s)) == ARGV[i + 1] then
    n = n + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return {n, redis.call('ZCARD', KEYS[1])}
`)

// publishHubScript: KEYS urls, expiry; ARGV replica, url, ttl_ms → 1.
var publishHubScript = rueidis.NewLuaScriptRetryable(luaNowMS + `
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], string.format('%d', now + tonumber(ARGV[3])), ARGV[1])
return 1
`)

// hubsScript: KEYS urls, expiry → {replica, url, …} of the live hubs.
var hubsScript = rueidis.NewLuaScriptRetryable(luaNowMS + `
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. string.format('%d', now), '+inf')) do
  local url = redis.call('HGET', KEYS[1], id)
  if url then
    out[#out + 1] = id
    out[#out + 1] = url
  end
end
return out
`)

// sweepHubsScript: KEYS urls, expiry → how many expired hub entries it removed.
var sweepHubsScript = rueidis.NewLuaScriptRetryable(luaNowMS + `
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', string.format('%d', now))
for _, id in ipairs(ids) do
  redis.call('HDEL', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
end
return #ids
`)
