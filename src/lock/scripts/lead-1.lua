--[[
  Takes or keeps the flush leadership: renews the lease if the caller holds
  it, takes it if nobody does.

  KEYS[1] leader key
  ARGV[1] worker id
  ARGV[2] lease in milliseconds

  Returns 1 if the caller leads (renewed or taken), 0 if another worker does.
]]
local holder = redis.call("GET", KEYS[1])
if holder == ARGV[1] then
  redis.call("PEXPIRE", KEYS[1], ARGV[2])
  return 1
end
if holder then
  return 0
end
redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2])
return 1
