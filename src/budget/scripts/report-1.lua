--[[
  Adds what a gateway spent since its last report to the period's spend, and
  says which thresholds this report crossed: each is claimed once per period
  (HSETNX), so of all the gateways exactly one learns it crossed it.

  KEYS[1] the entity's budget hash
  ARGV[1] the period (its start, epoch ms)
  ARGV[2] the epoch the gateway's share came from: a report against an older
          seeding is dropped (the new seed counted that spend already)
  ARGV[3] the amount (whole nanodollars)
  ARGV[4], ARGV[5], ...: threshold name, threshold (whole nanodollars), ...

  Returns the period's spend after the report, then the names of the
  thresholds this report crossed.
]]
if redis.call("HGET", KEYS[1], "period") ~= ARGV[1] or redis.call("HGET", KEYS[1], "epoch") ~= ARGV[2] then
  return {}
end
local spent = tonumber(redis.call("HINCRBY", KEYS[1], "spent", ARGV[3]))
local crossed = { tostring(spent) }
for i = 4, #ARGV, 2 do
  if spent >= tonumber(ARGV[i + 1]) and redis.call("HSETNX", KEYS[1], "alert:" .. ARGV[i], "1") == 1 then
    crossed[#crossed + 1] = ARGV[i]
  end
end
return crossed
