-- _stock.lua: the stock rules shared by the stock_* op scripts (protocol/stock.py is the reference).
--
-- One SKU's stock is a bounded counter split into buckets (docs/design.md §3, "Inventory"). Keys, all in the
-- SKU's slot {sku:S}:
--   stock   hash  on_hand, pool, sold, held (Σ active holds), limit (per-member purchase limit, 0 none),
--                 q:<channel> quota, t:<channel> units the channel holds or sold, a:<store> allotment
--   holds   hash  <rid> -> '<qty>|<channel>|<member>|<until ms>' (rid = '<client_id>/<seq>' of the reserve)
--   bought  hash  <member> -> units the member holds or bought (their purchase limit counts these)
--   exp     zset  <rid> scored by its until: what a sweep returns once expired
-- Invariant, checked before any write (an op that would break it is refused, never half-applied):
--   on_hand = pool + Σ allot + held, every term >= 0.
-- Op arguments start at ARGV[OP_ARG] (the common ones come first, _lib.lua op_params).
local OP_ARG = 14
local MAX_QTY = 1000000

local function stock_common(p)
    return type(p.client) == 'string' and #p.client > 0 and is_int(p.seq, 1, 9007199254740991)
end

-- A store, channel or member id (protocol.topics.KEY_PATTERN, checked in full by the hub).
local function check_key(k)
    return type(k) == 'string' and #k > 0 and #k <= 64
end

local function stock_op()
    local p = op_params(7)
    local K = {dedup = KEYS[1], stock = KEYS[2], holds = KEYS[3], bought = KEYS[4], exp = KEYS[5],
        top = KEYS[6], log = KEYS[7]}
    return p, K, dedup_check(K.dedup, p)
end

local function arg(i)
    return ARGV[OP_ARG + i]
end

local function qty_arg(i, lo)
    local q = tonumber(arg(i))
    if is_int(q, lo, MAX_QTY) then
        return q
    end
    return nil
end

local function stock_load(K)
    local S = {on_hand = 0, pool = 0, sold = 0, held = 0, limit = 0, q = {}, t = {}, a = {}}
    local flat = redis.call('HGETALL', K.stock)
    for i = 1, #flat, 2 do
        local f, v = flat[i], tonumber(flat[i + 1])
        local kind, name = string.sub(f, 1, 2), string.sub(f, 3)
        if kind == 'q:' then
            S.q[name] = v
        elseif kind == 't:' then
            S.t[name] = v
        elseif kind == 'a:' then
            S.a[name] = v
        else
            S[f] = v
        end
    end
    S.fresh = #flat == 0
    return S
end

local function invariant(S)
    local sum = S.pool + S.held
    if S.pool < 0 or S.held < 0 or S.sold < 0 then
        return false
    end
    for _, v in pairs(S.a) do
        if v < 0 then
            return false
        end
        sum = sum + v
    end
    for _, v in pairs(S.t) do
        if v < 0 then
            return false
        end
    end
    return sum == S.on_hand
end

-- The event's data and a snapshot's state: on_hand, pool, sold, available to promise per channel ('*': a
-- channel without a quota) and the allotments. Small on purpose: thousands of shoppers watch it in a sale.
local function stock_view(S)
    local atp = {['*'] = mp(S.pool)}
    for ch, cap in pairs(S.q) do
        atp[ch] = mp(math.max(0, math.min(S.pool, cap - (S.t[ch] or 0))))
    end
    local allot = {}
    for store, v in pairs(S.a) do
        allot[store] = mp(v)
    end
    return mp_map({'on_hand', 'pool', 'sold', 'atp', 'allot'}, {on_hand = mp(S.on_hand), pool = mp(S.pool),
        sold = mp(S.sold), atp = mp_map(sorted_keys(atp), atp), allot = mp_map(sorted_keys(allot), allot)})
end

local function stock_save(K, S)
    local fields = {'on_hand', fmt(S.on_hand), 'pool', fmt(S.pool), 'sold', fmt(S.sold), 'held', fmt(S.held),
        'limit', fmt(S.limit)}
    for prefix, t in pairs({['q:'] = S.q, ['t:'] = S.t, ['a:'] = S.a}) do
        for name, v in pairs(t) do
            fields[#fields + 1], fields[#fields + 2] = prefix .. name, fmt(v)
        end
    end
    redis.call('HSET', K.stock, unpack(fields))
end

-- Check the invariant, write the stock hash, append the event: the op's last step.
local function stock_finish(K, p, S, result_enc)
    if not invariant(S) then
        return reject(K.dedup, p, 'internal', 'the op would break the stock invariant')
    end
    local topic = {meta = topic_read(K.top), empty = S.fresh}
    stock_save(K, S)
    return commit(K.dedup, K.top, K.log, p, result_enc, stock_view(S), nil, topic)
end

-- A hold as stored: {qty, channel, member, expires}, or nil.
local function hold_get(K, rid)
    local raw = redis.call('HGET', K.holds, rid)
    if not raw then
        return nil
    end
    local qty, ch, member, untl = string.match(raw, '^(%d+)|([^|]*)|([^|]*)|(%d+)$')
    return {qty = tonumber(qty), channel = ch, member = member, expires = tonumber(untl)}
end

local function hold_drop(K, rid)
    redis.call('HDEL', K.holds, rid)
    redis.call('ZREM', K.exp, rid)
end

-- A hold goes back to the pool: it no longer counts against its channel's quota nor its member.
local function hold_return(K, S, rid, h)
    hold_drop(K, rid)
    S.held = S.held - h.qty
    S.pool = S.pool + h.qty
    S.t[h.channel] = (S.t[h.channel] or 0) - h.qty
    redis.call('HINCRBY', K.bought, h.member, -h.qty)
end

-- The start of commit and release: dedup, checks, then the hold rid names (or unknown_reservation).
-- Returns p, K, rid, hold, reply; when reply is set the script returns it as it is.
local function hold_op(kind)
    local p, K, dup = stock_op()
    if dup then
        return p, K, nil, nil, dup
    end
    local rid = arg(0)
    if not stock_common(p) then
        return p, K, rid, nil, reject(K.dedup, p, 'bad_args', kind .. ' arguments failed the store invariants')
    end
    local h = hold_get(K, rid)
    if not h then
        return p, K, rid, nil, reject(K.dedup, p, 'unknown_reservation', 'no active reservation with this id')
    end
    return p, K, rid, h, nil
end
