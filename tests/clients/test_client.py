"""The asyncio client against a real websocket server in front of the fake hub (no Redis, milliseconds).

What is pinned down here is the driver: local commit before return, offline use and restarts, the status,
change streams, rejections, reconnection and close codes. The same behaviours against real hub processes
and Redis are in tests/e2e/test_client_*.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients import (
    AuthRequired,
    ChangeCause,
    ClientClosed,
    ClientStopped,
    ConnectionState,
    OpRejected,
    SyncClient,
    SyncClientSync,
)
from clients.store import DataDirLocked, SQLiteOutbox
from protocol import cart as rules
from protocol.errors import CloseCode
from tests.clients.fake_server import FakeHubServer


def client(server: FakeHubServer, data_dir: Path, client_id: str = "pos-1", **options: object) -> SyncClient:
    return SyncClient(server.url, token="t", data_dir=data_dir, client_id=client_id, **options)  # type: ignore[arg-type]


async def test_an_op_is_stored_and_shown_before_the_call_returns_then_acked(
    server: FakeHubServer, data_dir: Path
) -> None:
    async with client(server, data_dir, online=False) as c:
        cart = c.cart("m1")
        op = await cart.add("A", 2)
        assert cart.lines["A"].qty == 2 and cart.has_pending_writes and cart.from_cache
        store = c._store
        assert store is not None and await store.pending_seqs() == [op.seq]
        await c.go_online()
        assert await asyncio.wait_for(op.acked(), 10) == {"qty": 2}
        status = await c.wait_synced(10)
        assert status.online and status.pending_ops == 0 and status.oldest_pending_at is None
        assert not cart.has_pending_writes and not cart.from_cache
    assert server.hub.lines("m1")["A"]["qty"] == 2


async def test_the_status_shows_when_the_oldest_pending_op_was_made_across_a_restart(
    server: FakeHubServer, data_dir: Path
) -> None:
    now = [1_700_000_000_000]
    async with client(server, data_dir, online=False, clock=lambda: now[0]) as c:
        await c.cart("m1").add("A", 1)
        now[0] += 60_000
        await c.cart("m2").add("B", 1)
        first = dt.datetime.fromtimestamp(1_700_000_000, dt.UTC)
        assert (c.status.pending_ops, c.status.oldest_pending_at) == (2, first)
    now[0] += 3_600_000  # an hour later the till restarts, still offline: the age is the first op's
    async with client(server, data_dir, online=False, clock=lambda: now[0]) as c:
        assert (c.status.pending_ops, c.status.oldest_pending_at) == (2, first)
        await c.go_online()
        status = await c.wait_synced(10)
        assert (status.pending_ops, status.oldest_pending_at) == (0, None)


async def test_a_restart_offline_shows_the_same_cart_and_outbox(
    server: FakeHubServer, data_dir: Path
) -> None:
    async with client(server, data_dir) as c:
        cart = c.cart("m1")
        await cart.add("A", 2)
        await c.wait_synced(10)
        await c.go_offline()
        await cart.add("A", 1)
        await cart.set("B", 4, {"size": "L"})
    async with client(server, data_dir, online=False) as c:
        cart = c.cart("m1")
        assert {s: (line.qty, dict(line.attrs)) for s, line in cart.lines.items()} == {
            "A": (3, {}),
            "B": (4, {"size": "L"}),
        }
        assert c.status.pending_ops == 2 and c.status.state is ConnectionState.OFFLINE
        state = cart.state
        assert state.from_cache and state.has_pending_writes and state.total_qty == 7
        await c.go_online()
        await c.wait_synced(10)
    assert {s: line["qty"] for s, line in server.hub.lines("m1").items()} == {"A": 3, "B": 4}
    assert len(server.hub.applied) == 3


async def test_a_rejection_raises_from_acked_is_stored_and_offered_until_seen(
    server: FakeHubServer, data_dir: Path
) -> None:
    async with client(server, data_dir) as c:
        cart = c.cart("m1")
        for i in range(200):
            await cart.add(f"S{i}", 1)
        too_many = await cart.add("S-201", 1)
        behind = await cart.add("S0", 1)
        with pytest.raises(OpRejected) as info:
            await asyncio.wait_for(too_many.acked(), 10)
        assert info.value.code == "limit_exceeded"
        assert await asyncio.wait_for(behind.acked(), 10) == {"qty": 2}  # not blocked by the rejection
        assert "S-201" not in cart.lines
        stream = c.rejections()
        first = await asyncio.wait_for(anext(stream), 10)
        assert (first.seq, first.code, first.args["sku"]) == (too_many.seq, "limit_exceeded", "S-201")
        await stream.aclose()
    async with client(server, data_dir) as c:
        [kept] = await c.pending_rejections()
        assert kept.seq == too_many.seq
        await c.mark_seen(kept)
        assert await c.pending_rejections() == []


async def test_changes_say_where_they_come_from(
    server: FakeHubServer, data_dir: Path, tmp_path: Path
) -> None:
    async with client(server, data_dir) as c, client(server, tmp_path / "other", "app-1") as other:
        cart = c.cart("m1")
        await c.wait_synced(10)
        changes = cart.changes()
        await cart.add("A", 1)
        local = await asyncio.wait_for(anext(changes), 10)
        assert local.cause is ChangeCause.LOCAL and local.has_pending_writes and local.lines["A"].qty == 1
        await c.wait_synced(10)
        await other.cart("m1").add("A", 2)
        while True:
            change = await asyncio.wait_for(anext(changes), 10)
            if change.origin == ("app-1", 1):
                break
        assert change.cause is ChangeCause.EVENT and not change.from_cache and change.lines["A"].qty == 3
        await changes.aclose()


async def test_concurrent_sets_report_a_conflict_to_the_hook(
    server: FakeHubServer, data_dir: Path, tmp_path: Path
) -> None:
    seen: list[object] = []
    async with (
        client(server, data_dir, on_conflict=lambda cart, conflict: seen.append(conflict)) as c,
        client(server, tmp_path / "other", "app-1", online=False) as other,
    ):
        cart = c.cart("m1")
        await c.wait_synced(10)
        await c.go_offline()
        await cart.set("A", 5)
        await other.cart("m1").set("A", 7)
        await other.go_online()
        await other.wait_synced(10)
        await c.go_online()
        await c.wait_synced(10)
    assert seen, "the conflict reached the hook"
    conflict = seen[-1]
    assert getattr(conflict, "sku", None) == "A"


async def test_a_dropped_connection_reconnects_and_resumes(server: FakeHubServer, data_dir: Path) -> None:
    async with client(server, data_dir, backoff=fast_backoff) as c:
        cart = c.cart("m1")
        await cart.add("A", 1)
        await c.wait_synced(10)
        await server.drop_all(1001)
        await cart.add("A", 1)
        await c.wait_synced(10)
        assert cart.lines["A"].qty == 2
    assert server.hellos.count("pos-1") >= 2
    assert server.hub.lines("m1")["A"]["qty"] == 2


@pytest.mark.parametrize(
    ("code", "state", "error"),
    [
        (CloseCode.UNAUTHORIZED, ConnectionState.AUTH_REQUIRED, AuthRequired),
        (CloseCode.UNSUPPORTED_VERSION, ConnectionState.STOPPED, ClientStopped),
    ],
)
async def test_a_fatal_close_stops_the_client_with_a_typed_error_until_told_to_retry(
    server: FakeHubServer, data_dir: Path, code: CloseCode, state: ConnectionState, error: type[Exception]
) -> None:
    server.refuse_with = code
    async with client(server, data_dir, backoff=fast_backoff) as c:
        op = await c.cart("m1").add("A", 1)
        async with asyncio.timeout(10):
            async for status in c.status_changes():
                if status.stopped:
                    break
        assert isinstance(status.last_error, error) and status.last_error.code == code
        assert status.fatal is status.last_error and not status.last_error.retryable
        assert status.state is state and status.pending_ops == 1
        with pytest.raises(error):
            await asyncio.wait_for(op.acked(), 1)  # at once: the client cannot get there by itself
        server.refuse_with = None
        await c.go_online()
        await c.wait_synced(10)
        assert await op.acked() == {"qty": 1}  # the same handle, once the cause is gone


async def test_an_expired_token_is_replaced_when_a_provider_is_given(
    server: FakeHubServer, data_dir: Path
) -> None:
    server.refuse_with = CloseCode.TOKEN_EXPIRED
    asked: list[str] = []

    def provider(client_id: str) -> str:
        asked.append(client_id)
        if len(asked) >= 2:
            server.refuse_with = None
        return "fresh"

    async with SyncClient(
        server.url, token=provider, data_dir=data_dir, client_id="pos-1", backoff=fast_backoff
    ) as c:
        await c.wait_synced(10)
    assert asked[:2] == ["pos-1", "pos-1"]


async def test_one_process_per_data_directory(data_dir: Path) -> None:
    store = await SQLiteOutbox.open(data_dir)
    try:
        with pytest.raises(DataDirLocked):
            await SQLiteOutbox.open(data_dir)
    finally:
        await store.close()


async def test_a_data_directory_keeps_its_client_id(server: FakeHubServer, data_dir: Path) -> None:
    async with SyncClient(server.url, token="t", data_dir=data_dir, online=False) as c:
        generated = c.client_id
    async with SyncClient(server.url, token="t", data_dir=data_dir, online=False) as c:
        assert c.client_id == generated
    with pytest.raises(ValueError, match="belongs to"):
        async with SyncClient(server.url, token="t", data_dir=data_dir, client_id="someone-else"):
            pass


async def test_awaiting_an_ack_when_the_client_closes_raises_client_closed(
    server: FakeHubServer, data_dir: Path
) -> None:
    c = client(server, data_dir, online=False)
    await c.start()
    op = await c.cart("m1").add("A", 1)
    waiter = asyncio.ensure_future(op.acked())
    await c.close()
    with pytest.raises(ClientClosed):
        await waiter
    with pytest.raises(ClientClosed):
        await c.cart("m1").add("A", 1)


async def test_pings_carry_the_outbox_backlog(data_dir: Path) -> None:
    async with FakeHubServer(heartbeat_ms=50) as server, client(server, data_dir) as c:
        await c.cart("m1").add("A", 1)
        await c.wait_synced(10)
        stats = await asyncio.wait_for(server.next_stats(), 10)
        while "ack_ms_p50" not in stats:  # the report made on connecting came first
            stats = await asyncio.wait_for(server.next_stats(), 10)
    assert stats["outbox"] == 0.0


async def test_a_reconnecting_client_reports_its_backlog_before_it_replays_the_outbox(
    server: FakeHubServer, data_dir: Path
) -> None:
    """The POS fleet view must see what a till kept while offline: its first report, before any op."""
    now = [1_700_000_000_000]
    async with client(server, data_dir, online=False, clock=lambda: now[0]) as c:
        for sku in ("A", "B", "C"):
            await c.cart("m1").add(sku, 1)
        now[0] += 90_000
        await c.go_online()
        await c.wait_synced(10)
    kinds = [kind for kind, _ in server.arrivals]
    assert kinds[0] == "stats", kinds
    report = server.arrivals[0][1]
    assert report is not None and report["outbox"] == 3.0 and report["outbox_age_ms"] == 90_000.0
    assert any(kind in ("Op", "OpBatch") for kind in kinds[1:])


async def test_a_busy_client_reports_every_report_interval_however_long_its_heartbeat(
    data_dir: Path,
) -> None:
    """A till that keeps sending never goes idle, so never pings: ``report_interval_ms`` still reports."""
    async with (
        FakeHubServer(heartbeat_ms=600_000) as server,
        client(server, data_dir, report_interval_ms=50) as c,
    ):
        await c.wait_synced(10)
        reports = 0
        while reports < 3:
            await c.cart("m1").add("A", 1)
            stats = await asyncio.wait_for(server.next_stats(), 10)
            reports += 1
    assert "outbox" in stats


async def test_the_report_interval_must_be_positive(server: FakeHubServer, data_dir: Path) -> None:
    with pytest.raises(ValueError, match="report_interval_ms"):
        client(server, data_dir, report_interval_ms=0)


def fast_backoff() -> Iterator[float]:
    while True:
        yield 0.01


async def test_going_offline_cuts_a_connection_attempt_short(data_dir: Path) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def black_hole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # accepts TCP, never answers the websocket upgrade
        await reader.read()

    hole = await asyncio.start_server(black_hole, "127.0.0.1", 0)
    port = hole.sockets[0].getsockname()[1]
    try:
        c = SyncClient(f"ws://127.0.0.1:{port}/ws", token="t", data_dir=data_dir, handshake_timeout_ms=60_000)
        async with c:
            async with asyncio.timeout(10):
                async for status in c.status_changes():
                    if status.state is ConnectionState.CONNECTING:
                        break
            async with asyncio.timeout(5):  # not the 60 s the attempt would take
                await c.go_offline()
            assert c.status.state is ConnectionState.OFFLINE
    finally:
        for writer in accepted:
            writer.close()
        hole.close()
        await hole.wait_closed()


async def test_a_clear_wider_than_one_context_goes_out_as_removes(
    server: FakeHubServer, data_dir: Path
) -> None:
    lines: dict[str, rules.Line] = {}
    for i in range(150):  # two writers per line, 300 writers in all: more than a ctx may name
        dots = [[f"w{2 * i}", 1, "a", 1, 1], [f"w{2 * i + 1}", 1, "a", 1, 1]]
        lines[f"S{i}"] = {"qty": 2, "vv": {d[0]: 1 for d in dots}, "dots": dots}
    server.hub.carts["m1"] = {"lines": lines, "folds": 0}
    async with client(server, data_dir) as c:
        cart = c.cart("m1")
        await c.wait_synced(10)
        assert len(cart.lines) == 150
        handle = await cart.clear()
        assert await asyncio.wait_for(handle.acked(), 10) == {"lines": 0}
        await c.wait_synced(10)
        assert cart.lines == {}
    assert server.hub.lines("m1") == {}


async def test_the_last_sync_time_survives_a_restart(server: FakeHubServer, data_dir: Path) -> None:
    async with client(server, data_dir) as c:
        await c.cart("m1").add("A", 1)
        synced = (await c.wait_synced(10)).last_synced_at
    async with client(server, data_dir, online=False) as c:
        assert synced is not None and c.status.last_synced_at == synced


async def test_the_blocking_facade_works_from_a_plain_thread(server: FakeHubServer, data_dir: Path) -> None:
    # The fake hub runs on this test's loop; the POS code below runs in a plain thread, as it would in a till.
    def pos_code() -> tuple[int, list[str]]:
        with SyncClientSync(server.url, token="t", data_dir=data_dir, client_id="pos-1") as pos:
            cart = pos.cart("m1")
            pos.wait_synced(timeout=10)
            changes = cart.changes(timeout=10)
            handle = cart.add("A", 3)
            first = next(changes)  # the local change (merged with the hub's event if that came first)
            result = handle.result(timeout=10)
            pos.wait_synced(timeout=10)
            assert cart.lines["A"].qty == 3 and not cart.has_pending_writes
            return result["qty"], [first.cause.value, str(first.lines["A"].qty)]

    qty, first = await asyncio.to_thread(pos_code)
    assert qty == 3 and first[0] in ("local", "event") and first[1] == "3"
    assert server.hub.lines("m1")["A"]["qty"] == 3
