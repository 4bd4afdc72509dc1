"""Devices that live for days offline, on real hub processes, real Redis and the real SDK.

A till comes back after its token expired; a client that cannot make progress says why to every waiter at
once; a hub that cannot be reached shows in the status and in one log line; a client moves to another hub
of the deployment; after a crash the app gets handles for the ops still queued; the blocking facade waits
on many handles and follows the status from one thread.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

import clients.client as client_module
from clients import (
    AuthRequired,
    ChangeCause,
    ClientStopped,
    ConnectionClosed,
    ConnectionState,
    OpRejected,
    OutboxStalled,
    Status,
    SubscriptionRefused,
    SyncClient,
    SyncClientSync,
)
from clients.store import DB_NAME
from protocol.connection import ClientProtocol
from syncd.embedded import EmbeddedRedis
from tests.clients.crash_child import sku_of
from tests.clients.hubtools import TcpProxy, hub_cart, hub_last_seq, quantities
from tests.e2e.conftest import HubFactory
from tests.e2e.harness import HubProcess, token
from tests.e2e.test_client_crash import run_child_until

pytestmark = pytest.mark.e2e


def quick() -> Iterator[float]:
    while True:
        yield 0.02


async def until(client: SyncClient, check: object, timeout: float = 15.0) -> Status:
    """The first status (current or later) for which ``check(status)`` holds."""
    assert callable(check)
    async with asyncio.timeout(timeout):
        async for status in client.status_changes():
            if check(status):
                return status
    raise AssertionError("the client closed first")


# --- a token that expired while the till was offline -------------------------------------------------------


async def test_a_till_whose_token_expired_offline_waits_in_auth_required_and_resumes_on_set_token(
    hub: HubProcess, tmp_path: Path
) -> None:
    async with TcpProxy(hub.port) as proxy:
        client = SyncClient(
            proxy.url,
            token=token("pos-1", ttl_s=-3600),  # issued for an hour, a day ago
            data_dir=tmp_path / "pos",
            client_id="pos-1",
            online=False,
            backoff=quick,
        )
        async with client:
            cart = client.cart("m1")
            sale = await cart.add("SKU-1", 2)
            await cart.add("SKU-2", 1)
            await client.go_online()
            status = await until(client, lambda s: s.state is ConnectionState.AUTH_REQUIRED)
            assert isinstance(status.last_error, AuthRequired) and status.last_error.code == 4501
            assert status.pending_ops == 2 and status.stopped
            with pytest.raises(AuthRequired) as refused:
                await asyncio.wait_for(sale.acked(), 2)  # at once, with the close code and reason
            assert refused.value.code == 4501 and "expired" in refused.value.reason
            with pytest.raises(AuthRequired):
                await client.wait_synced(timeout=60)
            await asyncio.sleep(0.5)  # forty backoff delays: a client that spun would reconnect meanwhile
            assert proxy.connections == 1 and client.status.pending_ops == 2
            client.set_token(token("pos-1"))  # the till fetched a fresh token
            await client.wait_synced(timeout=20)
            assert await sale.acked() == {"qty": 2}  # the same handle, now with the hub's answer
    assert quantities(await hub_cart(hub.url, "m1")) == {"SKU-1": 2, "SKU-2": 1}
    assert await hub_last_seq(hub.url, "pos-1") == 2


async def test_a_token_provider_renews_an_expired_token_without_the_app(
    hub: HubProcess, tmp_path: Path
) -> None:
    issued: list[str] = []

    def provider(client_id: str) -> str:  # the first token is the one cached before the till went offline
        issued.append(client_id)
        return token(client_id, ttl_s=-3600 if len(issued) == 1 else 3600)

    async with SyncClient(
        hub.url, token=provider, data_dir=tmp_path / "pos", client_id="pos-1", online=False, backoff=quick
    ) as client:
        sale = await client.cart("m1").add("SKU-1", 1)
        await client.go_online()
        assert await asyncio.wait_for(sale.acked(), 20) == {"qty": 1}  # nobody saw a failure
        assert client.status.state is ConnectionState.ONLINE and len(issued) == 2


# --- nothing hangs without saying why ----------------------------------------------------------------------


async def test_a_token_for_another_client_than_the_data_dir_fails_every_waiter_at_once(
    hub: HubProcess, tmp_path: Path
) -> None:
    data_dir = tmp_path / "pos"
    async with SyncClient(hub.url, token="unused", data_dir=data_dir, online=False) as first_run:
        stored_id = first_run.client_id  # the directory belongs to a generated client id
    async with SyncClient(hub.url, token=token("pos-1"), data_dir=data_dir, backoff=quick) as client:
        sale = await client.cart("m1").add("SKU-1", 1)
        waiters = [asyncio.ensure_future(sale.acked()), asyncio.ensure_future(client.wait_synced())]
        done, _ = await asyncio.wait(waiters, timeout=15)
        assert len(done) == 2, "a waiter hangs"
        for waiter in waiters:
            error = waiter.exception()
            assert isinstance(error, AuthRequired) and error.code == 4500
            assert "client_id" in error.reason
        assert client.status.state is ConnectionState.AUTH_REQUIRED and client.status.pending_ops == 1
    assert stored_id != "pos-1"


@pytest.fixture
def speaks_only_version_2(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's SDK offers only protocol version 2, as a newer build would; the hub speaks 1."""
    monkeypatch.setattr(client_module, "ClientProtocol", functools.partial(ClientProtocol, versions=(2,)))


