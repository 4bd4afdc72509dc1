--@include _lib.lua _stock.lua
-- stock.commit(sku, rid): the hold is sold. An expired hold cannot be (it returns to the pool instead).
local p, K, rid, h, reply = hold_op('stock.commit')
if reply then
    return reply
end
if h.expires <= now_ms() then
    return reject(K.dedup, p, 'reservation_expired', 'the reservation expired before its commit')
end
local S = stock_load(K)
hold_drop(K, rid)
S.held = S.held - h.qty
S.on_hand = S.on_hand - h.qty
S.sold = S.sold + h.qty
return stock_finish(K, p, S, nil)
