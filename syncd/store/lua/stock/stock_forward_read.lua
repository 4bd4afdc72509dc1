--@include _lib.lua _stock.lua
-- What a store topic needs of one SKU, read in one atomic step with the version it was read at (the SKU
-- topic's epoch and offset), and whether the op a forward is for is settled on this SKU (its client's dedup
-- hash: max >= seq; seq 0: no op to wait for). Read-only (syncd/storefeed.py).
-- KEYS: 1 {sku:S}:stock, 2 {sku:S}:recall, 3 {sku:S}:top:stock, 4 {sku:S}:d:<client> of the op.
-- ARGV: 1 store, 2 seq. Reply: {settled 0/1, allot, recall qty, recall to or '', epoch or '', offset}.
local store, seq = ARGV[1], tonumber(ARGV[2])
local settled = 1
if seq > 0 and tonumber(redis.call('HGET', KEYS[4], 'max') or '0') < seq then
    settled = 0
end
local allot = tonumber(redis.call('HGET', KEYS[1], 'a:' .. store) or '0')
local rqty, rto = 0, ''
local raw = redis.call('HGET', KEYS[2], store)
if raw then
    local q, t = string.match(raw, '^(%d+)|(.*)$')
    rqty, rto = tonumber(q), t
end
local meta = redis.call('HMGET', KEYS[3], 'epoch', 'offset')
return {settled, allot, rqty, rto, meta[1] or '', tonumber(meta[2] or '0')}
