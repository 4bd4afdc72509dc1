-- Step 1 of an op, in the client's slot: the client's watermark and any rejection settled before the member
-- script (bad args, unknown op). KEYS: 1 {c:<client_id>}:seq, 2 {c:<client_id>}:r:<seq>.
-- Reply: {last, record or ''}. Read-only.
local last = tonumber(redis.call('HGET', KEYS[1], 'last') or '0')
return {last, redis.call('GET', KEYS[2]) or ''}
