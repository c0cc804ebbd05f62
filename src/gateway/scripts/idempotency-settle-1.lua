--[[
  Settles a claim of an Idempotency-Key that this request holds.

  KEYS[1] the key's claim (see idempotency-claim-1.lua)
  ARGV[1] fingerprint of the request body
  ARGV[2] "done" (its batches are in the queues) or "release" (they may not
          be: another request may resume it at once)
  ARGV[3] events accepted (done)
  ARGV[4] the request's id (release: only the holder's own lease is given up)

  Returns 1 if it changed the claim, 0 if not (gone, another body, or
  released by a request that no longer holds it).
]]
local cur = redis.call("HMGET", KEYS[1], "fp", "state", "owner")
if cur[1] ~= ARGV[1] then return 0 end
if ARGV[2] == "done" then
  redis.call("HSET", KEYS[1], "state", "done", "accepted", ARGV[3], "lease", "0")
  return 1
end
if cur[2] == "pending" and cur[3] == ARGV[4] then
  redis.call("HSET", KEYS[1], "lease", "0")
  return 1
end
return 0
