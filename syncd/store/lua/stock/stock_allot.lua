--@include _lib.lua _stock.lua
-- stock.allot(sku, store, qty): move qty from the pool to the store's allotment, which its till may sell
-- offline. Allotments only grow here: shrinking one needs the store's acknowledgement.
local p, K, dup = stock_op()
if dup then
    return dup
end
local store, qty = arg(0), qty_arg(1, 1)
if not (stock_common(p) and check_key(store) and qty) then
    return reject(K.dedup, p, 'bad_args', 'stock.allot arguments failed the store invariants')
end
local S = stock_load(K)
if qty > S.pool then
    return reject(K.dedup, p, 'insufficient_stock', 'the pool holds fewer units than the allotment asks')
end
S.pool = S.pool - qty
S.a[store] = (S.a[store] or 0) + qty
return stock_finish(K, p, S, nil)
