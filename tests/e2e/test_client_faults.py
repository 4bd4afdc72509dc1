"""Faults under a replaying SDK client, with real hub processes and real Redis: the hub killed mid-replay,
the connection cut in the middle of a websocket frame (both directions), Redis killed and restarted.

Every test ends the same way and checks the same invariants: the client is online with an empty outbox, its
cart equals the hub's, and the hub holds every op exactly once — the quantities are exact sums of adds (a
lost op lowers one, a doubled op raises one) and the hub's watermark for the client is the last seq.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients import ConnectionState, Status, SyncClient
from syncd.embedded import EmbeddedRedis
from tests.clients.hubtools import TcpProxy, hub_cart, hub_last_seq, quantities
from tests.e2e.conftest import HubFactory
from tests.e2e.harness import HubProcess, token

pytestmark = pytest.mark.e2e
SKUS = 9


def quick() -> Iterator[float]:
    """Reconnect delays for tests: jittered like the real ones, but short."""
    delay = 0.02
    while True:
        yield delay
        delay = min(0.3, delay * 2)


def client_for(url: str, data_dir: Path, client_id: str, **options: object) -> SyncClient:
    return SyncClient(
        url, token=token(client_id), data_dir=data_dir, client_id=client_id, backoff=quick, **options
    )  # type: ignore[arg-type]


async def queue_offline(client: SyncClient, member: str, n: int) -> collections.Counter[str]:
    cart = client.cart(member)
    await asyncio.gather(*(cart.add(f"SKU-{i % SKUS}", 1) for i in range(n)))
    return collections.Counter(f"SKU-{i % SKUS}" for i in range(n))


async def until(client: SyncClient, predicate: object, timeout: float = 30) -> Status:
    async with asyncio.timeout(timeout):
        async for status in client.status_changes():
            if predicate(status):  # type: ignore[operator]
                return status
    raise AssertionError("the client closed")


async def check_exactly_once(
    client: SyncClient, url: str, member: str, expected: collections.Counter[str], n: int
) -> None:
    status = await client.wait_synced(60)
    assert status.state is ConnectionState.ONLINE and status.pending_ops == 0
    hub_lines = quantities(await hub_cart(url, member))
    assert hub_lines == dict(expected)
    assert {sku: line.qty for sku, line in client.cart(member).lines.items()} == hub_lines
    await client.close()
    assert await hub_last_seq(url, client.client_id) == n


async def test_a_hub_killed_mid_replay_loses_and_doubles_nothing(
    redis_server: EmbeddedRedis, hub_factory: HubFactory, tmp_path: Path
) -> None:
    first = hub_factory(redis_server.url)
    n, member = 2000, "m-hubkill"
    async with TcpProxy(first.port) as proxy:
        client = client_for(proxy.url, tmp_path / "pos", "pos-hubkill", online=False)
        async with client:
            expected = await queue_offline(client, member, n)
            await client.go_online()
            await until(client, lambda s: s.pending_ops <= n - 300)  # replay well under way
            first.kill()  # SIGKILL: acks in flight are lost, some applied ops never acked
            proxy.drop_all()
            second = hub_factory(redis_server.url)
            proxy.target_port = second.port
            await check_exactly_once(client, second.url, member, expected, n)


@pytest.mark.parametrize("direction", ["to_hub", "to_client"])
async def test_a_connection_cut_mid_frame_loses_and_doubles_nothing(
    hub: HubProcess, tmp_path: Path, direction: str
) -> None:
    n, member = 1500, f"m-cut-{direction}"
    async with TcpProxy(hub.port) as proxy:
        client = client_for(
            proxy.url, tmp_path / "pos", f"pos-cut-{direction.replace('_', '-')}", online=False
        )
        async with client:
            expected = await queue_offline(client, member, n)
            # an ops batch is several KiB; acks and events come in chunks of a few hundred bytes
            proxy.cut_mid_frame(direction, min_bytes=4096 if direction == "to_hub" else 256)
            await client.go_online()
            await asyncio.wait_for(proxy.cut_done.wait(), 30)
            await check_exactly_once(client, hub.url, member, expected, n)
        assert proxy.connections >= 2  # it had to reconnect


async def test_redis_killed_and_restarted_mid_replay_loses_and_doubles_nothing(
    redis_server: EmbeddedRedis, hub: HubProcess, tmp_path: Path
) -> None:
    n, member = 1500, "m-redis"
    client = client_for(hub.url, tmp_path / "pos", "pos-redis", online=False)
    async with client:
        expected = await queue_offline(client, member, n)
        await client.go_online()
        await until(client, lambda s: s.pending_ops <= n - 200)
        redis_server.kill()
        status = await until(client, lambda s: s.last_error is not None or not s.online, timeout=30)
        assert status.pending_ops > 0
        redis_server.restart()
        await check_exactly_once(client, hub.url, member, expected, n)
