"""Fixtures for the hub's tests without sockets (:mod:`tests.syncd.hubkit`): a real store and fan-out over a
private Redis, the hub over them with a manual ticker, and everything closed after the test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from syncd.auth import TokenVerifier, mint_token
from syncd.embedded import EmbeddedRedis
from syncd.fanout import Fanout
from syncd.hub import Hub
from syncd.settings import Settings
from syncd.store.redis_store import RedisStore, channel
from tests.syncd.hubkit import SECRET, Device, ManualTicker

MakeDevice = Callable[..., Device]


@pytest.fixture
def hub_redis(redis_server_factory: Callable[..., EmbeddedRedis]) -> Iterator[EmbeddedRedis]:
    server = redis_server_factory(appendonly=False)
    yield server
    server.stop()


@pytest.fixture
def hub_settings(tmp_path: Any) -> Settings:
    return Settings(data_dir=tmp_path, token_secret=SECRET)


@pytest.fixture
async def hub(hub_redis: EmbeddedRedis, hub_settings: Settings) -> AsyncIterator[Hub]:
    """The hub's services over a private Redis, its ticker in the test's hands."""
    client = Redis.from_url(hub_redis.url)
    store = RedisStore(client)
    fanout = Fanout(lambda: Redis.from_url(hub_redis.url), channel)
    await fanout.start()
    made = Hub(hub_settings, store, fanout, TokenVerifier(SECRET))
    made.ticker = ManualTicker()  # type: ignore[assignment]
    try:
        yield made
    finally:
        await made.close()
        await fanout.close()
        await client.aclose()


@pytest.fixture
async def device(hub: Hub) -> AsyncIterator[MakeDevice]:
    """``device(client_id="app-1", members=["m1"], **claims)`` — a client connected to the hub (hello not
    sent yet); every device is disconnected after the test."""
    made: list[Device] = []

    def make(
        client_id: str = "app-1", *, token: str | None = None, headers: Any = None, **claims: Any
    ) -> Device:
        claims.setdefault("members", ["m1"])
        if token is None:
            token = mint_token(SECRET, client_id=client_id, **claims)
        dev = Device(hub, client_id, token, headers)
        made.append(dev)
        return dev

    yield make
    for dev in made:
        await dev.close()
