-- items_page: ARGV = prefix, after version, limit, model; 7 values per item
local p, model = ARGV[1], ARGV[4]
local ids = redis.call('ZRANGEBYSCORE', p .. 'items', '(' .. ARGV[2], '+inf', 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  local h = redis.call('HMGET', p .. 'item:' .. id, 'version', 'text', 'attributes', 'vec', 'removed', 'model', 'v:' .. model, 'created')
  local vec = h[7]  -- this model's re-encoding, or false (nil: no vector of this model yet)
  if (h[6] or '') == model then vec = h[4] end
  out[#out + 1] = h[1]; out[#out + 1] = id; out[#out + 1] = h[2]; out[#out + 1] = h[3]; out[#out + 1] = vec
  out[#out + 1] = h[5] or '0'; out[#out + 1] = h[8] or ''
end
return out
