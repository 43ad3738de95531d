-- Circuit breaker for one (provider, account), shared by every worker; Redis's clock (TIME).
-- KEYS[1] state hash {failures, open_until (ms)}; KEYS[2] the half-open probe slot.
-- ARGV[1] mode: 'allow' | 'success' | 'failure' | 'abandon'
-- ARGV[2] threshold (consecutive failures that open it), ARGV[3] cool-down (ms),
-- ARGV[4] probe slot TTL (ms), ARGV[5] state TTL (ms), ARGV[6] a token for the probe slot.
-- Returns {verdict, ms}:
--   allow:   {'closed', 0} send; {'probe', 0} send, you are the half-open probe;
--            {'open', ms} do not send, come back in ms.
--   success: {'closed', 0} it was closed; {'reclosed', 0} it was open or half-open, now closed.
--   failure: {'counted', n} still closed after n failures; {'opened', ms} it opens now;
--            {'reopened', ms} the probe (or a straggler after the cool-down) failed; {'open', ms}.
--   abandon: {'abandoned', 0} the probe slot is free again (the probe was never sent).
redis.replicate_commands()
local mode = ARGV[1]
local threshold = tonumber(ARGV[2])
local cooldown = tonumber(ARGV[3])
local probe_ttl = tonumber(ARGV[4])
local state_ttl = tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')

if mode == 'allow' then
  if open_until == 0 then
    return {'closed', 0}
  end
  if now < open_until then
    return {'open', open_until - now}
  end
  if redis.call('SET', KEYS[2], ARGV[6], 'NX', 'PX', probe_ttl) then
    return {'probe', 0}
  end
  -- A probe is out: its answer decides soon; ask again in a second (or when its slot expires).
  local left = redis.call('PTTL', KEYS[2])
  if left < 0 then left = probe_ttl end
  return {'open', math.min(left, 1000)}
elseif mode == 'success' then
  if open_until == 0 then
    if redis.call('HGET', KEYS[1], 'failures') then
      redis.call('DEL', KEYS[1])
    end
    return {'closed', 0}
  end
  redis.call('DEL', KEYS[1], KEYS[2])
  return {'reclosed', 0}
elseif mode == 'failure' then
  local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
  redis.call('PEXPIRE', KEYS[1], state_ttl)
  if open_until == 0 then
    if failures >= threshold then
      redis.call('HSET', KEYS[1], 'open_until', now + cooldown)
      return {'opened', cooldown}
    end
    return {'counted', failures}
  end
  if now >= open_until then
    redis.call('HSET', KEYS[1], 'open_until', now + cooldown)
    redis.call('DEL', KEYS[2])
    return {'reopened', cooldown}
  end
  return {'open', open_until - now}
elseif mode == 'abandon' then
  if redis.call('GET', KEYS[2]) == ARGV[6] then
    redis.call('DEL', KEYS[2])
  end
  return {'abandoned', 0}
end
return redis.error_reply('unknown mode ' .. tostring(mode))
