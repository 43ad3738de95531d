-- Next nonce for one API key: strictly greater than every nonce issued before, and never
-- behind the clock, so it stays valid even after Redis lost the counter (the clock is the floor).
-- KEYS[1] counter key; ARGV[1] now in the provider's unit. Values stay below 2^53 (exact in Lua).
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
local now = tonumber(ARGV[1])
local nxt = last + 1
if now > nxt then nxt = now end
redis.call('SET', KEYS[1], string.format('%d', nxt))
return string.format('%d', nxt)
