--@include _lib.lua _stock.lua
-- The SKU's full state for operators (the ops HTTP API), read in one atomic step: the stock hash, the number
-- of active holds and the pending recalls. Read-only; a SKU never written answers empty lists.
-- KEYS: 1 {sku:S}:stock, 2 {sku:S}:holds, 3 {sku:S}:recall. Reply: {stock hash flat, holds count, recall flat}.
return {redis.call('HGETALL', KEYS[1]), redis.call('HLEN', KEYS[2]), redis.call('HGETALL', KEYS[3])}