@pytest.mark.usefixtures("speaks_only_version_2")
async def test_a_hub_that_speaks_no_common_version_fails_every_waiter_at_once_and_keeps_the_ops(
    hub: HubProcess, tmp_path: Path
) -> None:
    async with SyncClient(
        hub.url, token=token("pos-1"), data_dir=tmp_path / "pos", client_id="pos-1"
    ) as client:
        sale = await client.cart("m1").add("SKU-1", 1)
        waiters = [asyncio.ensure_future(sale.acked()), asyncio.ensure_future(client.wait_synced())]
        done, _ = await asyncio.wait(waiters, timeout=15)
        assert len(done) == 2, "a waiter hangs"
        for waiter in waiters:
            error = waiter.exception()
            assert isinstance(error, ClientStopped) and error.code == 4503
            assert "version" in error.reason
        assert client.status.state is ConnectionState.STOPPED and client.status.pending_ops == 1
    assert await hub_last_seq(hub.url, "pos-1") == 0  # nothing reached the hub


@pytest.mark.usefixtures("speaks_only_version_2")
def test_the_blocking_result_fails_at_once_when_no_version_is_common(hub: HubProcess, tmp_path: Path) -> None:
    with SyncClientSync(hub.url, token=token("pos-1"), data_dir=tmp_path / "pos", client_id="pos-1") as pos:
        sale = pos.cart("m1").add("SKU-1", 1)
        with pytest.raises(ClientStopped) as stopped:
            sale.result(timeout=None)  # returns as soon as the hub refused the version
        assert stopped.value.code == 4503 and pos.status.pending_ops == 1


def test_the_blocking_result_fails_at_once_and_timeouts_name_their_timeout(
    hub: HubProcess, tmp_path: Path
) -> None:
    with SyncClientSync(
        hub.url, token=token("pos-1", ttl_s=-3600), data_dir=tmp_path / "pos", client_id="pos-1", online=False
    ) as pos:
        sale = pos.cart("m1").add("SKU-1", 1)
        with pytest.raises(TimeoutError, match=r"within 0\.2 s") as waited:
            pos.wait_synced(timeout=0.2)  # offline on purpose: nothing fails, time runs out
        assert "None" not in str(waited.value) and "offline" in str(waited.value)
        with pytest.raises(TimeoutError, match=r"op 1 \(cart.add\) got no answer within 0\.2 s"):
            sale.result(timeout=0.2)
        pos.go_online()
        with pytest.raises(AuthRequired) as refused:
            sale.result(timeout=None)  # returns at once: the token is refused
        assert refused.value.code == 4501


