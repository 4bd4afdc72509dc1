-- Last step of an op, in the client's slot: raise the watermark to seq (never lower it) and, for a rejection
-- settled before any member script, record its outcome with a TTL so a replay answers the same.
-- KEYS: 1 {c:<client_id>}:seq, 2 {c:<client_id>}:r:<seq>. ARGV: 1 seq, 2 record or '', 3 TTL in ms.
-- The watermark is written even when unchanged: a WAITAOF after this write then covers every earlier write
-- on this node, including the member script's and those of an earlier attempt of the same op.
local last = tonumber(redis.call('HGET', KEYS[1], 'last') or '0')
local seq = tonumber(ARGV[1])
if seq > last then
    last = seq
end
redis.call('HSET', KEYS[1], 'last', string.format('%d', last))
if ARGV[2] ~= '' then
    redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
end
return last
