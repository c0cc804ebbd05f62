--[[
  Takes the flush lock if nobody holds it, and hands out a fencing token.

  KEYS[1] lock key
  KEYS[2] fence counter key
  ARGV[1] holder token (unique per acquisition)
  ARGV[2] lease in milliseconds

  Returns the new fencing token (>= 1) on success, 0 if the lock is held.
  The token grows with every acquisition, so PostgreSQL can reject a write
  from any holder older than the newest one that committed.
]]
if redis.call("SET", KEYS[1], ARGV[1], "NX", "PX", ARGV[2]) then
  return redis.call("INCR", KEYS[2])
end
return 0
