--@include _lib.lua _stock.lua
-- stock.restock(sku, qty): qty new units on hand, into the pool. Ops only (the hub checks the token).
local p, K, dup = stock_op()
if dup then
    return dup
end
local qty = qty_arg(0, 1)
if not (stock_common(p) and qty) then
    return reject(K.dedup, p, 'bad_args', 'stock.restock arguments failed the store invariants')
end
local S = stock_load(K)
S.on_hand = S.on_hand + qty
S.pool = S.pool + qty
return stock_finish(K, p, S, nil)
