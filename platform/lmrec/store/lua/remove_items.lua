-- remove_items: ARGV = prefix, item ids...; a tombstone each
local p, last, gone = ARGV[1], 0, 0
for i = 2, #ARGV do
  local id = ARGV[i]
  last = redis.call('HINCRBY', p .. 'n', 'item_version', 1)
  local key = p .. 'item:' .. id
  if redis.call('EXISTS', key) == 0 then
    redis.call('HSET', key, 'text', '', 'attributes', '{}', 'vec', '')
  elseif redis.call('HGET', key, 'removed') ~= '1' then
    gone = gone + 1
  end
  redis.call('HSET', key, 'version', last, 'removed', '1')
  redis.call('ZADD', p .. 'items', last, id)
end
redis.call('HINCRBY', p .. 'n', 'items', 0 - gone)
return last
