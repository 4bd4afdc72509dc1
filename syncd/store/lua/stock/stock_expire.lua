--@include _lib.lua _stock.lua
-- Returns the SKU's expired holds to the pool, at most ARGV[7] of them, in one atomic step: a hold leaves
-- 'holds' in the step that returns it, so it returns exactly once however many hubs sweep at the same time,
-- and a hub killed mid-sweep leaves every hold either returned or still held (docs/design.md §3).
-- KEYS: 1 stock, 2 holds, 3 bought, 4 exp, 5 top, 6 log. ARGV: 1 epoch, 2 channel, 3 topic, 4 maxlen,
-- 5 maxage_ms, 6 maxbytes, 7 limit. Reply: {holds returned, event frame or ''}; one event (kind
-- stock.expire, no origin) for all of them.
local K = {stock = KEYS[1], holds = KEYS[2], bought = KEYS[3], exp = KEYS[4], top = KEYS[5], log = KEYS[6]}
local due = redis.call('ZRANGEBYSCORE', K.exp, '-inf', fmt(now_ms()), 'LIMIT', 0, tonumber(ARGV[7]))
local S = stock_load(K)
local returned = 0
for _, rid in ipairs(due) do
    local h = hold_get(K, rid)
    if h then
        hold_return(K, S, rid, h)
        returned = returned + 1
    else
        redis.call('ZREM', K.exp, rid) -- committed or released already
    end
end
if returned == 0 then
    return {0, ''}
end
if not invariant(S) then
    return redis.error_reply('stock_expire: the stock invariant does not hold')
end
stock_save(K, S)
local p = {epoch = ARGV[1], channel = ARGV[2], topic = ARGV[3], kind = 'stock.expire', maxlen = tonumber(ARGV[4]),
    maxage_ms = tonumber(ARGV[5]), maxbytes = tonumber(ARGV[6])}
local _, body = append_event(K.top, K.log, p, stock_view(S), nil, {meta = topic_read(K.top)})
return {returned, body}
