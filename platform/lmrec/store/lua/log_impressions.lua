-- log_impressions: ARGV = prefix, then per impression: recommendation id, time, user id ('' when none), JSON
local p, new = ARGV[1], 0
for i = 2, #ARGV, 4 do
  local id, t, uid = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('HSETNX', p .. 'imp', id, ARGV[i + 3]) == 1 then
    redis.call('ZADD', p .. 'impt', t, id)
    if uid ~= '' then redis.call('ZADD', p .. 'impu:' .. uid, t, id) end
    new = new + 1
  end
end
return new
