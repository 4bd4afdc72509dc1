--@include _lib.lua
-- The cart's state and the topic's cursor, read in one atomic step, so no event can fall between the snapshot
-- and the live stream (docs/traps.md §7). A topic with neither metadata nor lines is answered {EMPTY_EPOCH, 0} and
-- nothing is created: subscribing to a cart never written costs no key. Lines without metadata (lost with
-- it) need a real epoch to be resumed from, so one is minted then (not fresh: its offset 0 is not empty).
-- A topic written in another generation of the shard (_lib.lua shard_gen) gets a new epoch here too (fresh
-- when the cart is empty), so a snapshot never names a history the new primary may have rewritten.
-- KEYS: 1 {m:M}:top:cart, 2 {m:M}:log:cart, 3 {m:M}:cart. ARGV: 1 epoch to mint if needed.
-- Reply: {epoch, offset, sku1, line1, sku2, line2, ...} (lines as stored: their wire shape).
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'offset', 'gen')
local flat = redis.call('HGETALL', KEYS[3])
local epoch, offset = meta[1], tonumber(meta[2])
if epoch and meta[3] ~= shard_gen() then -- written in another generation (_lib.lua shard_gen): a new epoch
    epoch, offset = ARGV[1], 0
    topic_mint(KEYS[1], KEYS[2], epoch, #flat == 0)
elseif not epoch then
    if #flat == 0 then
        return {EMPTY_EPOCH, 0}
    end
    epoch, offset = ARGV[1], 0
    topic_mint(KEYS[1], KEYS[2], epoch, false)
end
local reply = {epoch, offset}
for i = 1, #flat do
    reply[#reply + 1] = flat[i]
end
return reply
