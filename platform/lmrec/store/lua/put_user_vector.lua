-- put_user_vectors (one): ARGV = prefix, user id, version, vector bytes, model; 0 when the version is stale
local p, uid, version = ARGV[1], ARGV[2], ARGV[3]
local current = redis.call('HGET', p .. 'u:' .. uid, 'version') or '0'
if current ~= version then return 0 end
redis.call('HSET', p .. 'vec:' .. uid, 'version', version, 'vec', ARGV[4], 'model', ARGV[5])
return 1
