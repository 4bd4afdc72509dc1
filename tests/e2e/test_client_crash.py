"""Kill -9 a POS process with 1,000+ ops queued offline; restart it offline, then online: nothing lost,
nothing doubled. A real hub process and real Redis; the client runs in its own process so that SIGKILL hits
it mid-commit."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients import ConnectionState, SyncClient
from tests.clients.crash_child import sku_of
from tests.clients.hubtools import hub_cart, hub_last_seq, quantities
from tests.e2e.harness import HubProcess, token

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def instant() -> Iterator[float]:
    while True:
        yield 0.02


def run_child_until(data_dir: Path, client_id: str, member: str, count: int) -> int:
    """Start the POS process and SIGKILL it once it has reported ``count`` committed ops; its last report."""
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.clients.crash_child", str(data_dir), client_id, member],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert child.stdout is not None
    last = 0
    try:
        for line in child.stdout:
            last = int(line)
            if last >= count:
                child.send_signal(signal.SIGKILL)
                break
        # What it reported between the line read above and its death is still in the pipe: a busy machine
        # lets it commit (and report) a few more before the signal lands.
        for line in child.stdout:
            last = int(line)
    finally:
        child.kill()
        child.wait(10)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL, "the child died of something else"
    return last


async def test_a_killed_pos_keeps_every_committed_op_and_applies_each_exactly_once(
    hub: HubProcess, tmp_path: Path
) -> None:
    data_dir, client_id, member = tmp_path / "pos", "pos-crash-1", "m-crash"
    reported = run_child_until(data_dir, client_id, member, 1000)
    client = SyncClient(
        hub.url, token=token(client_id), data_dir=data_dir, client_id=client_id, online=False, backoff=instant
    )
    async with client:
        status = client.status
        committed = status.pending_ops
        # Every op the process reported is there; at most the one being committed when it died is extra.
        assert reported <= committed <= reported + 1
        assert status.state is ConnectionState.OFFLINE
        expected = collections.Counter(sku_of(seq) for seq in range(1, committed + 1))
        cart = client.cart(member)
        assert {sku: line.qty for sku, line in cart.lines.items()} == expected  # the cart as it was, offline
        assert cart.has_pending_writes and cart.from_cache
        await client.go_online()
        status = await client.wait_synced(60)
        assert status.pending_ops == 0 and status.online
        assert {sku: line.qty for sku, line in cart.lines.items()} == expected
    assert quantities(await hub_cart(hub.url, member)) == expected  # all applied, none twice
    assert await hub_last_seq(hub.url, client_id) == committed
