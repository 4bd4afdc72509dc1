--@include _lib.lua _cart.lua
-- cart.remove(member, sku): drop every dot ctx covers; what the client did not see survives (a remove that saw
-- qty 2 racing an unseen add(1) leaves qty 1). ARGV[14] sku.
local p, K, dup = cart_op()
if dup then
    return dup
end
local sku = ARGV[14]
if not (check_common(p) and check_sku(sku)) then
    return reject(K.dedup, p, 'bad_args', 'cart.remove arguments failed the store invariants')
end
return line_op(K, p, sku, true, nil, nil, nil)
