--@include _lib.lua _stock.lua
-- The SKU's stock view and the topic's cursor, read in one atomic step (docs/traps.md §7). A SKU never written
-- is answered {EMPTY_EPOCH, 0} and nothing is created.
-- KEYS: 1 {sku:S}:top:stock, 2 {sku:S}:log:stock, 3 {sku:S}:stock. ARGV: 1 epoch to mint if needed.
-- Reply: {epoch, offset, view} (view: MessagePack, the event data's shape).
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'offset')
local S = stock_load({stock = KEYS[3]})
local epoch, offset = meta[1], tonumber(meta[2])
if not epoch then
    if S.fresh then
        return {EMPTY_EPOCH, 0}
    end
    epoch, offset = ARGV[1], 0
    topic_mint(KEYS[1], KEYS[2], epoch, false)
end
return {epoch, offset, stock_view(S)}
