--@include _lib.lua _stock.lua
-- stock.reserve(sku, channel, member, qty, ttl_ms | until | clearing): hold qty units from the pool until
-- the hold's expiry, atomic against the pool, the channel's quota and the member's purchase limit (in that
-- order, as the reference). Result {"rid": "<client_id>/<seq>", "until": <ms>}: the id commit and release
-- name, and the expiry.
-- Expiry ARGV (syncd/types/holds.py): ttl_ms or '', an absolute until or '', then (both empty) the brand's
-- clearing instants around the hub's clock: the first one after this script's clock is the expiry. Decided
-- here, with the clock expiry is judged by, and recorded: a replay is answered with the same instant.
local MAX_TTL_MS = 604800000
local p, K, dup = stock_op()
if dup then
    return dup
end
local channel, member, qty = arg(0), arg(1), qty_arg(2, 1)
local now = now_ms()
local untl = nil
if arg(3) ~= '' then
    local ttl = tonumber(arg(3))
    if is_int(ttl, 1, MAX_TTL_MS) then
        untl = now + ttl
    end
elseif arg(4) ~= '' then
    untl = tonumber(arg(4))
else
    local i = 5
    while arg(i) do
        local c = tonumber(arg(i))
        if c and c > now then
            untl = c
            break
        end
        i = i + 1
    end
end
if not (stock_common(p) and check_key(channel) and check_key(member) and qty) then
    return reject(K.dedup, p, 'bad_args', 'stock.reserve arguments failed the store invariants')
end
if not is_int(untl, now + 1, now + MAX_TTL_MS) then
    return reject(K.dedup, p, 'bad_args', 'the hold must end after now and within 7 days')
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
S.pool = S.pool - qty
S.held = S.held + qty
S.t[channel] = taken + qty
local function write()
    redis.call('HSET', K.bought, member, fmt(bought + qty))
    redis.call('HSET', K.holds, rid, fmt(qty) .. '|' .. channel .. '|' .. member .. '|' .. fmt(untl))
    redis.call('ZADD', K.exp, fmt(untl), rid)
end
return stock_finish(K, p, S, mp_map({'rid', 'until'}, {rid = mp(rid), ['until'] = mp(untl)}), write)
