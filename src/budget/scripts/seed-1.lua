--[[
  Seeds a budget's state for a period: what remains of it, worked out by the
  caller from PostgreSQL and pending spend. Only the first seeder of a period
  wins (the others lease from its state), so N gateways starting at once
  never count the spend N times; a later period replaces an earlier one, and
  so does a newer definition of the budget (a changed limit): a gateway that
  had not yet seen the change cannot leave a seed made with the old limit in
  place of the new one.

  KEYS[1] the entity's budget hash
  ARGV[1] the period (its start, epoch ms)
  ARGV[2] what remains (whole nanodollars, may be 0)
  ARGV[3] an id for this seeding (epoch): leases from an older one are void
  ARGV[4] time to live (ms)
  ARGV[5] the period's spend so far (whole nanodollars): where threshold reports start
  ARGV[6] the version of the definition it was worked out from (its updatedAt, epoch ms)

  Returns 1 if seeded, 0 if this period (or a later one) was already seeded
  from this definition or a newer one.
]]
local period = redis.call("HGET", KEYS[1], "period")
if period then
  local theirs = tonumber(period)
  local mine = tonumber(ARGV[1])
  if theirs > mine then
    return 0
  end
  local version = tonumber(redis.call("HGET", KEYS[1], "version") or "0")
  if theirs == mine and version >= tonumber(ARGV[6]) then
    return 0
  end
end
redis.call("DEL", KEYS[1])
redis.call("HSET", KEYS[1], "period", ARGV[1], "remaining", ARGV[2], "epoch", ARGV[3], "spent", ARGV[5], "version", ARGV[6])
redis.call("PEXPIRE", KEYS[1], ARGV[4])
return 1
