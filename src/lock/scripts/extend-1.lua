--[[
  Renews the lease, only if the caller still holds the lock.

  KEYS[1] lock key
  ARGV[1] holder token
  ARGV[2] lease in milliseconds

  Returns 1 if renewed, 0 if the lock is gone or held by someone else.
]]
if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("PEXPIRE", KEYS[1], ARGV[2])
end
return 0
