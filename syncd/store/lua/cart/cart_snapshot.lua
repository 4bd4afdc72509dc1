--@include _lib.lua
-- The cart's lines and the topic's cursor, read in one atomic step (_lib.lua hash_snapshot: a cart never
-- written is answered {EMPTY_EPOCH, 0} and nothing is created; lost metadata or another generation of the
-- shard gets a new epoch).
-- KEYS: 1 {m:M}:top:cart, 2 {m:M}:log:cart, 3 {m:M}:cart. ARGV: 1 epoch to mint if needed.
-- Reply: {epoch, offset, sku1, line1, sku2, line2, ...} (lines as stored: their wire shape).
return hash_snapshot(KEYS[1], KEYS[2], KEYS[3], ARGV[1])
