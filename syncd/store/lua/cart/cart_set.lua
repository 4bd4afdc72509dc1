--@include _lib.lua _cart.lua
-- cart.set(member, sku, qty 0..9999, attrs?): drop every dot ctx covers (attrs included), then (qty > 0) add
-- the dot [client, seq, 's', qty, hlc, attrs?]. Dots ctx does not cover survive: a concurrent add is kept
-- (add-wins) and a concurrent set stays live as a conflict. ARGV[14] sku, ARGV[15] qty, ARGV[16] attrs
-- (MessagePack or '').
local p, K, dup = cart_op()
if dup then
    return dup
end
local sku, qty, attrs = ARGV[14], tonumber(ARGV[15]), op_attrs(ARGV[16])
if not (check_common(p) and check_sku(sku) and is_int(qty, 0, 9999) and check_attrs(attrs)) then
    return reject(K.dedup, p, 'bad_args', 'cart.set arguments failed the store invariants')
end
-- set(0) is a remove: it adds no dot, so its attrs are ignored.
return line_op(K, p, sku, true, qty > 0 and 's' or nil, qty, attrs)