async def test_an_outbox_the_hubs_history_does_not_hold_fails_waiters_with_outbox_stalled(
    hub: HubProcess, tmp_path: Path
) -> None:
    data_dir = tmp_path / "pos"
    async with SyncClient(hub.url, token="x", data_dir=data_dir, client_id="pos-1", online=False) as client:
        for _ in range(3):
            await client.cart("m1").add("SKU-1", 1)
    with sqlite3.connect(data_dir / DB_NAME) as db:  # ops 1 and 2 lost: a data directory from elsewhere
        db.execute("DELETE FROM outbox WHERE seq < 3")
    async with SyncClient(
        hub.url, token=token("pos-1"), data_dir=data_dir, client_id="pos-1", backoff=quick
    ) as client:
        [left] = await client.pending_ops()
        with pytest.raises(OutboxStalled) as stalled:
            await asyncio.wait_for(left.acked(), 15)
        assert stalled.value.seq == 3
        with pytest.raises(OutboxStalled):
            await asyncio.wait_for(client.wait_synced(), 5)
        assert client.status.state is ConnectionState.ONLINE and client.status.pending_ops == 1  # kept


async def test_an_unreachable_hub_shows_in_the_status_within_seconds_and_in_one_log_line(
    hub: HubProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="clients")
    async with SyncClient(
        hub.url, token=token("pos-1"), data_dir=tmp_path / "pos", client_id="pos-1"
    ) as client:
        await client.cart("m1").add("SKU-1", 1)
        await client.wait_synced(timeout=20)
        caplog.clear()
        await asyncio.to_thread(hub.kill)
        status = await until(client, lambda s: s.attempts >= 1, timeout=5)  # the default backoff
        assert status.state is ConnectionState.CONNECTING and status.hub == hub.url
        assert isinstance(status.last_error, ConnectionClosed) and "cannot connect" in str(status.last_error)
        await until(client, lambda s: s.attempts >= 3, timeout=20)
        lines = [r.getMessage() for r in caplog.records if r.name == "clients"]
        assert len(lines) == 2, lines  # the connection ended; the hub cannot be reached — not one per attempt
        assert "ended" in lines[0] and "cannot reach" in lines[1]


# --- several hubs ------------------------------------------------------------------------------------------


async def test_a_client_moves_to_another_hub_with_its_outbox_cursors_and_waiting_handles(
    redis_server: EmbeddedRedis, hub_factory: HubFactory, tmp_path: Path
) -> None:
    first, second = hub_factory(redis_server.url), hub_factory(redis_server.url)
    async with SyncClient(
        [first.url, second.url], token=token("pos-1"), data_dir=tmp_path / "pos", client_id="pos-1"
    ) as client:
        cart = client.cart("m1")
        await cart.add("SKU-1", 1)
        await client.wait_synced(timeout=20)
        assert client.status.hub == first.url
        view = client._engine.view(cart.topic)
        assert view is not None and view.cursor is not None
        before = view.cursor
        causes: list[ChangeCause] = []

        async def watch() -> None:
            async for change in cart.changes():
                causes.append(change.cause)

        watcher = asyncio.ensure_future(watch())
        await client.go_offline()
        sales = [await cart.add("SKU-1", 1), await cart.add("SKU-2", 3)]
        waiting = [asyncio.ensure_future(sale.acked()) for sale in sales]
        await asyncio.to_thread(first.kill)
        await client.go_online()
        assert [await asyncio.wait_for(w, 20) for w in waiting] == [{"qty": 2}, {"qty": 3}]
        status = await client.wait_synced(timeout=20)
        assert status.hub == second.url and status.pending_ops == 0
        assert view.cursor == type(before)(before.epoch, before.offset + 2)  # the same history, resumed
        assert ChangeCause.RESET not in causes and ChangeCause.EVENT in causes
        watcher.cancel()
    assert quantities(await hub_cart(second.url, "m1")) == {"SKU-1": 2, "SKU-2": 3}
    assert await hub_last_seq(second.url, "pos-1") == 3


