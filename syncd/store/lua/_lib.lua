-- _lib.lua: the prelude shared by every op script (the loader prepends it; it is never run alone).
--
-- What every op script does, in this order (docs/traps.md §3: Lua has no rollback, so nothing is written before
-- every check has passed):
--   1. dedup of (client_id, seq) against the entity's dedup hash;
--   2. validation and the domain rules, reading only;
--   3. the writes of the op;
--   4. the dedup record, the topic offset and the event appended to the topic's stream;
--   5. PUBLISH of the same event bytes for the hubs' fan-out.
--
-- Numbers: Lua 5.1 numbers are doubles, exact for integers up to 2^53 (the protocol's bound for seq, hlc,
-- offsets). They are turned into strings only with string.format('%d'): tostring() and '..' use '%.14g' and
-- would print a large seq as 9.007199254741e+15.
--
-- Encoding: values are MessagePack. cmsgpack packs scalars; maps and arrays are assembled here with explicit
-- headers, because cmsgpack encodes an empty table as an array and the wire needs empty maps ({"lines": {}}).
-- Strings are compared by their bytes (str_lt), never with '<', which uses the server's locale (strcoll).

local mp = cmsgpack.pack
local MP_NIL = '\192'

local function fmt(n)
    return string.format('%d', n)
end

local function mp_header(n, fix, b16, b32)
    if n < 16 then
        return string.char(fix + n)
    elseif n < 65536 then
        return string.char(b16, math.floor(n / 256), n % 256)
    end
    return string.char(b32, math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256,
        math.floor(n / 256) % 256, n % 256)
end

