-- Before an op that may change a store's allotment or recall runs on its SKU, the hub marks it here, in the
-- store's slot: '<sku>|<client_id>|<seq>' -> the time marked (ms). store_put.lua drops the marker once the
-- op's effect is forwarded; a marker left by a hub that died in between is found by the sweep, which forwards
-- it once the op is settled (syncd/storefeed.py). A script (not a bare HSET) so the hub's durability wait
-- covers it like any write. KEYS: 1 {s:X}:due. ARGV: 1 marker, 2 now (ms).
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
