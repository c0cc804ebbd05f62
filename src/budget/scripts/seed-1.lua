--[[
  Seeds a budget's state for a period: what remains of it, worked out by the
  caller from PostgreSQL and pending spend. Only the first seeder of a period
  wins (the others lease from its state), so N gateways starting at once
  never count the spend N times; a later period replaces an earlier one.

  KEYS[1] the entity's budget hash
  ARGV[1] the period (its start, epoch ms)
  ARGV[2] what remains (whole nanodollars, may be 0)
  ARGV[3] an id for this seeding (epoch): leases from an older one are void
  ARGV[4] time to live (ms)
  ARGV[5] the period's spend so far (whole nanodollars): where threshold reports start

  Returns 1 if seeded, 0 if this period (or a later one) was already there.
]]
local period = redis.call("HGET", KEYS[1], "period")
if period and tonumber(period) >= tonumber(ARGV[1]) then
  return 0
end
redis.call("DEL", KEYS[1])
redis.call("HSET", KEYS[1], "period", ARGV[1], "remaining", ARGV[2], "epoch", ARGV[3], "spent", ARGV[5])
redis.call("PEXPIRE", KEYS[1], ARGV[4])
return 1
