--@include _lib.lua _cart.lua
-- cart.add(member, sku, qty 1..999, attrs?): add the dot [client, seq, 'a', qty, hlc, attrs?]; removes
-- nothing, so a concurrent add always counts (2 + 1 = 3). ARGV[14] sku, ARGV[15] qty, ARGV[16] attrs
-- (MessagePack or '').
local p, K, dup = cart_op()
if dup then
    return dup
end
local sku, qty, attrs = ARGV[14], tonumber(ARGV[15]), op_attrs(ARGV[16])
if not (check_common(p) and check_sku(sku) and is_int(qty, 1, 999) and check_attrs(attrs)) then
    return reject(K.dedup, p, 'bad_args', 'cart.add arguments failed the store invariants')
end
if attrs == nil then
    local reply = add_in_place(K, p, sku, qty)
    if reply then
        return reply
    end
end
return line_op(K, p, sku, false, 'a', qty, attrs)
