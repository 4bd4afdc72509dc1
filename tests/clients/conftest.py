"""Fixtures for client tests: a fake hub behind a real websocket server, and data directories."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.clients.fake_server import FakeHubServer


@pytest.fixture
async def server() -> AsyncIterator[FakeHubServer]:
    async with FakeHubServer() as running:
        yield running


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "client"
