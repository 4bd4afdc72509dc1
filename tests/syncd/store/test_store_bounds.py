"""A cart and its history stay bounded in bytes: the poison cart of many long attrs, through the Lua scripts.

The reference (:mod:`protocol.cart`) decides every outcome; the store must agree op by op, keep the cart
within its bound, and keep the topic's history within its own, so Redis stops growing however many ops come.
"""

from __future__ import annotations

import msgspec
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from protocol import cart, frames
from syncd.store import RedisStore
from syncd.store.redis_store import LOG_MAX_BYTES, member_slot
from tests.protocol.helpers import long_attrs


def poison_ops(first_seq: int, skus: int = 24, adds: int = 17) -> list[frames.Op]:
    ops = []
    seq = first_seq
    for sku in range(skus):
        for _ in range(adds):
            args = {"member": "m", "sku": f"S{sku}", "qty": 1, "attrs": long_attrs(str(seq))}
            ops.append(frames.Op(seq=seq, kind="cart.add", args=args, hlc=seq))
            seq += 1
    return ops


async def history_bytes(redis_client: Redis | RedisCluster) -> int:
    entries = await redis_client.xrange(f"{member_slot('m')}:log:cart")
    return sum(len(fields[b"ev"]) for _, fields in entries)


async def test_the_poison_cart_is_bounded_op_by_op_as_the_reference_says(
    store: RedisStore, redis_client: Redis | RedisCluster
) -> None:
    ops = poison_ops(1)
    batch = await store.apply_ops("app", ops, known_last=0)
    assert batch.error is None and len(batch.outcomes) == len(ops)
    ref = cart.empty_cart()
    for op, got in zip(ops, batch.outcomes, strict=True):
        want = cart.apply(ref, cart.parse_op(op.kind, op.args, client_id="app", seq=op.seq, hlc=op.hlc))
        assert (got.ok, got.code, got.result) == (want.rejected is None, want.rejected, want.result), op.seq
        ref = want.cart
    assert {o.code for o in batch.outcomes} == {None, "too_large"}
    assert await store.load_cart("m") == ref
    size = cart.cart_bytes(ref)
    assert cart.MAX_CART_BYTES - cart.MAX_LINE_BYTES < size <= cart.MAX_CART_BYTES
    assert int(await redis_client.hget(f"{member_slot('m')}:top:cart", "state_bytes")) == size
    _, state = await store.snapshot("cart:m")
    assert len(msgspec.msgpack.encode(state)) <= cart.MAX_CART_BYTES + 1024  # the lines plus map headers
    # Each event carried a whole line: the history kept only the newest ones, up to its own bound.
    assert await history_bytes(redis_client) <= LOG_MAX_BYTES
    rejection = next(o for o in batch.outcomes if not o.ok)
    assert rejection.message and rejection.event is None


async def test_redis_stops_growing_once_the_cart_and_its_history_are_full(
    store: RedisStore, redis_client: Redis | RedisCluster
) -> None:
    # Before the bounds, each op on such a cart added about 122 KiB to Redis (the event carrying the line
    # with a copy of the attrs per dot, kept up to MAXLEN). Now the cart, its history and the dedup hash
    # are all bounded, whatever the number of ops.
    first = poison_ops(1)
    assert (await store.apply_ops("app", first, known_last=0)).error is None
    keys = [f"{member_slot('m')}:{suffix}" for suffix in ("cart", "cart:meta", "log:cart", "top:cart")]

    async def used() -> int:
        return sum([await redis_client.memory_usage(key, samples=0) or 0 for key in keys])

    full = await used()
    # 30 rounds: empty a line and fill it again with ten adds of long attrs: 330 ops, all accepted, whose
    # events carry about 9 MiB of lines.
    seq, more = len(first), []
    everything = {"app": 2**40, "~": 2**40}
    for round_ in range(30):
        seq += 1
        args = {"member": "m", "sku": f"S{round_ % 5}"}
        more.append(frames.Op(seq=seq, kind="cart.remove", args=args, ctx=everything, hlc=seq))
        for _ in range(10):
            seq += 1
            add = {**args, "qty": 1, "attrs": long_attrs(str(seq))}
            more.append(frames.Op(seq=seq, kind="cart.add", args=add, hlc=seq))
    batch = await store.apply_ops("app", more, known_last=len(first))
    assert batch.error is None and all(o.ok for o in batch.outcomes)
    assert sum(len(o.event_frame or b"") for o in batch.outcomes) > 8 * 1024 * 1024
    assert await used() <= full + 256 * 1024
    assert await history_bytes(redis_client) <= LOG_MAX_BYTES
    assert await used() <= 3 * 1024 * 1024


async def test_history_keeps_at_most_its_bytes_and_a_resume_from_before_them_resets(
    redis_client: Redis | RedisCluster,
) -> None:
    store = RedisStore(redis_client, log_max_bytes=4096)
    start, _ = await store.snapshot("cart:m")
    outcomes = []
    for seq in range(1, 41):
        op = frames.Op(
            seq=seq, kind="cart.add", args={"member": "m", "sku": f"S{seq % 3}", "qty": 1}, hlc=seq
        )
        outcomes.append(await store.apply_op("app", op))
    sizes = [len(o.event_frame or b"") for o in outcomes]
    held = await history_bytes(redis_client)
    assert held <= 4096
    assert held + sizes[0] > 4096  # no more was dropped than needed (each event is far below the bound)
    kept = await redis_client.xlen(f"{member_slot('m')}:log:cart")
    assert 0 < kept < 40
    newest = outcomes[-1].event
    assert newest is not None
    assert await store.events_after("cart:m", start) is None  # its first event is gone: a reset
    oldest_kept = frames.Cursor(newest.cursor.epoch, 40 - kept)
    events = await store.events_after("cart:m", oldest_kept)
    assert events is not None and [e.cursor.offset for e in events] == list(range(41 - kept, 41))
