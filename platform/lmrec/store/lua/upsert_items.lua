-- upsert_items: ARGV = prefix, model, n, then n (id, text, attributes JSON, vector bytes, created)
local p, model, n, i, last, new = ARGV[1], ARGV[2], tonumber(ARGV[3]), 4, 0, 0
for _ = 1, n do
  local id = ARGV[i]
  last = redis.call('HINCRBY', p .. 'n', 'item_version', 1)
  local key = p .. 'item:' .. id
  if redis.call('EXISTS', key) == 0 or redis.call('HGET', key, 'removed') == '1' then new = new + 1 end
  for _, f in ipairs(redis.call('HKEYS', key)) do  -- other models' vectors were of the old text
    if string.sub(f, 1, 2) == 'v:' or f == 'vmodels' then redis.call('HDEL', key, f) end
  end
  redis.call('HSET', key, 'version', last, 'text', ARGV[i + 1], 'attributes', ARGV[i + 2], 'vec', ARGV[i + 3], 'removed', '0',
             'model', model)
  redis.call('HSETNX', key, 'created', ARGV[i + 4])  -- an item is as old as its first post
  redis.call('ZADD', p .. 'items', last, id)
  i = i + 5
end
redis.call('HINCRBY', p .. 'n', 'items', new)
return last
