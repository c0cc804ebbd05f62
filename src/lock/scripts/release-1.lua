--[[
  Releases the lock, only if the caller still holds it (compare-and-delete):
  a holder whose lease expired must never delete its successor's lock.

  KEYS[1] lock key
  ARGV[1] holder token

  Returns 1 if released, 0 otherwise.
]]
if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("DEL", KEYS[1])
end
return 0
