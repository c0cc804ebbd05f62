--[[
  Raises the fencing counter to at least a floor. Used when PostgreSQL has
  seen a higher token than Redis hands out, which happens after Redis lost its
  data (no persistence, failover): without this every later holder would be
  fenced off forever. Raising it grants nothing by itself.

  KEYS[1] fence counter key
  ARGV[1] floor

  Returns the counter's value before the call (0: none), from which the
  caller tells whether Redis had lost it, and counts that.
]]
local current = tonumber(redis.call("GET", KEYS[1]) or "0")
local floor = tonumber(ARGV[1])
if current < floor then
  redis.call("SET", KEYS[1], ARGV[1])
end
return current
