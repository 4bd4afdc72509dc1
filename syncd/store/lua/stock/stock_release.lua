--@include _lib.lua _stock.lua
-- stock.release(sku, rid): the hold returns to the pool (an expired one not swept yet included).
local p, K, rid, h, reply = hold_op('stock.release')
if reply then
    return reply
end
local S = stock_load(K)
hold_return(K, S, rid, h)
return stock_finish(K, p, S, nil)
