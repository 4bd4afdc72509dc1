"""A hub that misbehaves: the client reports a typed error and its outbox stays exactly as it was.

The thing under test is the client, so the "hub" here is a few lines of ``websockets.asyncio.server`` that
welcome the client and then send what no correct hub sends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from websockets.asyncio.server import ServerConnection, serve

from clients import ClientStopped, ConnectionState, ProtocolError, Status, SyncClient, UnexpectedEvent
from clients.store import SQLiteOutbox
from protocol import codec, frames
from protocol.errors import CloseCode, ErrorCode

DECODE = codec.FrameDecoder(frames.CLIENT_FRAMES)


def welcome(version: int = 1) -> bytes:
    return codec.encode(
        frames.Welcome(
            version=version,
            session="bad",
            hub_time=1,
            echo_ts=1,
            last_seq=0,
            heartbeat_ms=15_000,
            max_frame=65_536,
            max_batch=256,
        )
    )


def event(kind: str, data: dict[str, Any]) -> bytes:
    return codec.encode(
        frames.Event(topic="cart:m1", cursor=frames.Cursor("e1", 1), kind=kind, data=data, at=1)
    )


BEHAVIOURS: dict[str, list[bytes | str]] = {
    "malformed frame": [b"\x81\xa1t\xc1"],
    "truncated frame": [b"\x82\xa1t\xa3ack"],
    "unknown frame tag": [msgspec.msgpack.encode({"t": "teleport", "x": 1})],
    "ill-typed ack": [msgspec.msgpack.encode({"t": "ack", "seq": "1", "ok": True})],
    "malformed event data": [event("cart.add", {"lines": {"A": {"qty": "2", "vv": {}, "dots": []}}})],
    "text message": ["hello"],
}
EXPECTED_CODES = {
    "malformed frame": ErrorCode.MALFORMED,
    "truncated frame": ErrorCode.MALFORMED,
    "unknown frame tag": ErrorCode.UNKNOWN_FRAME,
    "ill-typed ack": ErrorCode.BAD_FRAME,
    "malformed event data": ErrorCode.BAD_FRAME,
    "text message": ErrorCode.BAD_FRAME,
}


@contextlib.asynccontextmanager
async def bad_hub(script: Callable[[ServerConnection], Any]) -> AsyncIterator[str]:
    async def handler(ws: ServerConnection) -> None:
        with contextlib.suppress(Exception):
            await script(ws)
            async for _ in ws:  # keep the connection until the client leaves
                pass

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ws"


def welcome_then(messages: list[bytes | str], *, version: int = 1) -> Callable[[ServerConnection], Any]:
    async def script(ws: ServerConnection) -> None:
        DECODE.decode(await ws.recv())  # the hello
        await ws.send(welcome(version))
        sub = DECODE.decode(await ws.recv())
        while isinstance(sub, frames.Ping):  # the client's report on connecting
            sub = DECODE.decode(await ws.recv())
        assert isinstance(sub, frames.Subscribe)
        await ws.send(
            codec.encode(
                frames.Snapshot(
                    id=sub.id, topic=sub.topic, cursor=frames.Cursor("e1", 0), state={"lines": {}}
                )
            )
        )
        for message in messages:
            await ws.send(message)

    return script


def slow() -> Iterator[float]:
    while True:
        yield 30.0  # one attempt per test: what matters is the first failure


async def offline_ops(data_dir: Path) -> list[bytes]:
    """Make two ops offline; the outbox rows as stored (to compare after the bad hub)."""
    async with SyncClient(
        "ws://127.0.0.1:9/ws", token="t", data_dir=data_dir, client_id="pos-1", online=False
    ) as c:
        await c.cart("m1").add("A", 2)
        await c.cart("m1").set("B", 3)
    return await stored_outbox(data_dir)


async def stored_outbox(data_dir: Path) -> list[bytes]:
    store = await SQLiteOutbox.open(data_dir)
    try:
        return [codec.encode(op) for op in await store.load_pending(0, 100)]
    finally:
        await store.close()


async def first_error(client: SyncClient) -> Status:
    async with asyncio.timeout(10):
        async for status in client.status_changes():
            if status.last_error is not None:
                return status
    raise AssertionError("no error reported")


@pytest.mark.parametrize("behaviour", list(BEHAVIOURS))
async def test_a_hub_breaking_the_protocol_is_a_typed_error_and_the_outbox_is_untouched(
    behaviour: str, tmp_path: Path
) -> None:
    before = await offline_ops(tmp_path)
    async with (
        bad_hub(welcome_then(BEHAVIOURS[behaviour])) as url,
        SyncClient(url, token="t", data_dir=tmp_path, backoff=slow) as client,
    ):
        status = await first_error(client)
        error = status.last_error
        assert isinstance(error, ProtocolError) and error.code == EXPECTED_CODES[behaviour]
        assert status.pending_ops == 2 and not status.stopped  # the hub may be fixed: retry later
        assert client.cart("m1").lines["A"].qty == 2  # nothing of the bad frame was applied
    assert await stored_outbox(tmp_path) == before


async def test_an_event_of_an_unknown_kind_is_reported_skipped_and_the_session_goes_on(
    tmp_path: Path,
) -> None:
    before = await offline_ops(tmp_path)
    async with (
        bad_hub(welcome_then([event("cart.teleport", {"anything": [1, 2]})])) as url,
        SyncClient(url, token="t", data_dir=tmp_path, backoff=slow) as client,
    ):
        status = await first_error(client)
        assert isinstance(status.last_error, UnexpectedEvent) and status.last_error.kind == "cart.teleport"
        assert status.online  # a newer hub may add event kinds: not a reason to disconnect
        view = client._engine.view("cart:m1")
        assert view is not None and view.cursor == frames.Cursor("e1", 1)  # moved past it
        assert {s: line.qty for s, line in client.cart("m1").lines.items()} == {"A": 2, "B": 3}
    assert await stored_outbox(tmp_path) == before


async def test_no_common_protocol_version_stops_the_client_with_a_typed_error(tmp_path: Path) -> None:
    before = await offline_ops(tmp_path)

    async def refuse(ws: ServerConnection) -> None:
        DECODE.decode(await ws.recv())
        await ws.send(codec.encode(frames.Error(code=ErrorCode.UNSUPPORTED_VERSION, message="speak 2")))
        await ws.close(CloseCode.UNSUPPORTED_VERSION, "no common protocol version")

    async with bad_hub(refuse) as url, SyncClient(url, token="t", data_dir=tmp_path, backoff=slow) as client:
        async with asyncio.timeout(10):
            async for status in client.status_changes():
                if status.stopped:
                    break
        assert isinstance(status.last_error, ClientStopped) and status.last_error.code == 4503
        assert not status.last_error.retryable and status.pending_ops == 2
        assert status.state is ConnectionState.STOPPED
        [first, _] = await client.pending_ops()
        with pytest.raises(ClientStopped) as stopped:  # every waiter fails at once, with the close code
            await asyncio.wait_for(first.acked(), 2)
        assert (stopped.value.code, stopped.value.reason) == (4503, "no common protocol version")
        with pytest.raises(ClientStopped):
            await asyncio.wait_for(client.wait_synced(), 2)
    assert await stored_outbox(tmp_path) == before


async def test_a_welcome_in_a_version_the_client_did_not_offer_is_refused(tmp_path: Path) -> None:
    before = await offline_ops(tmp_path)
    async with (
        bad_hub(welcome_then([], version=7)) as url,
        SyncClient(url, token="t", data_dir=tmp_path, backoff=slow) as client,
    ):
        status = await first_error(client)
        assert isinstance(status.last_error, ProtocolError)
        assert status.last_error.code == ErrorCode.UNSUPPORTED_VERSION
    assert await stored_outbox(tmp_path) == before
