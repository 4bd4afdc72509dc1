"""The ``replay`` workload's POS day: one till's day of sales queued offline, then replayed at once.

A till (an SDK client with a ``pos`` token for store ``s1``) learns its store's allotment of a few stock SKUs
online, goes offline, and serves ``customers`` customers in turn: each opens a cart (``cart:<member>``), adds
items, corrects one line with a ``cart.set``, sells some units from the allotment (``stock.sell``, the sale
the SDK may make offline), and closes the cart (unsubscribes) — ``ops`` ops in all. The data dir is closed and
reopened offline (the till restarted the next morning), and ``go_online()`` → ``wait_synced()`` is timed.

Exactly once is checked in Redis, not through the till: the hub's watermark of the till equals ``ops``,
every cart holds the units its ops put there, and the SKUs' ``sold`` equals the units sold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import msgspec
from redis.asyncio import Redis

from benchmarks.dialects import TOKEN_SECRET
from benchmarks.loadgen import Queue, _report
from benchmarks.replay import timed_replay
from benchmarks.stockload import admin_op, restock
from protocol import stock as rules
from protocol.topics import parse_topic
from syncd.auth import mint_token
from syncd.store.keys import client_slot, topic_slot

STORE: Final = "s1"
CLIENT_ID: Final = "pos-day-1"
STOCK_SKUS: Final = tuple(f"pos-{i}" for i in range(20))
"""SKUs sold from the store's allotment."""
CATALOG: Final = tuple(f"item-{i}" for i in range(60))
"""SKUs put into carts (distinct within a cart)."""
ALLOT: Final = 1000
"""Units of each stock SKU allotted to the till's store (more than any day sells)."""


def plan(ops: int, customers: int) -> list[tuple[int, list[tuple[str, str]]]]:
    """Per customer: ``(customer, [(kind, sku), ...])``, ``ops`` ops in all: one sale per five ops, one
    ``cart.set`` of the first line, adds of distinct catalog SKUs for the rest."""
    plans = []
    for c in range(customers):
        count = ops // customers + (1 if c < ops % customers else 0)
        sells = count // 5
        sets = 1 if count - sells >= 2 else 0
        adds = count - sells - sets
        steps = [("cart.add", CATALOG[(c * 7 + j) % len(CATALOG)]) for j in range(adds)]
        steps += [("cart.set", steps[0][1])] * sets
        steps += [(rules.SELL, STOCK_SKUS[(c + j) % len(STOCK_SKUS)]) for j in range(sells)]
        plans.append((c, steps))
    return plans


def _token(client_id: str) -> str:
    return mint_token(TOKEN_SECRET, client_id=client_id, role="pos", store=STORE, members=["*"])


def posday_load(
    url: str, redis_url: str, data_dir: str, ops: int, customers: int, pids: dict[str, int], out: Queue
) -> None:
    _report(out, _posday(url, redis_url, Path(data_dir), ops, customers, pids))


async def _posday(
    url: str, redis_url: str, data_dir: Path, ops: int, customers: int, pids: dict[str, int]
) -> dict[str, Any]:
    from clients import SyncClient  # the SDK, as a till runs it

    for sku in STOCK_SKUS:
        await restock(url, sku, 2 * ALLOT)
        await _allot(url, sku)
    plans = plan(ops, customers)
    till = SyncClient(url, token=_token, data_dir=data_dir, client_id=CLIENT_ID)
    async with till as client:
        stocks = {sku: client.stock(sku) for sku in STOCK_SKUS}
        await client.wait_synced(timeout=120)
        await client.go_offline()
        for c, steps in plans:
            cart = client.cart(f"c-{c}")
            for kind, sku in steps:
                if kind == "cart.add":
                    await cart.add(sku, 1)
                elif kind == "cart.set":
                    await cart.set(sku, 2)
                else:
                    await stocks[sku].sell(f"c-{c}", 1, store=STORE)
            await cart.unsubscribe()
        queued = client.status.pending_ops
    reopened = SyncClient(url, token=_token, data_dir=data_dir, client_id=CLIENT_ID, online=False)
    async with reopened as client:
        for sku in STOCK_SKUS:
            client.stock(sku)
        seconds, cpu_us, pending_after = await timed_replay(client, ops, pids)
    checked = await _check(redis_url, plans)
    return {
        "ops": ops,
        "customers": customers,
        "sells": sum(1 for _, steps in plans for kind, _ in steps if kind == rules.SELL),
        "replay_s": round(seconds, 3),
        "replay_ops_per_s": round(ops / seconds) if seconds else None,
        "cpu_us_per_op": cpu_us,
        "queued": queued,
        "pending_after_replay": pending_after,
        **checked,
    }


async def _allot(url: str, sku: str) -> None:
    """``ALLOT`` units of ``sku`` to the till's store, through the hub as ops staff would."""
    await admin_op(url, rules.ALLOT, {"member": "ops", "sku": sku, "store": STORE, "qty": ALLOT})


async def _check(redis_url: str, plans: list[tuple[int, list[tuple[str, str]]]]) -> dict[str, Any]:
    """What Redis holds after the replay: the till's watermark, the carts that hold what their ops put
    there (each add 1 unit of a new line, the set makes its line 2), and the units sold of the SKUs."""
    redis = Redis.from_url(redis_url)
    try:
        last = await redis.hget(f"{client_slot(CLIENT_ID)}:seq", "last")
        carts_right = 0
        for c, steps in plans:
            raw = await redis.hgetall(f"{topic_slot(parse_topic(f'cart:c-{c}'))}:cart")
            units = sum(msgspec.msgpack.decode(line)["qty"] for line in raw.values())
            expected = sum(1 for kind, _ in steps if kind == "cart.add") + sum(
                1 for kind, _ in steps if kind == "cart.set"
            )
            carts_right += units == expected
        sold = 0
        for sku in STOCK_SKUS:
            state = await redis.hget(f"{topic_slot(parse_topic(f'stock:{sku}'))}:stock", "sold")
            sold += int(state or 0)
    finally:
        await redis.aclose()
    return {"hub_last_seq": int(last or 0), "carts_right": carts_right, "units_sold": sold}
