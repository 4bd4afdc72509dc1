"""End-to-end fixtures: real Redis servers (from tests/conftest.py) and real hub processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from syncd.embedded import EmbeddedRedis
from tests.e2e.harness import HubProcess, WireClient

HubFactory = Callable[..., HubProcess]


@pytest.fixture
def hub_factory(tmp_path: Path) -> Iterator[HubFactory]:
    """``hub_factory(redis_url, **env)`` starts one more hub process; all are stopped after the test."""
    hubs: list[HubProcess] = []

    def start(redis_url: str, **env: str) -> HubProcess:
        hub = HubProcess(redis_url, tmp_path, env).start()
        hubs.append(hub)
        return hub

    yield start
    for hub in hubs:
        hub.stop()


@pytest.fixture
def hub(redis_server: EmbeddedRedis, hub_factory: HubFactory) -> HubProcess:
    return hub_factory(redis_server.url)


@pytest.fixture(autouse=True)
async def _close_wire_clients() -> AsyncIterator[None]:
    """Close every websocket a test opened, before its hubs stop."""
    yield
    clients, WireClient.opened[:] = list(WireClient.opened), []
    for client in clients:
        await client.ws.close()
