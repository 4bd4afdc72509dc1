--@include _lib.lua _stock.lua
-- stock.limit(sku, qty): a member may hold or buy at most qty units of the SKU, on every channel (0: no limit).
local p, K, dup = stock_op()
if dup then
    return dup
end
local qty = qty_arg(0, 0)
if not (stock_common(p) and qty) then
    return reject(K.dedup, p, 'bad_args', 'stock.limit arguments failed the store invariants')
end
local S = stock_load(K)
S.limit = qty
return stock_finish(K, p, S, nil)
