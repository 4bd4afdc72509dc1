--@include _lib.lua _stock.lua _escrow.lua
-- stock.recall(sku, store, qty, to): ops ask store to give back qty of its allotment, to the pool or to the
-- store to (a rebalance); qty 0 withdraws the recall. It replaces the store's pending recall. Nothing moves
-- here: the store's till answers with stock.yield. Ops only (the hub checks the token).
local p, K, store, qty, to, S, reply = escrow_start('stock.recall', 0)
if reply then
    return reply
end
return stock_finish(K, p, S, nil, function()
    recall_set(K, store, qty, to)
end)
