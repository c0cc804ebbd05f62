--[[
  Gives an unspent lease back (a gateway shutting down, or a budget's limit
  changed), only to the state it was leased from: after a period ended or
  Redis was seeded again, giving back would release budget twice.

  KEYS[1] the entity's budget hash
  ARGV[1] the period (its start, epoch ms)
  ARGV[2] the epoch the lease came from
  ARGV[3] the amount (whole nanodollars)

  Returns 1 if given back, 0 if the state is another one.
]]
if redis.call("HGET", KEYS[1], "period") ~= ARGV[1] or redis.call("HGET", KEYS[1], "epoch") ~= ARGV[2] then
  return 0
end
redis.call("HINCRBY", KEYS[1], "remaining", ARGV[3])
return 1
