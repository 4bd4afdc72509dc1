-- Before ops that may change a store's allotment or recall run on their SKUs, the hub marks them here, in the
-- store's slot: '<sku>|<client_id>|<seq>' -> the time marked (ms). store_put.lua drops a marker once its op's
-- effect is forwarded; a marker left by a hub that died in between is found by the sweep, which forwards it
-- once the op is settled (syncd/storefeed.py). A script (not a bare HSET) so the hub's durability wait covers
-- it like any write. One call marks every op of a batch for this store.
-- KEYS: 1 {s:X}:due. ARGV: 1 now (ms), 2.. markers.
for i = 2, #ARGV do
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[1])
end
return #ARGV - 1
