-- append_events: ARGV = prefix, users, then per user: id, n, and n (timestamp, event JSON) pairs
local p, nu, i, total, new = ARGV[1], tonumber(ARGV[2]), 3, 0, 0
for _ = 1, nu do
  local uid, ne = ARGV[i], tonumber(ARGV[i + 1]); i = i + 2
  if redis.call('EXISTS', p .. 'u:' .. uid) == 0 then new = new + 1 end
  redis.call('ZADD', p .. 'users', 0, uid)  -- every user with events, by id (list_users)
  local seq = redis.call('HINCRBY', p .. 'n', 'event_seq', ne) - ne
  local z = {}
  for e = 1, ne do
    z[#z + 1] = ARGV[i]
    z[#z + 1] = string.format('%020d', seq + e) .. '|' .. ARGV[i + 1]
    i = i + 2
    if #z >= 1000 then redis.call('ZADD', p .. 'ev:' .. uid, unpack(z)); z = {} end
  end
  if #z > 0 then redis.call('ZADD', p .. 'ev:' .. uid, unpack(z)) end
  redis.call('HSET', p .. 'u:' .. uid, 'version', redis.call('HINCRBY', p .. 'n', 'user_version', 1))
  total = total + ne
end
redis.call('HINCRBY', p .. 'n', 'events', total)
redis.call('HINCRBY', p .. 'n', 'users', new)
return total
