--@include _lib.lua
-- The cart's state and the topic's cursor, read in one atomic step, so no event can fall between the snapshot
-- and the live stream (docs/traps.md §7). Mints the topic's epoch when it has none yet (a snapshot needs a cursor).
-- KEYS: 1 {m:M}:top:cart, 2 {m:M}:log:cart, 3 {m:M}:cart. ARGV: 1 epoch to mint if needed.
-- Reply: {epoch, offset, sku1, line1, sku2, line2, ...} (lines as stored: their wire shape).
local epoch, offset = topic_meta(KEYS[1], KEYS[2], ARGV[1])
local reply = {epoch, offset}
local flat = redis.call('HGETALL', KEYS[3])
for i = 1, #flat do
    reply[#reply + 1] = flat[i]
end
return reply
