-- prune_impressions: ARGV = prefix, before (time), at most how many; the number pruned
local p = ARGV[1]
local ids = redis.call('ZRANGEBYSCORE', p .. 'impt', '-inf', '(' .. ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  local body = redis.call('HGET', p .. 'imp', id)
  if body then
    local uid = cjson.decode(body)[4]  -- [rec id, time, surface, user id, ...] (lmrec.store.base.Impression.to_json)
    if type(uid) == 'string' then redis.call('ZREM', p .. 'impu:' .. uid, id) end
    redis.call('HDEL', p .. 'imp', id)
  end
  redis.call('ZREM', p .. 'impt', id)
end
return #ids
