"""Exactly once: dedup of (client_id, seq), the client watermark, seq gaps, settled rejections, crashes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from protocol import frames
from protocol.errors import ErrorCode, ProtocolError
from syncd.store import RedisStore
from syncd.store.redis_store import DEDUP_RETENTION_S, client_slot, member_slot

Devices = Callable[..., Any]


async def test_same_op_five_times_is_applied_once_with_the_same_result(
    device: Devices, store: RedisStore
) -> None:
    a = device("a")
    await a.add("tea", 2)
    op = a.op("cart.add", sku="tea", qty=3)
    outcomes = [await a.send(op) for _ in range(5)]
    assert [o.dup for o in outcomes] == [False, True, True, True, True]
    assert {(o.ok, o.code, str(o.result)) for o in outcomes} == {(True, None, "{'qty': 5}")}
    assert [o.offset for o in outcomes] == [2, 0, 0, 0, 0]
    assert all(o.event is None for o in outcomes[1:])
    assert (await a.lines())["tea"]["qty"] == 5
    cursor, _ = await store.snapshot("cart:m1")
    assert cursor.offset == 2  # one event per applied op, none for the replays
    assert outcomes[1].ack() == frames.Ack(seq=2, ok=True, result={"qty": 5}, dup=True)


async def test_replay_of_a_conflicting_set_answers_the_conflict_again(device: Devices) -> None:
    a, b = device("a"), device("b")
    await a.set("tea", 1, ctx={}, hlc=1)
    op = b.op("cart.set", sku="tea", qty=2, ctx={}, hlc=2)
    first, again = await b.send(op), await b.send(op)
    assert first.conflict is not None
    assert (again.dup, again.result, again.conflict) == (True, first.result, first.conflict)


async def test_seq_gap_is_refused_and_touches_nothing(device: Devices, store: RedisStore) -> None:
    a = device("a")
    await a.add("tea", 1)
    a.seq += 1  # skip seq 2
    with pytest.raises(ProtocolError) as caught:
        await a.add("tea", 1)
    assert caught.value.code is ErrorCode.SEQ_GAP and caught.value.close_code is None
    assert await store.last_seq("a") == 1
    assert (await a.lines())["tea"]["qty"] == 1
    a.seq = 1
    assert (await a.add("tea", 1)).ok  # seq 2 is still free


async def test_first_op_of_a_new_client_must_be_seq_1(device: Devices) -> None:
    a = device("a")
    a.seq = 4
    with pytest.raises(ProtocolError):
        await a.add("tea", 1)


async def test_domain_rejection_is_recorded_and_replayed_identically(device: Devices) -> None:
    devices = [device(f"d{i:02}") for i in range(17)]
    for d in devices[:16]:
        await d.set("tea", 1, ctx={})
    op = devices[16].op("cart.set", sku="tea", qty=1, ctx={})
    first = await devices[16].send(op)
    # The cause disappears, yet the replay answers the original rejection: rejections are results.
    await devices[0].remove("tea", ctx={f"d{i:02}": 1 for i in range(16)})
    again = await devices[16].send(op)
    assert (first.ok, first.code) == (False, "limit_exceeded")
    assert (again.ok, again.code, again.message, again.dup) == (False, first.code, first.message, True)
    assert await devices[0].lines() == {}


async def test_bad_args_rejection_is_settled_in_the_client_slot_and_replayed(
    device: Devices, store: RedisStore
) -> None:
    a = device("a")
    op = a.op("cart.add", sku="tea", qty=0)
    first = await a.send(op)
    again = await a.send(op)
    assert (first.code, first.dup) == ("bad_args", False)
    assert (again.code, again.message, again.dup) == ("bad_args", first.message, True)
    assert await store.last_seq("a") == 1


async def test_crash_between_member_script_and_watermark_does_not_double_apply(
    device: Devices, store: RedisStore, redis_client: Redis | RedisCluster
) -> None:
    a = device("a")
    op = a.op("cart.add", sku="tea", qty=2)
    first = await a.send(op)
    # The state a crash after step 2 leaves: the member script ran, the watermark did not advance.
    await redis_client.hset(f"{client_slot('a')}:seq", "last", 0)
    assert await store.last_seq("a") == 0
    again = await a.send(op)  # the client never got the ack: it replays the same op
    assert (again.ok, again.dup, again.result) == (True, True, first.result)
    assert (await a.lines())["tea"]["qty"] == 2
    assert await store.last_seq("a") == 1  # the replay settled the watermark
    assert (await a.add("tea", 1)).result == {"qty": 3}


async def test_settled_op_is_never_reapplied_even_after_its_dedup_record_expired(
    device: Devices, redis_client: Redis | RedisCluster
) -> None:
    a = device("a")
    op = a.op("cart.add", sku="tea", qty=2)
    await a.send(op)
    await redis_client.delete(f"{member_slot('m1')}:d:a")  # what the dedup retention does eventually
    again = await a.send(op)
    assert (again.ok, again.dup) == (True, True)
    assert (await a.lines())["tea"]["qty"] == 2


async def test_dedup_hash_lives_in_the_member_slot_with_the_retention_ttl(
    device: Devices, redis_client: Redis | RedisCluster
) -> None:
    a = device("a")
    await a.add("tea", 1)
    ttl = await redis_client.ttl(f"{member_slot('m1')}:d:a")
    assert 0 < ttl <= DEDUP_RETENTION_S


async def test_ops_of_one_client_sent_concurrently_are_applied_in_call_order(device: Devices) -> None:
    a = device("a")
    ops = [a.op("cart.add", sku="tea", qty=1) for _ in range(20)]
    outcomes = await asyncio.gather(*(a.send(op) for op in ops))
    assert [o.result for o in outcomes] == [{"qty": n} for n in range(1, 21)]


async def test_seq_counts_across_members(device: Devices, store: RedisStore) -> None:
    a1, a2 = device("a", "m1"), device("a", "m2")
    await a1.add("tea", 1)  # seq 1 on m1
    a2.seq = 1
    assert (await a2.add("tea", 1)).ok  # seq 2 on m2
    assert await store.last_seq("a") == 2
    a1.seq = 2
    outcome = await a1.add("tea", 1)  # seq 3 on m1: its dedup hash there says max 1
    assert outcome.ok and not outcome.dup and outcome.result == {"qty": 2}


async def test_invalid_client_id_or_seq_is_a_protocol_error(store: RedisStore) -> None:
    op = frames.Op(seq=1, kind="cart.add", args={"member": "m1", "sku": "tea", "qty": 1})
    with pytest.raises(ProtocolError):
        await store.apply_op("bad id", op)
    with pytest.raises(ProtocolError):
        await store.apply_op("a", frames.Op(seq=0, kind="cart.add", args={}))


async def test_script_refuses_arguments_that_bypassed_python_validation_as_a_recorded_rejection(
    store: RedisStore, redis_client: Redis | RedisCluster
) -> None:
    # The second, cheap check in Lua: an op that reaches the script malformed (a bug in a caller) is settled
    # as bad_args, so it can never block the ops behind it, and nothing is written but its dedup record.
    slot = member_slot("m1")
    keys = [f"{slot}:d:a", f"{slot}:cart", f"{slot}:cart:meta", f"{slot}:top:cart", f"{slot}:log:cart"]
    argv = ["a", 1, 0, 0, b"\x80", 60_000, 100, "e1", "ev:cart:m1", "cart:m1", "cart.add", 10**9, 2**20]
    argv += ["tea", 0, b""]
    record, dup, offset, event = await store._eval("cart_add", keys, argv, wait=False)
    assert (dup, offset, event) == (0, 0, b"")
    assert msgspec.msgpack.decode(record)[:2] == [False, "bad_args"]
    assert await redis_client.exists(f"{slot}:cart", f"{slot}:top:cart") == 0
    again = await store._eval("cart_add", keys, argv, wait=False)
    assert (again[0], again[1]) == (record, 1)


@pytest.mark.parametrize("setting", ["dedup_retention_s", "log_maxlen", "log_max_bytes", "fsync_timeout_ms"])
def test_store_settings_must_be_positive(redis_client: Redis | RedisCluster, setting: str) -> None:
    with pytest.raises(ValueError, match=setting):
        RedisStore(redis_client, **{setting: 0})


async def test_a_pipeline_mixing_scripts_on_a_cold_script_cache_applies_every_op_once(
    redis_client: Redis | RedisCluster,
) -> None:
    """After a restart or SCRIPT FLUSH a node may miss scripts; a pipeline must then never let a later op of
    a member run past one that failed (its retry would be answered as a dup without being applied)."""
    await redis_client.script_flush()
    store = RedisStore(redis_client)
    m = {"member": "m1"}
    first = [
        frames.Op(seq=1, kind="cart.add", args={**m, "sku": "A", "qty": 2}, hlc=10),
        frames.Op(seq=2, kind="cart.add", args={**m, "sku": "B", "qty": 1}, hlc=11),
    ]
    batch = await store.apply_ops("app", first)
    assert [o.ok for o in batch.outcomes] == [True, True]
    assert batch.error is None
    # Only cart_add is cached now; the next run (a fresh run, after the known watermark) also uses cart_set.
    mixed = [
        frames.Op(seq=3, kind="cart.add", args={**m, "sku": "A", "qty": 1}, hlc=20),
        frames.Op(seq=4, kind="cart.set", args={**m, "sku": "B", "qty": 5}, ctx={"app": 2}, hlc=21),
        frames.Op(seq=5, kind="cart.add", args={**m, "sku": "C", "qty": 1}, hlc=22),
    ]
    outcomes = []
    while len(outcomes) < len(mixed):
        batch = await store.apply_ops("app", mixed[len(outcomes) :], known_last=2 + len(outcomes))
        outcomes.extend(batch.outcomes)
        assert batch.error is None
    assert [(o.seq, o.ok, o.dup) for o in outcomes] == [(3, True, False), (4, True, False), (5, True, False)]
    cart = await store.load_cart("m1")
    assert {sku: line["qty"] for sku, line in cart["lines"].items()} == {"A": 3, "B": 5, "C": 1}


async def test_replay_of_seq_1_after_299_later_ops_on_the_same_cart_answers_its_original_result(
    store: RedisStore,
) -> None:
    # The replay a device makes after reconnecting: its first op's ack was lost while 299 more went out.
    ops = [
        frames.Op(seq=s, kind="cart.add", args={"member": "m1", "sku": f"S{s % 7}", "qty": 1}, hlc=s)
        for s in range(1, 301)
    ]
    batch = await store.apply_ops("a", ops, known_last=0)
    assert batch.error is None and len(batch.outcomes) == 300
    again = await store.apply_op("a", ops[0])
    assert (again.ok, again.dup, again.result) == (True, True, {"qty": 1})
    assert (again.ok, again.dup, again.result) == (True, True, batch.outcomes[0].result)


async def test_results_are_kept_for_the_last_1024_seqs_and_the_outcome_kind_for_the_retention(
    store: RedisStore,
) -> None:
    # Past the ring only the result of a plain success is forgotten: a replay is still answered as applied,
    # and a rejection is still answered as that rejection (PROTOCOL.md §7.3).
    add = frames.Op(seq=1, kind="cart.add", args={"member": "m1", "sku": "juice", "qty": 1}, hlc=1)
    bad = frames.Op(seq=2, kind="cart.set", args={"member": "m1", "sku": "tea", "qty": 1}, ctx={}, hlc=2)
    later = [
        frames.Op(seq=s, kind="cart.add", args={"member": "m1", "sku": "cake", "qty": 1}, hlc=s)
        for s in range(3, 1025)
    ]
    for d in range(16):  # 16 concurrent sets fill the set-dot bound, so `bad` is rejected
        await store.apply_op(f"d{d}", frames.Op(seq=1, kind="cart.set", args=bad.args, ctx={}, hlc=2))
    batch = await store.apply_ops("a", [add, bad, *later], known_last=0)
    assert batch.error is None and batch.outcomes[1].code == "limit_exceeded"
    kept = await store.apply_op("a", add)  # seqs 1..1024: the last 1,024 of the client
    assert (kept.ok, kept.dup, kept.result) == (True, True, {"qty": 1})
    beyond = frames.Op(seq=1025, kind="cart.add", args={"member": "m1", "sku": "cake", "qty": 1}, hlc=9)
    assert (await store.apply_op("a", beyond)).ok
    forgotten = await store.apply_op("a", add)
    assert (forgotten.ok, forgotten.dup, forgotten.result) == (True, True, None)
    rejected = await store.apply_op("a", bad)
    assert (rejected.ok, rejected.dup, rejected.code) == (False, True, "limit_exceeded")
