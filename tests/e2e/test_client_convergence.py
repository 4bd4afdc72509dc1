"""SDK clients against a real hub process and real Redis: offline edits converge, by the cart rules.

* An app and a POS terminal edit the same member's cart while both are offline, then reconnect in either
  order: both end with the hub's cart, which equals the reference rules (protocol.cart) applied to the
  exact ops they sent — and, the rules being order-free for these ops, equals it in the other order too.
* A hypothesis property: random schedules of a few clients making cart ops, going offline and online,
  restarting, and losing connections with ops in flight (resent: duplicate deliveries) all converge to one
  cart equal to the hub's, with every op applied exactly once (the hub's event log has each origin once).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clients import Cart, SyncClient
from clients.store import SQLiteOutbox
from protocol import cart as rules
from protocol import frames
from syncd.embedded import EmbeddedRedis
from tests.clients.hubtools import hub_cart, hub_history
from tests.conftest import RedisServerFactory
from tests.e2e.harness import HubProcess, token
from tests.profiles import examples

pytestmark = pytest.mark.e2e


def instant() -> Iterator[float]:
    while True:
        yield 0.02


def sdk(url: str, data_dir: Path, client_id: str, **options: Any) -> SyncClient:
    return SyncClient(
        url, token=token(client_id), data_dir=data_dir, client_id=client_id, backoff=instant, **options
    )


async def outbox_ops(client: SyncClient) -> list[frames.Op]:
    store = client._store
    assert isinstance(store, SQLiteOutbox)
    return await store.load_pending(0, 10_000)


async def shows(cart: Cart, qty: dict[str, int], timeout: float = 20) -> None:
    """Wait until ``cart`` shows these quantities. ``wait_synced`` says a device's own ops are applied and its
    subscriptions caught up, not that another device's latest events have crossed the hub to it yet."""
    changes = cart.changes()  # registered before the check: no change can fall between the two
    try:
        async with asyncio.timeout(timeout):
            while {sku: line.qty for sku, line in cart.lines.items()} != qty:
                await anext(changes)
    except TimeoutError:
        raise AssertionError(f"{cart} shows {cart.lines}, not {qty}") from None
    finally:
        await changes.aclose()


def replay(base: dict[str, Any], *batches: tuple[str, list[frames.Op]]) -> dict[str, Any]:
    """The reference rules applied to ``base`` then to each client's ops, in order: the expected cart."""
    cart: rules.Cart = {"lines": dict(base), "folds": 0}
    for client_id, ops in batches:
        for op in ops:
            outcome = rules.apply(
                cart,
                rules.parse_op(op.kind, op.args, client_id=client_id, seq=op.seq, hlc=op.hlc, ctx=op.ctx),
            )
            assert outcome.rejected is None
            cart = outcome.cart
    lines: dict[str, Any] = rules.snapshot(cart)["lines"]
    return lines


@pytest.mark.parametrize("first", ["app", "pos"])
async def test_offline_edits_on_app_and_pos_converge_to_the_rules_result_in_either_order(
    hub: HubProcess, tmp_path: Path, first: str
) -> None:
    member = f"m-{first}"
    app = sdk(hub.url, tmp_path / "app", "app-1")
    pos = sdk(hub.url, tmp_path / "pos", "pos-1")
    async with app, pos:
        app_cart, pos_cart = app.cart(member), pos.cart(member)
        await app_cart.add("SKU-1", 2)
        await app_cart.add("SKU-2", 1)
        await app.wait_synced(20)
        await shows(pos_cart, {"SKU-1": 2, "SKU-2": 1})
        assert pos_cart.lines == app_cart.lines
        base = await hub_cart(hub.url, member)
        await app.go_offline()
        await pos.go_offline()
        # concurrent edits, each made against the same base
        await app_cart.add("SKU-1", 1)  # adds commute: 2 + 1 (+ pos's 3)
        await app_cart.set("SKU-2", 5)  # concurrent with pos's set: a conflict, decided by HLC
        await app_cart.add("SKU-3", 1)
        await pos_cart.add("SKU-1", 3)
        await pos_cart.set("SKU-2", 4)
        await pos_cart.remove("SKU-3")  # saw no SKU-3: removes nothing of the app's add (add-wins)
        await pos_cart.add("SKU-4", 2)
        app_ops, pos_ops = await outbox_ops(app), await outbox_ops(pos)
        order = [(app, "app-1", app_ops), (pos, "pos-1", pos_ops)]
        if first == "pos":
            order.reverse()
        for client, _, _ in order:
            await client.go_online()
            await client.wait_synced(20)
        for client, _, _ in order:
            await client.wait_synced(20)
        expected = replay(base, *[(cid, ops) for _, cid, ops in order])
        other_order = replay(base, *[(cid, ops) for _, cid, ops in reversed(order)])
        assert expected == other_order  # the same cart, byte for byte, in either order
        assert await hub_cart(hub.url, member) == expected
        for cart in (app_cart, pos_cart):
            await shows(cart, {sku: line["qty"] for sku, line in expected.items()})
        assert expected["SKU-1"]["qty"] == 6 and expected["SKU-3"]["qty"] == 1


