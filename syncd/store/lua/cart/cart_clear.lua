--@include _lib.lua _cart.lua
-- cart.clear(member): for every line, drop every dot ctx (the cart-wide vector the client saw) covers.
-- Result {"lines": n}: the lines left in the cart.
local p, K, dup = cart_op()
if dup then
    return dup
end
if not check_common(p) then
    return reject(K.dedup, p, 'bad_args', 'cart.clear arguments failed the store invariants')
end
local flat = redis.call('HGETALL', K.cart)
local changes, left = {}, {}
for i = 1, #flat, 2 do
    local sku, raw = flat[i], flat[i + 1]
    local line = decode_line(raw)
    remove_covered(line, p.ctx)
    changes[#changes + 1] = {sku, raw, line}
    if #line.dots > 0 then
        left[#left + 1] = line
        line.sku = sku
    end
end
-- The conflict reported: the first line left, in byte order of sku, that holds one.
table.sort(left, function(a, b)
    return str_lt(a.sku, b.sku)
end)
local conflict = nil
for _, line in ipairs(left) do
    conflict = conflict_of(line.sku, line)
    if conflict then
        break
    end
end
local result = mp_map({'lines'}, {lines = mp(#left)})
return finish(K, p, changes, nil, result, conflict)
