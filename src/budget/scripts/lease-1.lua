--[[
  Leases part of a budget's remaining amount to a gateway, which spends it
  locally with no round trip per request.

  KEYS[1] the entity's budget hash (period, version, epoch, remaining)
  ARGV[1] the period the caller is in (its start, epoch ms)
  ARGV[2] the amount wanted (whole nanodollars)
  ARGV[3] the hash's time to live (ms): past the period's end
  ARGV[4] the version of the budget's definition the caller holds (its updatedAt, epoch ms)

  Returns { status, grant, epoch }:
    status 1: leased `grant` (0 when nothing remains) from the state seeded as `epoch`
    status 0: no state for this period, or one seeded from an older definition
              than the caller's (a limit since changed): the caller must seed it (seed-1.lua)
    status 2: the state is for a later period: the caller's period is over
    status 3: the state was seeded from a newer definition than the caller's:
              the caller must reload the budget before it leases
  Amounts are whole nanodollars, below 2^53 (9 million USD): Lua's numbers are doubles.
]]
local period = redis.call("HGET", KEYS[1], "period")
if not period then
  return { 0, 0, "" }
end
local mine = tonumber(ARGV[1])
local theirs = tonumber(period)
if theirs > mine then
  return { 2, 0, "" }
end
if theirs < mine then
  return { 0, 0, "" }
end
local version = tonumber(redis.call("HGET", KEYS[1], "version") or "0")
local caller = tonumber(ARGV[4])
if version < caller then
  return { 0, 0, "" }
end
if version > caller then
  return { 3, 0, "" }
end
local remaining = tonumber(redis.call("HGET", KEYS[1], "remaining") or "0")
local grant = math.min(tonumber(ARGV[2]), math.max(remaining, 0))
if grant > 0 then
  redis.call("HINCRBY", KEYS[1], "remaining", -grant)
end
redis.call("PEXPIRE", KEYS[1], ARGV[3])
return { 1, grant, redis.call("HGET", KEYS[1], "epoch") or "" }
