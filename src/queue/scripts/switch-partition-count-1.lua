--[[
  Switches the recorded flush partition count, only if it still is the count
  the caller found drained (compare-and-set): two workers switching at once
  cannot both succeed with different counts.

  KEYS[1] partition count key
  ARGV[1] the count the caller read
  ARGV[2] the new count

  Returns 1 if switched, 0 if the count changed meanwhile.
]]
if redis.call("GET", KEYS[1]) == ARGV[1] then
  redis.call("SET", KEYS[1], ARGV[2])
  return 1
end
return 0
