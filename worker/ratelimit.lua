-- Token bucket for one (provider, account), shared by every worker. Time is Redis's own (TIME),
-- so workers on machines with different clocks agree.
-- KEYS[1] bucket hash {tokens, at (µs)}.
-- ARGV[1] rate (tokens/s), ARGV[2] burst, ARGV[3] mode, ARGV[4] seconds:
--   mode 'take':     take a token now, or reserve one at most ARGV[4] seconds ahead (the tokens
--                    go below zero: later callers queue behind it);
--                    returns {1, wait} when taken (wait 0) or reserved (wait > 0), else {0, wait}
--                    with the seconds until a token would be free (nothing taken).
--   mode 'penalize': a provider said "retry after ARGV[4] seconds": no token before then.
-- Amounts are returned as strings (Lua numbers would be truncated to integers).
redis.replicate_commands()
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local seconds = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens = burst
  at = now
end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000000)
local taken = 0
local wait = 0
if ARGV[3] == 'penalize' then
  tokens = math.min(tokens, 1 - seconds * rate)
  wait = seconds
elseif tokens >= 1 then
  tokens = tokens - 1
  taken = 1
else
  wait = (1 - tokens) / rate
  if wait <= seconds then
    tokens = tokens - 1
    taken = 1
  end
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'at', string.format('%d', now))
-- Kept until long after it would have refilled anyway.
local ttl = math.ceil((burst - tokens) / rate) + 60
redis.call('EXPIRE', KEYS[1], ttl)
return {taken, string.format('%.6f', wait)}
