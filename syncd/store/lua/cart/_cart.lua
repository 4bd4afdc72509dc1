-- _cart.lua: cart line rules shared by the cart_* op scripts (docs/cart-rules.md is normative).
--
-- KEYS of every cart op: 1 {m:M}:d:<client_id> (dedup), 2 {m:M}:cart (sku -> line), 3 {m:M}:cart:meta
-- (fold counter), 4 {m:M}:top:cart (epoch, offset, the cart's size), 5 {m:M}:log:cart (event stream).
--
-- A line in memory: {dots = {dot, ...}} in canonical order: the base dot first, then ascending
-- (hlc, client_id, seq). A dot is {client, seq, kind, value, hlc} plus attrs (a map) when its op carried
-- some; a base dot that carries the attrs of a folded dot also has their key {hlc, client, seq} as 7th
-- element.
-- qty, attrs and vv derive from the dots. Stored as the MessagePack map of its wire shape
-- ({qty, attrs?, vv, dots}), so a snapshot needs no transformation, and the bytes of a line depend only on
-- its set of live dots.

local MAX_LINES = 200
local MAX_DOTS = 16
local MAX_LINE_BYTES = 65536 -- protocol.cart.MAX_LINE_BYTES: a line's encoded size (what is stored and sent)
local MAX_CART_BYTES = 1048576 -- protocol.cart.MAX_CART_BYTES: the sum over the cart's lines
local BASE = '~'
local SHAPE = 's:' -- the meta hash's field of a line's shape: SHAPE .. sku (see add_in_place)

-- Step 1 of every cart op: its parameters, its keys, and the reply to give when (client, seq) was settled here
-- before (nil for a fresh op).
local function cart_op()
    local p = op_params(5)
    local K = {dedup = KEYS[1], cart = KEYS[2], meta = KEYS[3], top = KEYS[4], log = KEYS[5]}
    return p, K, dedup_check(K.dedup, p)
end

local function decode_line(raw)
    return {dots = cmsgpack.unpack(raw).dots}
end

local function line_qty(dots)
    local sum, winner = 0, nil
    for _, d in ipairs(dots) do
        if d[3] == 's' then
            if not winner or key_lt(winner[5], winner[1], winner[2], d[5], d[1], d[2]) then
                winner = d
            end
        else
            sum = sum + d[4]
        end
    end
    return sum + (winner and winner[4] or 0)
end

-- The key a dot's attrs compete with: its own (hlc, client, seq), or for a base the key it carries.
local function attrs_key(d)
    if d[3] == 'b' then
        return d[7][1], d[7][2], d[7][3]
    end
    return d[5], d[1], d[2]
end

local function attrs_lt(a, b)
    local h1, c1, s1 = attrs_key(a)
    local h2, c2, s2 = attrs_key(b)
    return key_lt(h1, c1, s1, h2, c2, s2)
end

-- The line's attrs: those of the live dot with the greatest key among the dots that carry attrs, or nil.
local function line_attrs(dots)
    local best = nil
    for _, d in ipairs(dots) do
        if d[6] ~= nil and (best == nil or attrs_lt(best, d)) then
            best = d
        end
    end
    return best and best[6]
end

-- A map of scalars with its keys in byte order: a dot's attrs, a line's version vector.
local function enc_attrs(attrs)
    local akeys = sorted_keys(attrs)
    local aenc = {}
    for _, k in ipairs(akeys) do
        aenc[k] = mp(attrs[k])
    end
    return mp_map(akeys, aenc)
end

local function enc_dot(d)
    if d[6] == nil then
        return mp(d) -- {c, s, kind, v, hlc}: a plain array, packed in one call
    end
    local parts = {mp(d[1]), mp(d[2]), mp(d[3]), mp(d[4]), mp(d[5])}
    if d[6] ~= nil then
        parts[6] = enc_attrs(d[6])
        if d[3] == 'b' then
            parts[7] = mp_arr({mp(d[7][1]), mp(d[7][2]), mp(d[7][3])})
        end
    end
    return mp_arr(parts)
end

local function enc_line(line)
    local keys = {'qty'}
    local enc = {qty = mp(line_qty(line.dots))}
    local attrs = line_attrs(line.dots)
    if attrs and next(attrs) then
        keys[#keys + 1] = 'attrs'
        enc.attrs = enc_attrs(attrs)
    end
    local vv, plain = {}, true
    for _, d in ipairs(line.dots) do
        if (vv[d[1]] or 0) < d[2] then
            vv[d[1]] = d[2]
        end
        plain = plain and d[6] == nil
    end
    keys[#keys + 1] = 'vv'
    enc.vv = enc_attrs(vv)
    keys[#keys + 1] = 'dots'
    if plain then
        enc.dots = mp(line.dots) -- no dot carries attrs: an array of plain arrays, packed in one call
    else
        local dots = {}
        for i, d in ipairs(line.dots) do
            dots[i] = enc_dot(d)
        end
        enc.dots = mp_arr(dots)
    end
    return mp_map(keys, enc)
end

-- ctx covers the dot (c, s) iff ctx[c] >= s.
local function covered(ctx, d)
    local seen = ctx[d[1]]
    return type(seen) == 'number' and seen >= d[2]
end

-- Drops the dots ctx covers (their attrs with them), keeping the order; returns whether any was dropped.
local function remove_covered(line, ctx)
    local kept = {}
    for _, d in ipairs(line.dots) do
        if not covered(ctx, d) then
            kept[#kept + 1] = d
        end
    end
    local removed = #kept < #line.dots
    line.dots = kept
    return removed
end

-- Inserts a new dot at its place in the canonical order (base first, then ascending (hlc, client, seq)).
-- New dots usually carry the greatest hlc, so the scan starts from the end.
local function insert_dot(dots, d)
    local i = #dots + 1
    while i > 1 do
        local prev = dots[i - 1]
        if prev[3] == 'b' or not key_lt(d[5], d[1], d[2], prev[5], prev[1], prev[2]) then
            break
        end
        i = i - 1
    end
    table.insert(dots, i, d)
end

local function count_kind(dots, kind)
    local n = 0
    for _, d in ipairs(dots) do
        if d[3] == kind then
            n = n + 1
        end
    end
    return n
end

-- Bounds: when a line holds more than MAX_DOTS dots besides the base, just as many of its lowest add dots
-- (canonical order) as exceed the bound are folded, with the old base, into the single base dot
-- [BASE, n, 'b', sum, 0], kept first in the list; n is the cart's fold counter plus one, so no existing ctx
-- covers the new base. If a folded dot carried attrs, the base carries the winning ones and their key:
-- [BASE, n, 'b', sum, 0, attrs, {hlc, client, seq}], so a fold never changes the line's attrs. Set dots are
-- never folded (a set that would leave more than MAX_DOTS of them is rejected before). Returns the counter
-- used, or nil. The counter is read only when a fold is due.
local function fold_line(K, line)
    local dots = line.dots
    local excess = #dots - count_kind(dots, 'b') - MAX_DOTS
    if excess <= 0 then
        return nil
    end
    local n = tonumber(redis.call('HGET', K.meta, 'fold') or '0') + 1
    local sum = 0
    local kept = {}
    local carried = nil
    for _, d in ipairs(dots) do
        if d[3] == 's' or (d[3] == 'a' and excess <= 0) then
            kept[#kept + 1] = d
        else
            if d[3] == 'a' then
                excess = excess - 1
            end
            sum = sum + d[4]
            if d[6] ~= nil and (carried == nil or attrs_lt(carried, d)) then
                carried = d
            end
        end
    end
    local base = {BASE, n, 'b', sum, 0}
    if carried then
        local h, c, s = attrs_key(carried)
        base[6] = carried[6]
        base[7] = {h, c, s}
    end
    table.insert(kept, 1, base)
    line.dots = kept
    return n
end

-- Two or more live set dots: {sku, winner = [c, s, v], losers = [[c, s, v], ...]}, greatest first.
local function conflict_of(sku, line)
    local sets = {}
    for _, d in ipairs(line.dots) do
        if d[3] == 's' then
            sets[#sets + 1] = d
        end
    end
    if #sets < 2 then
        return nil
    end
    table.sort(sets, function(a, b)
        return key_lt(b[5], b[1], b[2], a[5], a[1], a[2])
    end)
    local function cv(d)
        return mp_arr({mp(d[1]), mp(d[2]), mp(d[4])})
    end
    local losers = {}
    for i = 2, #sets do
        losers[#losers + 1] = cv(sets[i])
    end
    return mp_map({'sku', 'winner', 'losers'}, {sku = mp(sku), winner = cv(sets[1]), losers = mp_arr(losers)})
end

-- Cheap invariant checks on the already validated arguments (Python validates them fully before the call).
-- An op failing them is rejected as bad_args and recorded, so it can never block the ops behind it.
local function check_ctx(ctx)
    if type(ctx) ~= 'table' then
        return false
    end
    for k, v in pairs(ctx) do
        if type(k) ~= 'string' or not is_int(v, 0, 9007199254740991) then
            return false
        end
    end
    return true
end

local function check_common(p)
    return type(p.client) == 'string' and #p.client > 0 and is_int(p.seq, 1, 9007199254740991)
        and is_int(p.hlc, 0, 9007199254740991) and check_ctx(p.ctx)
end

local function check_attrs(attrs)
    if attrs == nil then
        return true
    end
    if type(attrs) ~= 'table' then
        return false
    end
    local n = 0
    for k, v in pairs(attrs) do
        n = n + 1
        local tv = type(v)
        if type(k) ~= 'string' or not (tv == 'string' or tv == 'boolean' or tv == 'number') then
            return false
        end
    end
    return n <= 16
end

-- The encoded size of the cart's lines together: as the topic hash keeps it ('state_bytes'), or, for a cart
-- whose topic hash lacks it (written before sizes were kept, or lost with its history), counted once here.
local function cart_bytes(K, kept)
    if kept then
        return kept
    end
    local sum = 0
    for _, raw in ipairs(redis.call('HVALS', K.cart)) do
        sum = sum + #raw
    end
    return sum
end

-- Checks the size bounds, then writes the changed lines and the fold counter, then commits (dedup, event with
-- the cart's new size, publish). changes: list of {sku, raw_before_or_false, line_after_or_nil, encoded_after?,
-- shape_after?} (the encoded line and its shape when the caller built its bytes itself, see add_in_place);
-- only lines whose bytes changed are written and reported in the event (null = the line is gone). Every
-- written line's shape (SHAPE) is written with it, or dropped: a shape never outlives its line's bytes.
-- Bounds (docs/cart-rules.md, Bounds): an op may not leave a line above MAX_LINE_BYTES, nor the cart above
-- MAX_CART_BYTES, unless it leaves them no larger than they were; every check comes before the first write.
local function finish(K, p, changes, new_counter, result_enc, conflict_enc)
    local topic = {meta = topic_read(K.top)}
    if not topic.meta[1] then -- a new history: does it start from the empty cart? (read before writing)
        topic.empty = redis.call('EXISTS', K.cart) == 0
    end
    local skus, lines, shapes = {}, {}, {}
    local grown = 0
    for _, ch in ipairs(changes) do
        local sku, before, line, after = ch[1], ch[2], ch[3], ch[4]
        shapes[sku] = ch[5]
        if after == nil then -- not already encoded (add_in_place)
            if line and #line.dots == 0 then
                line = nil -- a line without live dots does not exist, and loses its attrs
            end
            after = line and enc_line(line) or false
        end
        if after ~= before then
            local size_before, size_after = before and #before or 0, after and #after or 0
            if size_after > size_before and size_after > MAX_LINE_BYTES then
                return reject(K.dedup, p, 'too_large', 'a cart line holds at most 65536 bytes (encoded)')
            end
            grown = grown + size_after - size_before
            lines[sku] = after or MP_NIL
            skus[#skus + 1] = sku
        end
    end
    if grown ~= 0 then
        topic.state_bytes = cart_bytes(K, tonumber(topic.meta[6])) + grown
        if grown > 0 and topic.state_bytes > MAX_CART_BYTES then
            return reject(K.dedup, p, 'too_large', 'a cart holds at most 1048576 bytes (encoded)')
        end
    end
    local meta, dropped = {}, {}
    for _, sku in ipairs(skus) do
        if lines[sku] == MP_NIL then
            redis.call('HDEL', K.cart, sku)
        else
            redis.call('HSET', K.cart, sku, lines[sku])
        end
        if shapes[sku] then
            meta[#meta + 1], meta[#meta + 2] = SHAPE .. sku, shapes[sku]
        else
            dropped[#dropped + 1] = SHAPE .. sku
        end
    end
    if new_counter then
        meta[#meta + 1], meta[#meta + 2] = 'fold', fmt(new_counter)
    end
    if #meta > 0 then
        redis.call('HSET', K.meta, unpack(meta))
    end
    if #dropped > 0 then
        redis.call('HDEL', K.meta, unpack(dropped))
    end
    local parts = {'\129\165lines', mp_header(#skus, 0x80, 0xde, 0xdf)} -- {"lines": {sku: line}}, skus in byte order
    if #skus > 1 then
        table.sort(skus, str_lt)
    end
    for _, sku in ipairs(skus) do
        parts[#parts + 1] = mp(sku)
        parts[#parts + 1] = lines[sku]
    end
    return commit(K.dedup, K.top, K.log, p, result_enc, table.concat(parts), conflict_enc, topic)
end

-- The shared body of cart.add, cart.set and cart.remove (docs/cart-rules.md, in the reference's order):
-- remove what ctx covers (set, remove), check the bounds, add the op's dot (add; set with qty > 0) with the
-- op's attrs, fold. Every check comes before the first write; a rejection leaves the cart untouched.
local function line_op(K, p, sku, removes, kind, qty, attrs)
    local raw = redis.call('HGET', K.cart, sku)
    local line = raw and decode_line(raw) or {dots = {}}
    if removes then
        remove_covered(line, p.ctx)
    end
    local counter = nil
    if kind then
        if not raw and redis.call('HLEN', K.cart) >= MAX_LINES then
            return reject(K.dedup, p, 'limit_exceeded', 'a cart holds at most 200 lines')
        end
        if kind == 's' and count_kind(line.dots, 's') >= MAX_DOTS then
            return reject(K.dedup, p, 'limit_exceeded', 'a line holds at most 16 concurrent sets')
        end
        insert_dot(line.dots, {p.client, p.seq, kind, qty, p.hlc, attrs})
        counter = fold_line(K, line)
    end
    local qty_after, conflict = 0, nil
    if #line.dots > 0 then
        qty_after = line_qty(line.dots)
        conflict = conflict_of(sku, line)
    end
    local result = mp_map({'qty'}, {qty = mp(qty_after)})
    return finish(K, p, {{sku, raw or false, line}}, counter, result, conflict)
end

-- The common cart.add, incrementally (docs/cart-rules.md gives the rules; line_op is their general form).
-- A replayed or busy line holds a base and 16 add dots, and each add appends one dot and folds the lowest
-- one into the base. Decoding the whole line into Lua tables and encoding it again costs more than all the
-- rules: here only the dots the add touches are decoded (the first, the one folded, the last), and the new
-- line is spliced from the old bytes. The bytes are the same as line_op's: a line's encoding depends only
-- on its live dots. Taken only for the shape it was made for — an existing line with no attrs and no set
-- dots, every dot plain ({client, seq, kind, value, hlc}), and the new dot sorting after every other;
-- anything else returns nil and the op takes line_op.
--
-- Where the dots start is known without reading them from the line's shape, kept in the meta hash under
-- SHAPE .. sku by the op that wrote the line in place: the line's bytes up to its first dot (the map header,
-- qty, vv, the 'dots' key and the array header), then one byte per dot, its encoded length. A shape is
-- trusted only while that prefix, the dot count and the lengths' sum match the line: every write of a line
-- changes its length or its vv (a dot added raises its client's entry, a fold the base's; removing dots
-- shortens it), so a line changed by any other writer (line_op, which drops the shape, or an older hub's
-- script, which knows nothing of it) is walked instead. Walking (walk_dots) costs about ten times more.
local byte, sub, char = string.byte, string.sub, string.char

-- Where the MessagePack integer at i ends (the index after it); nil for anything else.
local function int_end(s, i)
    local b = byte(s, i)
    if b == nil then
        return nil
    elseif b < 0x80 or b >= 0xe0 then
        return i + 1
    elseif b == 0xcc or b == 0xd0 then
        return i + 2
    elseif b == 0xcd or b == 0xd1 then
        return i + 3
    elseif b == 0xce or b == 0xd2 then
        return i + 5
    elseif b == 0xcf or b == 0xd3 then
        return i + 9
    end
    return nil
end

-- Where the plain dot at i ends, and its kind's byte; nil unless it is [str, int, 1-byte str, int, int].
local function plain_dot(s, i)
    if byte(s, i) ~= 0x95 then
        return nil
    end
    local b, q = byte(s, i + 1), nil
    if b and b >= 0xa0 and b <= 0xbf then
        q = i + 2 + b - 0xa0
    elseif b == 0xd9 and byte(s, i + 2) then
        q = i + 3 + byte(s, i + 2)
    else
        return nil
    end
    q = int_end(s, q)
    if not q or byte(s, q) ~= 0xa1 then
        return nil
    end
    local kind = byte(s, q + 1)
    q = int_end(s, q + 2)
    q = q and int_end(s, q)
    return q, kind
end

local KIND_BASE, KIND_SET = byte('b'), byte('s')

-- The walk: {start of each dot}, whether the first is the base, and the index after the last; nil when a
-- dot is not plain, is a set, or a base is not first.
local function walk_dots(raw, i, n)
    local starts, based = {}, false
    for k = 1, n do
        starts[k] = i
        local e, kind = plain_dot(raw, i)
        if not e or kind == KIND_SET or (kind == KIND_BASE and k ~= 1) then
            return nil
        end
        based = based or kind == KIND_BASE
        i = e
    end
    return starts, based, i
end

local function dot_at(raw, i)
    local _, d = cmsgpack.unpack_one(raw, i - 1) -- offsets are 0-based
    return d
end

-- The same from the line's shape, when it matches the line (see above); nil otherwise.
local function shape_dots(raw, first, n, shape)
    if not shape or #shape ~= first - 1 + n or sub(shape, 1, first - 1) ~= sub(raw, 1, first - 1) then
        return nil
    end
    local starts, i = {}, first
    local lens = {byte(shape, first, first - 1 + n)}
    for k = 1, n do
        starts[k] = i
        i = i + lens[k]
    end
    return starts, dot_at(raw, first)[3] == 'b', i
end

-- A version vector's bytes, keys in byte order (enc_attrs, without building tables for the usual one or two).
local function enc_vv(vv)
    local k1, k2 = next(vv)
    k2 = next(vv, k1)
    if k2 == nil then
        return '\129' .. mp(k1, vv[k1])
    elseif next(vv, k2) == nil then
        if str_lt(k2, k1) then
            k1, k2 = k2, k1
        end
        return '\130' .. mp(k1, vv[k1], k2, vv[k2]) -- cmsgpack.pack packs each argument, one after the other
    end
    return enc_attrs(vv)
end

local function add_in_place(K, p, sku, qty)
    local raw = redis.call('HGET', K.cart, sku)
    if not raw or byte(raw, 1) ~= 0x83 then -- a new line, or one with attrs (a fourth key)
        return nil
    end
    local off, k1, old_qty, k2, vv, k3 = cmsgpack.unpack_limit(raw, 5, 1)
    if k1 ~= 'qty' or k2 ~= 'vv' or k3 ~= 'dots' or type(vv) ~= 'table' or off < 0 then
        return nil
    end
    local b, n, first = byte(raw, off + 1), nil, nil
    if b and b >= 0x90 and b <= 0x9f then
        n, first = b - 0x90, off + 2
    elseif b == 0xdc then
        n, first = byte(raw, off + 2) * 256 + byte(raw, off + 3), off + 4
    else
        return nil
    end
    local meta = redis.call('HMGET', K.meta, SHAPE .. sku, 'fold')
    local starts, based, stop = shape_dots(raw, first, n, meta[1])
    if not starts then
        starts, based, stop = walk_dots(raw, first, n)
    end
    if not starts or n == 0 or stop ~= #raw + 1 then
        return nil
    end
    local last = dot_at(raw, starts[n])
    if not (n == 1 and based) and not key_lt(last[5], last[1], last[2], p.hlc, p.client, p.seq) then
        return nil -- the new dot would go before another: line_op inserts it in order
    end
    local new_dot = '\149' .. mp(p.client, p.seq, 'a', qty, p.hlc) -- the dot [client, seq, 'a', qty, hlc]
    local adds = n - (based and 1 or 0) + 1
    local counter, base, rest, count, kept, lens = nil, '', nil, nil, nil, {} -- kept: the first old dot kept
    if adds <= MAX_DOTS then
        rest, count, kept = sub(raw, first), n + 1, 1
    elseif adds == MAX_DOTS + 1 then -- fold the lowest add (no sets: the first after the base)
        local f = based and 2 or 1
        local folded = dot_at(raw, starts[f])
        local c2, s2 = folded[1], folded[2]
        if vv[c2] == s2 then -- c2's highest dot leaves: its entry is what the rest of the line says
            if c2 ~= p.client or p.seq <= s2 then
                return nil
            end
        end
        counter = tonumber(meta[2] or '0') + 1
        local sum = folded[4] + (based and dot_at(raw, starts[1])[4] or 0)
        base = '\149' .. mp(BASE, counter, 'b', sum, 0) -- the dot [BASE, counter, 'b', sum, 0]
        rest, count, kept = f < n and sub(raw, starts[f + 1]) or '', n - f + 2, f + 1
        vv[BASE] = counter
        lens[1] = #base
    else
        return nil
    end
    if (vv[p.client] or 0) < p.seq then
        vv[p.client] = p.seq
    end
    local qty_after = old_qty + qty
    local head = '\131\163qty' .. mp(qty_after) .. '\162vv' .. enc_vv(vv) .. '\164dots'
        .. mp_header(count, 0x90, 0xdc, 0xdd) -- the map {qty, vv, dots}, as enc_line writes it
    local after = head .. base .. rest .. new_dot
    local shape = nil
    for k = kept, n do
        lens[#lens + 1] = (k < n and starts[k + 1] or stop) - starts[k]
    end
    lens[#lens + 1] = #new_dot
    if #lens == count and math.max(unpack(lens)) < 256 then
        shape = head .. char(unpack(lens))
    end
    local result = '\129\163qty' .. mp(qty_after)
    return finish(K, p, {{sku, raw, nil, after, shape}}, counter, result, nil)
end

local function check_sku(sku)
    return type(sku) == 'string' and #sku > 0 and #sku <= 64
end

-- attrs arrive as MessagePack, or as an empty string when the op carries none.
local function op_attrs(raw)
    if raw == nil or raw == '' then
        return nil
    end
    return cmsgpack.unpack(raw)
end
