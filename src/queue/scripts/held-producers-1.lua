--[[
  Publishes how many rows one producer holds (aggregated or sealed, not yet
  in the queues) and returns the sum over every producer that published
  recently: the work gateways hold that no queue shows yet. Entries older
  than the freshness window (producers stopped or dead) are removed. Time is
  Redis's own, so gateways' clocks need not agree.

  KEYS[1] hash: producer id -> "<rows>:<epoch ms>"
  ARGV[1] producer id
  ARGV[2] rows it holds
  ARGV[3] freshness window, ms

  Returns { the sum of fresh entries, how many there are }, this one
  included: proportional back-pressure gives each producer its share of the
  flush rate.
]]
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local fresh = tonumber(ARGV[3])
redis.call("HSET", KEYS[1], ARGV[1], ARGV[2] .. ":" .. now)
redis.call("PEXPIRE", KEYS[1], fresh * 2)
local sum = 0
local count = 0
local all = redis.call("HGETALL", KEYS[1])
for i = 1, #all, 2 do
  local v = all[i + 1]
  local sep = string.find(v, ":", 1, true)
  local rows = sep and tonumber(string.sub(v, 1, sep - 1))
  local at = sep and tonumber(string.sub(v, sep + 1))
  if rows == nil or at == nil or now - at > fresh then
    redis.call("HDEL", KEYS[1], all[i])
  else
    sum = sum + rows
    count = count + 1
  end
end
return { sum, count }
