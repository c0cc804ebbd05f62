--[[
  Claims an Idempotency-Key of POST /spend/events, or says why not. Time is
  Redis's own, so gateways' clocks need not agree on leases.

  KEYS[1] the key's claim (hash): fp, state (pending|done), owner, lease
          (epoch ms), received (epoch ms), rows (max rows per job), parts
          (partition count), accepted (events, once done)
  ARGV[1] fingerprint of the request body
  ARGV[2] the claiming request's id
  ARGV[3] lease, ms: how long another request must wait before resuming
  ARGV[4] the claim's lifetime, ms (set once, when it is made)
  ARGV[5] received, ARGV[6] rows, ARGV[7] parts: used if the claim is new

  Returns {outcome, received, rows, parts, accepted or ms left of the lease}:
  claimed (new), taken (a pending claim whose lease ran out: resume it),
  busy (pending, leased), done, mismatch (another body).
]]
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = string.format("%.0f", now + tonumber(ARGV[3]))
local cur = redis.call("HMGET", KEYS[1], "fp", "state", "lease", "received", "rows", "parts", "accepted")
if not cur[1] then
  redis.call("HSET", KEYS[1], "fp", ARGV[1], "state", "pending", "owner", ARGV[2], "lease", lease,
    "received", ARGV[5], "rows", ARGV[6], "parts", ARGV[7])
  redis.call("PEXPIRE", KEYS[1], ARGV[4])
  return { "claimed", ARGV[5], ARGV[6], ARGV[7], "" }
end
if cur[1] ~= ARGV[1] then
  return { "mismatch", cur[4] or "", cur[5] or "", cur[6] or "", "" }
end
if cur[2] == "done" then
  return { "done", cur[4] or "", cur[5] or "", cur[6] or "", cur[7] or "0" }
end
local left = (tonumber(cur[3]) or 0) - now
if left > 0 then
  return { "busy", cur[4] or "", cur[5] or "", cur[6] or "", string.format("%.0f", left) }
end
redis.call("HSET", KEYS[1], "owner", ARGV[2], "lease", lease)
return { "taken", cur[4] or "", cur[5] or "", cur[6] or "", "" }
