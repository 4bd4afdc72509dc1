--@include _lib.lua
-- One SKU's values for a store, forwarded from the SKU's stock into the store's topic (syncd/storefeed.py;
-- docs/design.md §3, "Inventory"). The values are absolute and carry the version they were read at (the SKU
-- topic's epoch and offset), so a forward applies only if it is newer than the one stored: a replayed,
-- duplicated or overtaken forward changes nothing, and the store's view never goes back. An event (kind
-- store.sku, no origin) is appended only when a value changed. The forward's marker, if any, is dropped in
-- the same step: once this script ran, what the marked op changed is in the store's topic.
-- KEYS: 1 {s:X}:store, 2 {s:X}:top:store, 3 {s:X}:log:store, 4 {s:X}:due.
-- ARGV: 1 epoch, 2 channel, 3 topic, 4 maxlen, 5 maxage_ms, 6 maxbytes, 7 sku, 8 allot, 9 recall, 10 to
-- ('' none), 11 the SKU topic's epoch, 12 its offset, 13 marker ('' none).
-- {s:X}:store holds sku -> '<allot>|<recall>|<to>|<sku epoch>|<sku offset>'.
-- Reply: {1 when the forward was newer, event frame or ''}.
local sku, allot, recall, to = ARGV[7], fmt(tonumber(ARGV[8])), fmt(tonumber(ARGV[9])), ARGV[10]
local src_epoch, src_offset = ARGV[11], tonumber(ARGV[12])
if ARGV[13] ~= '' then
    redis.call('HDEL', KEYS[4], ARGV[13])
end
local cur = redis.call('HGET', KEYS[1], sku)
local changed = true
if cur then
    local a, r, t, e, o = string.match(cur, '^(%d+)|(%d+)|([^|]*)|([^|]*)|(%d+)$')
    if e == src_epoch and tonumber(o) >= src_offset then
        return {0, ''}
    end
    changed = not (a == allot and r == recall and t == to)
end
local topic = {meta = topic_read(KEYS[2]), empty = redis.call('EXISTS', KEYS[1]) == 0}
redis.call('HSET', KEYS[1], sku, allot .. '|' .. recall .. '|' .. to .. '|' .. src_epoch .. '|' .. fmt(src_offset))
if not changed then
    return {1, ''}
end
local p = {epoch = ARGV[1], channel = ARGV[2], topic = ARGV[3], kind = 'store.sku', maxlen = tonumber(ARGV[4]),
    maxage_ms = tonumber(ARGV[5]), maxbytes = tonumber(ARGV[6])}
local data = mp_map({'allot', 'recall', 'to', 'sku'}, {allot = mp(tonumber(allot)), recall = mp(tonumber(recall)),
    to = to == '' and MP_NIL or mp(to), sku = mp(sku)})
local _, body = append_event(KEYS[2], KEYS[3], p, data, nil, topic)
return {1, body}
