-- Next nonce for one API key. The nonce is the clock itself, never ahead of it, and strictly
-- greater than every nonce issued before. Never running ahead of the clock is what keeps
-- nonces valid after Redis loses the counter (FLUSHALL, failover): the clock is the floor.
-- The clock is Redis's own TIME, one clock for every worker: a worker whose clock is skewed
-- can neither push the counter ahead of the others nor sign a stale timestamp.
-- KEYS[1] counter; ARGV[1] microseconds per unit. Returns {1, nonce} or {0, units to wait}.
-- The counter expires after a day unused: an expired counter is the same as a lost one, which the
-- clock floor already makes safe, and keys of retired accounts do not pile up in Redis.
local t = redis.call('TIME')
local now = math.floor((tonumber(t[1]) * 1000000 + tonumber(t[2])) / tonumber(ARGV[1]))
local stored = redis.call('GET', KEYS[1])
if not stored then
  -- A lost counter: a nonce was perhaps issued in this very unit. Mark it used and wait one.
  redis.call('SET', KEYS[1], string.format('%d', now), 'EX', 86400)
  return {0, '1'}
end
local last = tonumber(stored)
if now <= last then
  return {0, string.format('%d', last - now + 1)}
end
redis.call('SET', KEYS[1], string.format('%d', now), 'EX', 86400)
return {1, string.format('%d', now)}
