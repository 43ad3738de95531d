-- Release the ordered send lane of one API key, but only by its holder.
-- KEYS[1] lane key; ARGV[1] the holder's token. Returns 1 when released, 0 when the lane had
-- already passed to someone else (our TTL ran out) or was free.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
