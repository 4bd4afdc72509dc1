--@include _lib.lua _stock.lua _escrow.lua
-- stock.yield(sku, store, qty, to): the store's till gives back up to qty of its allotment, answering the recall
-- whose target is to. Moves min(qty, recall, allotment) from the allotment to the pool or to the target store:
-- never below zero, never more than recalled, so every till of the store may answer and a replay (dedup) or a
-- second answer moves nothing more. A recall redirected meanwhile (another to) is not the one answered: 0.
-- Result {"moved": n}.
local p, K, store, qty, to, S, reply = escrow_start('stock.yield', 1)
if reply then
    return reply
end
local rqty, rto = recall_get(K, store)
local moved = 0
if rto == to then
    moved = math.max(0, math.min(qty, rqty, S.a[store] or 0))
end
if moved > 0 then
    S.a[store] = S.a[store] - moved
    if to ~= '' then
        S.a[to] = (S.a[to] or 0) + moved
    else
        S.pool = S.pool + moved
    end
end
return stock_finish(K, p, S, mp_map({'moved'}, {moved = mp(moved)}), function()
    if moved > 0 then
        recall_set(K, store, rqty - moved, rto)
    end
end)