# --- outcomes after a restart ------------------------------------------------------------------------------


async def test_after_a_crash_the_app_gets_a_handle_for_every_queued_op_and_its_outcome(
    hub: HubProcess, tmp_path: Path
) -> None:
    data_dir, client_id, member = tmp_path / "pos", "pos-crash-2", "m-crash"
    killed_after = run_child_until(data_dir, client_id, member, 20)  # a POS killed with -9 mid-work
    scoped = token(client_id, members=[member])
    async with SyncClient(
        hub.url, token=scoped, data_dir=data_dir, client_id=client_id, online=False, backoff=quick
    ) as client:
        outside = await client.cart("m-other").add("SKU-1", 1)  # outside the token's scope: rejected later
        handles = await client.pending_ops()
        seqs = [h.seq for h in handles]
        assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= killed_after + 1
        assert handles[-1] is outside and handles[0].kind == "cart.add" and handles[0].made_at is not None
        assert await client.op(1) is handles[0]  # one handle per op
        await client.go_online()
        results = await asyncio.gather(*(h.acked() for h in handles[:-1]))
        assert [r["qty"] for r in results][:3] == [1, 1, 1]  # seqs 1-3 add to three different skus
        with pytest.raises(OpRejected) as rejected:
            await outside.acked()
        assert rejected.value.code == "not_permitted"
        with pytest.raises(SubscriptionRefused):  # that cart cannot be in sync: said at once, not at timeout
            await asyncio.wait_for(client.wait_synced(), 10)
        await client.cart("m-other").unsubscribe()
        await client.wait_synced(timeout=30)
    async with SyncClient(
        hub.url, token=scoped, data_dir=data_dir, client_id=client_id, online=False
    ) as client:
        assert await (await client.op(1)).acked() == {}  # applied before this handle existed
        with pytest.raises(OpRejected):
            await (await client.op(outside.seq)).acked()
        assert await client.pending_ops() == []
        with pytest.raises(KeyError):
            await client.op(outside.seq + 1)
    expected: dict[str, int] = {}
    for seq in range(1, outside.seq):
        expected[sku_of(seq)] = expected.get(sku_of(seq), 0) + 1
    assert quantities(await hub_cart(hub.url, member)) == expected


# --- the blocking facade -----------------------------------------------------------------------------------


def test_the_blocking_facade_waits_on_many_handles_from_one_thread_and_follows_the_status(
    hub: HubProcess, tmp_path: Path
) -> None:
    with SyncClientSync(
        hub.url, token=token("pos-1"), data_dir=tmp_path / "pos", client_id="pos-1", online=False
    ) as pos:
        statuses = pos.status_changes(timeout=20)
        assert next(statuses).state is ConnectionState.OFFLINE
        cart = pos.cart("m1")
        sale = [cart.add(f"SKU-{i}", 1) for i in range(20)]
        done, not_done = pos.wait(sale, timeout=0.2)
        assert (done, not_done) == ([], sale)  # offline: nothing settled yet
        pos.go_online()
        assert any(s.state is ConnectionState.ONLINE for s in statuses)
        finished = list(pos.as_completed(sale, timeout=30))
        assert sorted(h.seq for h in finished) == [h.seq for h in sale]
        assert all(h.result(timeout=0.5) == {"qty": 1} for h in finished)
        done, not_done = pos.wait(sale, timeout=5)
        assert len(done) == 20 and not_done == []
        assert [h.seq for h in pos.pending_ops()] == []
        assert pos.op(3).result(timeout=5) == {"qty": 1}
