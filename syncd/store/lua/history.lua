--@include _lib.lua
-- The events of a topic after a cursor (epoch, offset), oldest first, at most ARGV[3] of them.
-- KEYS: 1 top (epoch, offset, fresh), 2 log (stream), 3 (optional) the key holding the topic's state.
-- ARGV: 1 epoch, 2 offset, 3 limit.
-- Reply: {0} when the cursor cannot be honoured (unknown topic, other epoch, cursor ahead of the topic, or the
-- first needed entry trimmed away, or the topic written in another generation of the shard): the caller sends
-- a reset snapshot. Else {1, event, event, ...}.
-- A cursor of the empty epoch ('-', protocol.frames.EMPTY_EPOCH) at offset 0 names the empty state: it is
-- honoured while the topic has neither metadata nor state, and by a history that started from the empty
-- state ('fresh'), whose events it receives from offset 1 (the caller learns the epoch from them).
-- Read-only: it never mints an epoch.
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'offset', 'fresh', 'gen')
if meta[1] and meta[4] ~= shard_gen() then -- written in another generation (_lib.lua shard_gen)
    return {0}
end
local after = tonumber(ARGV[2])
if ARGV[1] == '-' then
    if after ~= 0 then
        return {0}
    end
    if not meta[1] then
        if KEYS[3] and redis.call('EXISTS', KEYS[3]) == 1 then
            return {0}
        end
        return {1}
    end
    if meta[3] ~= '1' then
        return {0}
    end
elseif not meta[1] or meta[1] ~= ARGV[1] then
    return {0}
end
local current = tonumber(meta[2])
if after > current then
    return {0}
end
if after == current then
    return {1}
end
local first = string.format('%d-0', after + 1)
local entries = redis.call('XRANGE', KEYS[2], first, '+', 'COUNT', ARGV[3])
if #entries == 0 or entries[1][1] ~= first then
    return {0}
end
local reply = {1}
for i, entry in ipairs(entries) do
    reply[i + 1] = entry[2][2]
end
return reply
