--@include _lib.lua _stock.lua
-- stock.adjust(sku, delta, reason): a stock take's correction of on_hand, through the pool (a shortfall can
-- only come from the pool: an allotment belongs to its store, a hold to its shopper). Ops only. The event is
-- the stock view plus "reason", so the topic's history says why on_hand changed.
local p, K, dup = stock_op()
if dup then
    return dup
end
local delta, reason = tonumber(arg(0)), arg(1)
if not (stock_common(p) and is_int(delta, -MAX_QTY, MAX_QTY) and type(reason) == 'string' and #reason > 0
        and #reason <= 800) then
    return reject(K.dedup, p, 'bad_args', 'stock.adjust arguments failed the store invariants')
end
local S = stock_load(K)
if -delta > S.pool then
    return reject(K.dedup, p, 'insufficient_stock', 'the pool holds fewer units than the shortfall')
end
S.on_hand = S.on_hand + delta
S.pool = S.pool + delta
if not invariant(S) then
    return reject(K.dedup, p, 'internal', 'the op would break the stock invariant')
end
local topic = {meta = topic_read(K.top), empty = S.fresh}
stock_save(K, S)
-- stock_view is a fixmap of 5 entries (0x85): one more entry makes it 0x86, followed by the same entries.
local view = stock_view(S)
local data = string.char(0x86) .. string.sub(view, 2) .. mp('reason') .. mp(reason)
return commit(K.dedup, K.top, K.log, p, nil, data, nil, topic)
