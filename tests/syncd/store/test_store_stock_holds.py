"""How long a reservation holds, in the stock scripts against real Redis (and a cluster): ``ttl_ms``, an
absolute ``until``, the brand's daily clearing time, and the hub's default hold; the instant is decided by
the script's clock and a replay is answered with the same one."""

from __future__ import annotations

import datetime as dt
import itertools
import time
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from protocol import frames
from protocol import stock as rules
from syncd.holds import HoldPolicy
from syncd.store import RedisStore
from tests.profiles import examples
from tests.syncd.store.test_store_stock import SKU, Till


async def redis_ms(client: Redis | RedisCluster) -> int:
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def hold_of(client: Redis | RedisCluster, rid: str) -> int:
    raw = await client.hget(f"{{sku:{SKU}}}:holds", rid)
    assert raw is not None
    return int(raw.split(b"|")[3])


async def test_ttl_and_absolute_until_set_the_holds_expiry(store: RedisStore, redis_client: Any) -> None:
    assert (await Till(store, "ops").op(rules.RESTOCK, qty=10)).ok
    shopper = Till(store, "c1")
    before = await redis_ms(redis_client)
    by_ttl = await shopper.op(rules.RESERVE, channel="web", qty=1, ttl_ms=60_000)
    assert by_ttl.ok and by_ttl.result is not None
    assert before + 60_000 <= by_ttl.result["until"] <= await redis_ms(redis_client) + 60_000
    until = before + 3_600_000
    absolute = await shopper.op(rules.RESERVE, channel="web", qty=1, until=until)
    assert absolute.ok and absolute.result == {"rid": "c1/2", "until": until}
    assert await hold_of(redis_client, "c1/2") == until
    past = await shopper.op(rules.RESERVE, channel="web", qty=1, until=before - 1)
    assert past.code == "bad_args"
    too_far = await shopper.op(rules.RESERVE, channel="web", qty=1, until=before + rules.MAX_TTL_MS + 60_000)
    assert too_far.code == "bad_args"
    s = await redis_client.hgetall(f"{{sku:{SKU}}}:stock")
    assert int(s[b"pool"]) == 8  # the refused ones hold nothing


async def test_clearing_holds_until_the_next_clearing_instant_in_the_brands_zone(redis_client: Any) -> None:
    tz = ZoneInfo("America/New_York")
    at = dt.time(3, 30)
    store = RedisStore(redis_client, holds=HoldPolicy(clearing_at=at, clearing_tz=tz))
    assert (await Till(store, "ops").op(rules.RESTOCK, qty=10)).ok
    shopper = Till(store, "c1")
    before = await redis_ms(redis_client)
    held = await shopper.op(rules.RESERVE, channel="web", qty=2, until=rules.CLEARING)
    after = await redis_ms(redis_client)
    assert held.ok and held.result is not None
    until = held.result["until"]
    candidates = {
        rules.resolve_until(now, clearing=rules.clearing_instants(now, at, tz)) for now in (before, after)
    }
    assert until in candidates
    local = dt.datetime.fromtimestamp(until / 1000, tz)
    assert (local.hour, local.minute) == (3, 30) and before < until <= before + 24 * 3600 * 1000
    assert await hold_of(redis_client, "c1/1") == until
    # A replay (the same client and seq) is answered from the dedup record: the same instant.
    shopper.seq -= 1
    again = await shopper.op(rules.RESERVE, channel="web", qty=2, until=rules.CLEARING)
    assert again.dup and again.result == held.result


async def test_a_reserve_without_an_expiry_takes_the_hubs_default_hold(redis_client: Any) -> None:
    by_default = RedisStore(redis_client)  # default: the daily clearing, 00:00 Asia/Shanghai
    assert (await Till(by_default, "ops").op(rules.RESTOCK, qty=10)).ok
    before = await redis_ms(redis_client)
    held = await Till(by_default, "c1").op(rules.RESERVE, channel="web", qty=1)
    assert held.ok and held.result is not None
    local = dt.datetime.fromtimestamp(held.result["until"] / 1000, ZoneInfo("Asia/Shanghai"))
    assert (local.hour, local.minute) == (0, 0) and held.result["until"] > before
    short = RedisStore(redis_client, holds=HoldPolicy(default_ttl_ms=900_000))
    before = await redis_ms(redis_client)
    quick = await Till(short, "c2").op(rules.RESERVE, channel="web", qty=1)
    assert quick.ok and quick.result is not None
    assert before + 900_000 <= quick.result["until"] <= before + 900_000 + 60_000


def test_the_hold_policy_candidates_cover_a_hub_clock_skewed_by_hours() -> None:
    policy = HoldPolicy()
    now = int(time.time() * 1000)
    for skew in (-3 * 3600_000, 0, 3 * 3600_000):
        instants = policy.clearing_argv(now + skew)
        assert rules.resolve_until(now, clearing=[int(x) for x in instants]) is not None


ZONES = ["Asia/Shanghai", "America/New_York", "Europe/London", "Australia/Lord_Howe"]
_sku = itertools.count()


@given(
    zone=st.sampled_from(ZONES),
    at=st.times().map(lambda t: t.replace(second=0, microsecond=0)),
    mode=st.sampled_from(["ttl", "until", "clearing", "default"]),
    amount=st.integers(-3_600_000, rules.MAX_TTL_MS + 3_600_000),
    default_ttl=st.none() | st.integers(1, rules.MAX_TTL_MS),
)
@settings(
    max_examples=examples(40), suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None
)
async def test_the_reserve_script_ends_holds_as_the_reference_says(
    redis_client: Any, zone: str, at: dt.time, mode: str, amount: int, default_ttl: int | None
) -> None:
    tz = ZoneInfo(zone)
    store = RedisStore(
        redis_client, holds=HoldPolicy(clearing_at=at, clearing_tz=tz, default_ttl_ms=default_ttl)
    )
    sku = f"H{next(_sku)}"
    restock = frames.Op(seq=1, kind=rules.RESTOCK, args={"member": "o", "sku": sku, "qty": 1})
    assert (await store.apply_op(f"{sku}-ops", restock)).ok
    args: dict[str, Any] = {"member": "m1", "sku": sku, "channel": "web", "qty": 1}
    before = await redis_ms(redis_client)
    if mode == "ttl":
        args["ttl_ms"] = max(1, min(amount, rules.MAX_TTL_MS))
    elif mode == "until":
        args["until"] = max(1, before + amount)
    elif mode == "clearing":
        args["until"] = rules.CLEARING
    got = await store.apply_op(f"{sku}-c", frames.Op(seq=1, kind=rules.RESERVE, args=args))
    after = await redis_ms(redis_client)

    def want(now: int) -> int | None:
        if "ttl_ms" in args or ("until" not in args and default_ttl is not None):
            return rules.resolve_until(now, ttl_ms=args.get("ttl_ms", default_ttl))
        if isinstance(args.get("until"), int):
            return rules.resolve_until(now, until=args["until"])
        return rules.resolve_until(now, clearing=rules.clearing_instants(now, at, tz))

    answers = {want(before), want(after)} if "ttl_ms" not in args and "until" in args else None
    if answers is not None and len(answers) > 1:
        return  # a boundary crossed while the op ran: either answer is right
    if got.ok:
        assert got.result is not None
        until = got.result["until"]
        if answers is not None:
            assert answers == {until}, (args, answers, until)
        else:  # a ttl: now + ttl, with now somewhere in [before, after]
            assert want(before) is not None and want(before) <= until <= (want(after) or until), (args, until)
    else:
        assert got.code == "bad_args" and want(after) is None and want(before) is None, (args, got.code)
