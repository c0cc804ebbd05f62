--[[
  Takes the flush lock over from one given holder: only if the lock still
  holds that holder's token (compare-and-set), so a holder that renewed or
  released it meanwhile, or another taker, is never displaced by mistake.
  Like an acquisition, it hands out a new fencing token: PostgreSQL then
  refuses the displaced holder's next commit.

  KEYS[1] lock key
  KEYS[2] fence counter key
  ARGV[1] the displaced holder's token
  ARGV[2] the new holder's token
  ARGV[3] lease in milliseconds

  Returns the new fencing token (>= 1), or 0 if the lock no longer held ARGV[1].
]]
if redis.call("GET", KEYS[1]) == ARGV[1] then
  redis.call("SET", KEYS[1], ARGV[2], "PX", ARGV[3])
  return redis.call("INCR", KEYS[2])
end
return 0
