--@include _lib.lua _stock.lua
-- stock.sell(sku, store, qty): a till sells from its store's allotment (offline included: the SDK refuses a
-- sale beyond what it knows of the allotment, so a replayed sale always fits).
local p, K, dup = stock_op()
if dup then
    return dup
end
local store, qty = arg(0), qty_arg(1, 1)
if not (stock_common(p) and check_key(store) and qty) then
    return reject(K.dedup, p, 'bad_args', 'stock.sell arguments failed the store invariants')
end
local S = stock_load(K)
if qty > (S.a[store] or 0) then
    return reject(K.dedup, p, 'allotment_exceeded', "the store's allotment holds fewer units")
end
S.a[store] = S.a[store] - qty
S.on_hand = S.on_hand - qty
S.sold = S.sold + qty
return stock_finish(K, p, S, nil)
