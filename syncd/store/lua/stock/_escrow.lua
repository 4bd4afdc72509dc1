-- _escrow.lua: what stock.recall and stock.yield share (protocol/stock.py is the reference). Their KEYS are the
-- other stock ops' (stock_op) followed by the SKU's recall hash:
--   recall  hash  <store> -> '<qty>|<to>': units ops ask the store to give back, to the pool (to '') or to the
--                 store <to> (a rebalance). Nothing moves until the store's till yields them: the hub never
--                 takes escrow from a store, which may be offline and selling it.
-- KEYS: 1 dedup, 2 stock, 3 holds, 4 bought, 5 exp, 6 top, 7 log, 8 recall (9: the watermark, standalone).
local function escrow_op()
    local p = op_params(8)
    local K = {dedup = KEYS[1], stock = KEYS[2], holds = KEYS[3], bought = KEYS[4], exp = KEYS[5],
        top = KEYS[6], log = KEYS[7], recall = KEYS[8]}
    return p, K, dedup_check(K.dedup, p)
end

-- The start of recall and yield: dedup, then the store and target arguments (a store id, and '' or another
-- store id), then the stock. Returns p, K, store, qty, to, S, reply; when reply is set the script returns it.
local function escrow_start(kind, lo)
    local p, K, dup = escrow_op()
    if dup then
        return p, K, nil, nil, nil, nil, dup
    end
    local store, qty, to = arg(0), qty_arg(1, lo), arg(2)
    local why = nil
    if not (stock_common(p) and check_key(store) and qty and type(to) == 'string' and #to <= 64) then
        why = kind .. ' arguments failed the store invariants'
    elseif to == store then
        why = 'a rebalance moves units to another store'
    end
    if why then
        return p, K, nil, nil, nil, nil, reject(K.dedup, p, 'bad_args', why)
    end
    return p, K, store, qty, to, stock_load(K), nil
end

-- The recall pending on a store: qty, to (0, nil when none).
local function recall_get(K, store)
    local raw = redis.call('HGET', K.recall, store)
    if not raw then
        return 0, nil
    end
    local qty, to = string.match(raw, '^(%d+)|(.*)$')
    return tonumber(qty), to
end

local function recall_set(K, store, qty, to)
    if qty == 0 then
        redis.call('HDEL', K.recall, store)
    else
        redis.call('HSET', K.recall, store, fmt(qty) .. '|' .. to)
    end
end