-- An array from already-encoded elements.
local function mp_arr(items)
    return mp_header(#items, 0x90, 0xdc, 0xdd) .. table.concat(items)
end

-- A map from a list of string keys and a table key -> already-encoded value; keys keep the given order.
local function mp_map(keys, enc)
    local parts = {}
    for i = 1, #keys do
        parts[#parts + 1] = mp(keys[i])
        parts[#parts + 1] = enc[keys[i]]
    end
    return mp_header(#keys, 0x80, 0xde, 0xdf) .. table.concat(parts)
end

local function str_lt(a, b)
    local la, lb = #a, #b
    for i = 1, math.min(la, lb) do
        local x, y = string.byte(a, i), string.byte(b, i)
        if x ~= y then
            return x < y
        end
    end
    return la < lb
end

-- (hlc, client_id, seq) order: the set winner, the attrs winner and the canonical order of a line's dots.
local function key_lt(h1, c1, s1, h2, c2, s2)
    if h1 ~= h2 then
        return h1 < h2
    end
    if c1 ~= c2 then
        return str_lt(c1, c2)
    end
    return s1 < s2
end

local function sorted_keys(t)
    local keys = {}
    for k in pairs(t) do
        keys[#keys + 1] = k
    end
    table.sort(keys, str_lt)
    return keys
end

local function is_int(v, lo, hi)
    return type(v) == 'number' and v == math.floor(v) and v >= lo and v <= hi
end

-- An outcome record: [ok, code, message, result, conflict], the bytes stored for dedup and sent to Python.
local function record(ok, code, message, result_enc, conflict_enc)
    if ok and not code and not message then -- the usual outcome, without a table: [true, nil, '', ...]
        return '\149\195\192\160' .. (result_enc or MP_NIL) .. (conflict_enc or MP_NIL)
    end
    return mp_arr({mp(ok), code and mp(code) or MP_NIL, mp(message or ''), result_enc or MP_NIL,
        conflict_enc or MP_NIL})
end

-- record(true, nil, '', nil, nil), spelled out: a constant, not re-encoded by every call of every script.
local PLAIN_OK = '\149\195\192\160\192\192'

-- The common ARGV of every op script; op-specific arguments follow from ARGV[14].
-- nkeys: the op's own KEYS; a KEYS[nkeys + 1], when given, is the client's watermark hash (standalone Redis
-- only: on a cluster it lives in another slot), raised in the same atomic step as the op's dedup record.
local function op_params(nkeys)
    local p = {
        client = ARGV[1],
        seq = tonumber(ARGV[2]),
        settled = ARGV[3] == '1',
        hlc = tonumber(ARGV[4]),
        ctx = cmsgpack.unpack(ARGV[5]),
        dedup_ms = tonumber(ARGV[6]),
        maxlen = tonumber(ARGV[7]),
        epoch = ARGV[8],
        channel = ARGV[9],
        topic = ARGV[10],
        kind = ARGV[11],
        maxage_ms = tonumber(ARGV[12]),
        maxbytes = tonumber(ARGV[13]),
        wkey = KEYS[nkeys + 1],
    }
    return p
end

-- Dedup hash of (client, entity): 'max' = the client's highest seq settled here; 'r:<seq>' = the record of an
-- outcome that is not a plain ok (a rejection, a conflict), kept as long as the hash; 'k:<seq % RING>' =
-- '<seq>|<record>' of a plain ok. A slot is overwritten only by a later op of the same client on the same
-- entity whose seq is RING higher, so the result of a plain ok is kept while the client's seq is below
-- seq + RING, and the ring bounds what one (client, entity) pair holds (PROTOCOL.md §7.3).
-- Why RING = 1024, the protocol's largest max_batch (§7.6): a client that still waits for an op's result
-- holds it in its in-flight window, at most max_batch ops, all sent within RING seqs of each other; an op
-- replayed from further back is one whose sender lost its memory of it (a restart), for which only applied
-- versus rejected matters, and that the hash keeps for its whole retention.
local RING = 1024

-- Step 1. A reply when (client, seq) was already settled for this entity, else nil.
--
-- seq <= max: the op was applied (or rejected) here before: answer with its record, or a plain ok.
-- settled: the caller knows from the client's watermark that seq was settled, yet this entity has no trace of
-- it (the dedup hash expired after its retention): answer a plain ok dup, never apply the op a second time.
-- The TTL refresh is a write on purpose: a WAITAOF after it also covers the original write (the AOF is one
-- sequence per node), so a dup is acked only once the original outcome is durable.
-- The client's watermark, raised to seq when seq follows it: never past an op that is not settled (if an
-- earlier op of a pipeline failed, the watermark stays below it and the client's retry is applied, not
-- answered as a duplicate).
local function settle_watermark(p)
    if p.wkey then
        local last = tonumber(redis.call('HGET', p.wkey, 'last') or '0')
        if last == p.seq - 1 then
            redis.call('HSET', p.wkey, 'last', fmt(p.seq))
        end
    end
end

local function dedup_check(dkey, p)
    local max = tonumber(redis.call('HGET', dkey, 'max') or '0')
    if p.seq > max and not p.settled then
        return nil
    end
    local s = fmt(p.seq)
    local stored = redis.call('HGET', dkey, 'r:' .. s)
    if not stored then
        local slot = redis.call('HGET', dkey, 'k:' .. fmt(p.seq % RING))
        if slot and string.sub(slot, 1, #s + 1) == s .. '|' then
            stored = string.sub(slot, #s + 2)
        end
    end
    redis.call('PEXPIRE', dkey, p.dedup_ms)
    settle_watermark(p)
    return {stored or PLAIN_OK, 1, 0, ''}
end

local function dedup_record(dkey, p, rec, plain)
    local s = fmt(p.seq)
    if plain then
        redis.call('HSET', dkey, 'max', s, 'k:' .. fmt(p.seq % RING), s .. '|' .. rec)
    else
        redis.call('HSET', dkey, 'max', s, 'r:' .. s, rec)
    end
    redis.call('PEXPIRE', dkey, p.dedup_ms)
    settle_watermark(p)
end

-- A rejection is a result: recorded so a replay answers the same, and nothing else is written.
local function reject(dkey, p, code, message)
    local rec = record(false, code, message, nil, nil)
    dedup_record(dkey, p, rec, false)
    return {rec, 0, 0, ''}
end

local function now_ms()
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The shard's generation: the replication id of the node running the script (INFO replication,
-- master_replid). Redis gives a primary a new one whenever its history may have been rewritten: a replica
-- promoted by a failover, a primary restarted (from an AOF that may hold less than it had acknowledged), a
-- node resynchronised from another. Every topic records the generation it was written in ('gen', set with
-- its epoch by topic_mint); a topic written in another generation gets a new epoch before its next event
-- (topic_read), a new epoch on its next snapshot, and no history (history.lua): subscribers then take a
-- reset snapshot instead of trusting offsets the new primary may reuse for other events (docs/traps.md §4c).
-- Read by the script itself, not passed in ARGV by the hub: a hub whose slot map is stale would pass the
-- generation of the old primary, and its command, redirected (MOVED) to the new one, would pass the check.
-- Read once per script run (INFO costs a few microseconds).
local shard_gen_value = nil
local function shard_gen()
    if not shard_gen_value then
        local info = redis.call('INFO', 'replication')
        local at = string.find(info, 'master_replid:', 1, true) -- a plain search: the pattern scan cost more
        shard_gen_value = at and string.match(info, '^%w+', at + 14) or ''
    end
    return shard_gen_value
end

-- The epoch of a topic without state or history, for which nothing is stored (protocol.frames.EMPTY_EPOCH):
-- a snapshot of it answers the cursor {EMPTY_EPOCH, 0}, and minted epochs never equal it.
local EMPTY_EPOCH = '-'

-- The topic's metadata, read before the op writes anything: {epoch, offset, head_at, log_bytes, head_b,
-- state_bytes, gen}; epoch is nil when the topic is unknown (never written, or lost with its data) and when it
-- was written in another generation (shard_gen: it then starts a new epoch, keeping only state_bytes). See trim_head
-- for head_at, log_bytes and head_b. state_bytes: the encoded size of the topic's state, kept by the scripts
-- of a type that bounds it (carts); here because the op reads and writes this hash anyway.
local function topic_read(topkey)
    local meta = redis.call('HMGET', topkey, 'epoch', 'offset', 'head_at', 'log_bytes', 'head_b', 'state_bytes',
        'gen')
    if meta[1] and meta[7] ~= shard_gen() then
        return {false, false, false, false, false, meta[6]} -- written in another generation: a new epoch
    end
    return meta
end

-- Creates an unknown topic under a new epoch at offset 0, dropping any stale stream: after a total loss every
-- old cursor then names an epoch that no longer exists and gets a reset. fresh: the topic's state is empty at
-- offset 0, so a cursor of the empty epoch (a device that saw the topic without state) continues into this
-- history from offset 1 instead of needing a reset.
-- The topic hash may hold an older epoch's fields (a new generation): they go, all but the state's size.
local function topic_mint(topkey, logkey, epoch, fresh)
    redis.call('DEL', logkey)
    redis.call('HDEL', topkey, 'fresh', 'head_at', 'head_b', 'log_bytes')
    if fresh then
        redis.call('HSET', topkey, 'epoch', epoch, 'offset', '0', 'gen', shard_gen(), 'fresh', '1')
    else
        redis.call('HSET', topkey, 'epoch', epoch, 'offset', '0', 'gen', shard_gen())
    end
end

-- A snapshot of a topic whose state is one hash (a cart's lines, a store's SKUs), read in one atomic step with
-- its cursor, so no event can fall between the snapshot and the live stream (docs/traps.md §7). A topic with
-- neither metadata nor state is answered {EMPTY_EPOCH, 0} and nothing is created (subscribing costs no key);
-- state without metadata (lost with it) needs a real epoch to be resumed from, so one is minted then (not
-- fresh: its offset 0 is not empty); a topic written in another generation of the shard (shard_gen) gets a new
-- epoch too (fresh when the state is empty), so a snapshot never names a history a new primary may have
-- rewritten. Reply: {epoch, offset, field1, value1, ...}.
local function hash_snapshot(topkey, logkey, statekey, new_epoch)
    local meta = redis.call('HMGET', topkey, 'epoch', 'offset', 'gen')
    local flat = redis.call('HGETALL', statekey)
    local epoch, offset = meta[1], tonumber(meta[2])
    if epoch and meta[3] ~= shard_gen() then
        epoch, offset = new_epoch, 0
        topic_mint(topkey, logkey, epoch, #flat == 0)
    elseif not epoch then
        if #flat == 0 then
            return {EMPTY_EPOCH, 0}
        end
        epoch, offset = new_epoch, 0
        topic_mint(topkey, logkey, epoch, false)
    end
    local reply = {epoch, offset}
    for i = 1, #flat do
        reply[#reply + 1] = flat[i]
    end
    return reply
end

-- Retention of a topic's history, by age and by bytes: drop entries from the head of the stream while the
-- first one was committed before cutoff_ms, or while the stream holds more than maxbytes of events (MAXLEN,
-- in XADD, bounds their number). Bytes, because events carry whole line states: without it a topic keeps
-- MAXLEN events of up to a line's size each, far more than the cart itself. Once the missed events outweigh
-- a snapshot, a reset is the cheaper resume anyway.
--
-- At most TRIM entries go per write; each write adds one, so trimming keeps up with any write rate. A topic
-- that is no longer written keeps its tail until its next write (a resume from it still works or resets).
--
-- Bookkeeping, so that a write reads the stream only when something may be due: every entry has 'b', the
-- bytes of the topic's events before it in this epoch; the topic hash has 'log_bytes' (the same after the
-- last event), and head_at / head_b, the commit time and 'b' of the stream's first entry as last known. Entries
-- leave a stream only at its head, so the true first entry is never older nor smaller in 'b' than those:
-- the stream holds at most total - head_b bytes and nothing is older than head_at. An entry without 'at'
-- (written before commit times were kept) is kept by age; one without 'b' counts from 0 (dropped first).
-- Returns the head_at and head_b to keep (cutoff_ms as head_at when the head has no commit time, so the
-- next write looks again).
local TRIM = 8
local function trim_head(logkey, cutoff_ms, maxbytes, total, head_at, head_b)
    for _ = 1, TRIM do
        if (head_at ~= nil and head_at >= cutoff_ms) and total - (head_b or 0) <= maxbytes then
            break
        end
        local head = redis.call('XRANGE', logkey, '-', '+', 'COUNT', 1)[1]
        if head == nil then
            return cutoff_ms, total
        end
        local fields, at, b, body = head[2], nil, 0, ''
        for j = 1, #fields, 2 do
            local name = fields[j]
            if name == 'at' then
                at = tonumber(fields[j + 1])
            elseif name == 'b' then
                b = tonumber(fields[j + 1])
            elseif name == 'ev' then
                body = fields[j + 1]
            end
        end
        if (at == nil or at >= cutoff_ms) and total - b <= maxbytes then
            return at or cutoff_ms, b
        end
        redis.call('XDEL', logkey, head[1])
        head_at, head_b = at or cutoff_ms, b + #body -- bounds for the next entry: no older, 'b' exactly
    end
    return head_at or cutoff_ms, head_b or 0
end

-- Steps 4 and 5: next offset, stream entry '<offset>-0' (so a cursor maps to an entry id), trim, publish.
-- The body is the complete 'ev' frame, so hubs forward the published bytes to websockets unchanged.
-- topic: what topic_read gave before the op's writes ('meta'), whether the state was empty then ('empty', see
-- topic_mint) and the state's new size if it changed ('state_bytes').
local function append_event(topkey, logkey, p, data_enc, conflict_enc, topic)
    local meta = topic.meta
    local epoch, offset, head_at = meta[1], tonumber(meta[2]), tonumber(meta[3])
    local before, head_b = tonumber(meta[4]) or 0, tonumber(meta[5])
    if not epoch then
        epoch, offset, before, head_b = p.epoch, 0, 0, 0
        topic_mint(topkey, logkey, epoch, topic.empty)
    end
    offset = offset + 1
    local at = now_ms()
    -- The map {t, topic, cursor, kind, data, at, origin?, conflict?} in that order, its keys' bytes spelled out
    -- (as mp_map would write them; one concatenation instead of a table per part: this runs for every op).
    local body = mp_header(6 + (p.client and 1 or 0) + (conflict_enc and 1 or 0), 0x80, 0xde, 0xdf)
        .. '\161t\162ev\165topic' .. mp(p.topic, 'cursor') .. '\146' .. mp(epoch, offset, 'kind', p.kind, 'data')
        .. data_enc .. mp('at', at) -- cmsgpack.pack packs each of its arguments, one after the other
    if p.client then -- an event no op caused (a hold expiring) has no origin
        body = body .. '\166origin\146' .. mp(p.client, p.seq)
    end
    if conflict_enc then
        body = body .. '\168conflict' .. conflict_enc
    end
    redis.call('XADD', logkey, 'MAXLEN', '=', fmt(p.maxlen), fmt(offset) .. '-0', 'ev', body, 'at', fmt(at),
        'b', fmt(before))
    local total = before + #body
    local new_at, new_b = trim_head(logkey, at - p.maxage_ms, p.maxbytes, total, head_at, head_b)
    local fields = {'offset', fmt(offset), 'log_bytes', fmt(total)} -- and what else changed
    if new_at ~= head_at then
        fields[#fields + 1], fields[#fields + 2] = 'head_at', fmt(new_at)
    end
    if new_b ~= head_b then
        fields[#fields + 1], fields[#fields + 2] = 'head_b', fmt(new_b)
    end
    if topic.state_bytes then
        fields[#fields + 1], fields[#fields + 2] = 'state_bytes', fmt(topic.state_bytes)
    end
    redis.call('HSET', topkey, unpack(fields))
    redis.call('PUBLISH', p.channel, body)
    return offset, body
end

-- Steps 4-5 for an applied op, and the reply: {record, dup, offset, event}.
local function commit(dkey, topkey, logkey, p, result_enc, data_enc, conflict_enc, topic)
    local rec = record(true, nil, nil, result_enc, conflict_enc)
    dedup_record(dkey, p, rec, conflict_enc == nil)
    local offset, body = append_event(topkey, logkey, p, data_enc, conflict_enc, topic)
    return {rec, 0, offset, body}
end
