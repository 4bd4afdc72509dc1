--@include _lib.lua
-- The store topic's SKUs and cursor, read in one atomic step (_lib.lua hash_snapshot: a store never fed is
-- answered {EMPTY_EPOCH, 0} and nothing is created).
-- KEYS: 1 {s:X}:top:store, 2 {s:X}:log:store, 3 {s:X}:store. ARGV: 1 epoch to mint if needed.
-- Reply: {epoch, offset, sku1, value1, ...} (values as store_put.lua keeps them).
return hash_snapshot(KEYS[1], KEYS[2], KEYS[3], ARGV[1])
