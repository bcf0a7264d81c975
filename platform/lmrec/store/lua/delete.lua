-- delete_user: ARGV = prefix, user id
local p, uid = ARGV[1], ARGV[2]
local events = redis.call('ZCARD', p .. 'ev:' .. uid)
local user = redis.call('EXISTS', p .. 'u:' .. uid)
redis.call('ZREM', p .. 'users', uid)
local shown = redis.call('ZRANGE', p .. 'impu:' .. uid, 0, -1)  -- what they were shown goes with them
for _, id in ipairs(shown) do
  redis.call('HDEL', p .. 'imp', id)
  redis.call('ZREM', p .. 'impt', id)
end
redis.call('DEL', p .. 'impu:' .. uid)
local removed = redis.call('DEL', p .. 'u:' .. uid, p .. 'ev:' .. uid, p .. 'vec:' .. uid)
redis.call('HINCRBY', p .. 'n', 'events', 0 - events)  -- not -events: Lua prints -0, which HINCRBY rejects
redis.call('HINCRBY', p .. 'n', 'users', 0 - user)
return removed + #shown