# --- the property ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_hub(
    redis_server_factory: RedisServerFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HubProcess]:
    redis: EmbeddedRedis = redis_server_factory()
    hub = HubProcess(redis.url, tmp_path_factory.mktemp("hub")).start()
    yield hub
    hub.stop()


op_spec = st.one_of(
    st.tuples(st.just("add"), st.sampled_from(["A", "B", "C"]), st.integers(1, 3)),
    st.tuples(st.just("set"), st.sampled_from(["A", "B", "C"]), st.integers(0, 4)),
    st.tuples(st.just("remove"), st.sampled_from(["A", "B", "C"]), st.just(0)),
    st.tuples(st.just("clear"), st.just(""), st.just(0)),
)
step = st.one_of(
    st.tuples(st.just("op"), st.integers(0, 2), op_spec),
    st.tuples(st.sampled_from(["offline", "online", "restart", "drop"]), st.integers(0, 2), st.none()),
)


class _Fleet:
    def __init__(self, url: str, root: Path, member: str, n: int) -> None:
        self.url, self.root, self.member = url, root, member
        self.ids = [f"c{i}-{uuid.uuid4().hex[:8]}" for i in range(n)]
        self.clients: list[SyncClient] = []
        self.made: dict[str, int] = dict.fromkeys(self.ids, 0)

    async def open(self, i: int, *, online: bool) -> SyncClient:
        client = sdk(self.url, self.root / self.ids[i], self.ids[i], online=online)
        await client.start()
        client.cart(self.member)
        return client


@contextlib.asynccontextmanager
async def fleet(url: str, root: Path, member: str, n: int) -> AsyncIterator[_Fleet]:
    f = _Fleet(url, root, member, n)
    f.clients = [await f.open(i, online=True) for i in range(n)]
    try:
        yield f
    finally:
        for client in f.clients:
            await client.close()


@settings(max_examples=examples(25), deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(step, min_size=1, max_size=12), st.integers(2, 3))
def test_random_schedules_of_clients_converge_to_the_hubs_cart_with_every_op_applied_once(
    shared_hub: HubProcess,
    tmp_path_factory: pytest.TempPathFactory,
    steps: list[tuple[str, int, Any]],
    n: int,
) -> None:
    root = tmp_path_factory.mktemp("fleet")
    asyncio.run(_schedule(shared_hub.url, root, steps, n))


async def _schedule(url: str, root: Path, steps: list[tuple[str, int, Any]], n: int) -> None:
    member = f"p-{uuid.uuid4().hex[:12]}"
    async with fleet(url, root, member, n) as f:
        for name, index, spec in steps:
            i = index % n
            client = f.clients[i]
            if name == "op":
                kind, sku, qty = spec
                cart = client.cart(member)
                if kind == "add":
                    await cart.add(sku, qty)
                elif kind == "set":
                    await cart.set(sku, qty)
                elif kind == "remove":
                    await cart.remove(sku)
                else:
                    await cart.clear()
                f.made[f.ids[i]] += 1
            elif name == "offline":
                await client.go_offline()
            elif name == "online":
                await client.go_online()
            elif name == "restart":  # close with whatever is in flight, open again from the data directory
                online = client.status.state.value != "offline"
                await client.close()
                f.clients[i] = await f.open(i, online=online)
            elif name == "drop":  # the connection dies with ops in flight: they are sent again
                await client.go_offline()
                await client.go_online()
        for client in f.clients:
            await client.go_online()
        for _ in range(2):
            for client in f.clients:
                await client.wait_synced(30)
        expected = await hub_cart(url, member)
        for client in f.clients:
            await shows(client.cart(member), {s: line["qty"] for s, line in expected.items()}, 30)
        history = await hub_history(url, member)
        origins = [(e.origin.client_id, e.origin.seq) for e in history if e.origin is not None]
        assert len(origins) == len(set(origins)), "an op was applied twice"
        rejected = {r.seq for client in f.clients for r in await client.pending_rejections()}
        for cid in f.ids:
            applied = sorted(seq for c, seq in origins if c == cid)
            assert applied == sorted(set(range(1, f.made[cid] + 1)) - rejected), cid
