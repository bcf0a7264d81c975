-- put_item_vectors: ARGV = prefix, model, vectors kept per item, then (id, version, vector bytes) triples
local p, model, keep, out = ARGV[1], ARGV[2], tonumber(ARGV[3]), {}
for i = 4, #ARGV, 3 do
  local key = p .. 'item:' .. ARGV[i]
  local h = redis.call('HMGET', key, 'version', 'model', 'v:' .. model, 'vmodels')
  if h[1] == ARGV[i + 1] and (h[2] or '') ~= model and not h[3] then
    local version = redis.call('HINCRBY', p .. 'n', 'item_version', 1)
    local models = h[4] and cjson.decode(h[4]) or {}  -- the models with a vector here, oldest first
    models[#models + 1] = model
    while #models > keep do
      redis.call('HDEL', key, 'v:' .. table.remove(models, 1))
    end
    redis.call('HSET', key, 'v:' .. model, ARGV[i + 2], 'version', version, 'vmodels', cjson.encode(models))
    redis.call('ZADD', p .. 'items', version, ARGV[i])
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
