--@include _lib.lua _stock.lua
-- stock.quota(sku, channel, qty): the channel may have taken at most qty units (held or sold through it).
local p, K, dup = stock_op()
if dup then
    return dup
end
local channel, qty = arg(0), qty_arg(1, 0)
if not (stock_common(p) and check_key(channel) and qty) then
    return reject(K.dedup, p, 'bad_args', 'stock.quota arguments failed the store invariants')
end
local S = stock_load(K)
S.q[channel] = qty
return stock_finish(K, p, S, nil)
