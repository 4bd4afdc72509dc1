--@include _lib.lua _stock.lua
-- stock.reserve(sku, channel, member, qty, ttl_ms): hold qty units from the pool until now + ttl_ms, atomic
-- against the pool, the channel's quota and the member's purchase limit (in that order, as the reference).
-- Result {"rid": "<client_id>/<seq>"}: the id commit and release name.
local p, K, dup = stock_op()
if dup then
    return dup
end
local channel, member, qty, ttl = arg(0), arg(1), qty_arg(2, 1), tonumber(arg(3))
if not (stock_common(p) and check_key(channel) and check_key(member) and qty
        and is_int(ttl, 1, 604800000)) then
    return reject(K.dedup, p, 'bad_args', 'stock.reserve arguments failed the store invariants')
end
local S = stock_load(K)
if qty > S.pool then
    return reject(K.dedup, p, 'insufficient_stock', 'not enough units left in the pool')
end
local taken = S.t[channel] or 0
if S.q[channel] and taken + qty > S.q[channel] then
    return reject(K.dedup, p, 'quota_exceeded', 'the channel has used up its quota of this SKU')
end
local bought = tonumber(redis.call('HGET', K.bought, member) or '0')
if S.limit > 0 and bought + qty > S.limit then
    return reject(K.dedup, p, 'purchase_limit_exceeded', 'the member is at their purchase limit for this SKU')
end
local rid = p.client .. '/' .. fmt(p.seq)
local untl = now_ms() + ttl
S.pool = S.pool - qty
S.held = S.held + qty
S.t[channel] = taken + qty
redis.call('HSET', K.bought, member, fmt(bought + qty))
redis.call('HSET', K.holds, rid, fmt(qty) .. '|' .. channel .. '|' .. member .. '|' .. fmt(untl))
redis.call('ZADD', K.exp, fmt(untl), rid)
return stock_finish(K, p, S, mp_map({'rid', 'until'}, {rid = mp(rid), ['until'] = mp(untl)}))
