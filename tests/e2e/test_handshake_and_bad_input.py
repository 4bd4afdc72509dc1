"""A real hub process: handshake, heartbeats, and hostile input that must not disturb anyone else."""

from __future__ import annotations

import asyncio
import contextlib
import time

import msgspec
import pytest
from websockets.exceptions import ConnectionClosed

from protocol import frames
from protocol.errors import CloseCode, ErrorCode
from tests.e2e.harness import HubProcess, WireClient, token

pytestmark = pytest.mark.e2e


async def test_handshake_negotiates_version_and_reports_the_clients_last_seq(hub: HubProcess) -> None:
    client = await WireClient.open(hub.url, "app-1")
    assert client.welcome is not None
    assert client.welcome.version == 1
    assert client.welcome.last_seq == 0
    assert client.welcome.heartbeat_ms == 15_000
    assert client.welcome.max_frame == 65_536
    await client.send(frames.Ping(ts=123))
    pong = await client.recv_type(frames.Pong)
    assert pong.echo_ts == 123
    assert abs(pong.ts - time.time() * 1000) < 60_000
    await client.close()


async def test_no_common_version_is_refused_with_its_close_code(hub: HubProcess) -> None:
    client = await WireClient.open(hub.url, "app-1", hello=False)
    await client.send(frames.Hello(versions=[99], token=token("app-1"), client_id="app-1"))
    error = await client.recv()
    assert isinstance(error, frames.Error)
    assert error.code == ErrorCode.UNSUPPORTED_VERSION
    assert await client.closed() == CloseCode.UNSUPPORTED_VERSION


@pytest.mark.parametrize(
    ("tok", "code"),
    [
        ("", CloseCode.UNAUTHORIZED),
        ("garbage", CloseCode.UNAUTHORIZED),
        (token("someone-else"), CloseCode.UNAUTHORIZED),
        (token("app-1", ttl_s=-120), CloseCode.TOKEN_EXPIRED),
    ],
)
async def test_bad_tokens_close_with_their_code_and_never_reach_the_log(
    hub: HubProcess, tok: str, code: CloseCode
) -> None:
    client = await WireClient.open(hub.url, "app-1", hello=False)
    await client.send(frames.Hello(versions=[1], token=tok, client_id="app-1"))
    assert await client.closed() == code
    if len(tok) > 10:
        assert tok not in hub.log()


async def test_an_origin_off_the_allowlist_is_refused(hub: HubProcess) -> None:
    client = await WireClient.open(hub.url, "app-1", hello=False, Origin="https://evil.example")
    assert await client.closed() == CloseCode.FORBIDDEN_ORIGIN


def _nested(depth: int) -> bytes:
    return b"\x82\xa1t\xa4ping\xa2ts" + b"\x91" * depth + b"\x01"


BAD_FRAMES = {
    "oversized": (b"\x81\xa1t\xda\xff\xff" + b"x" * 65_535 + b"x" * 6000, CloseCode.MESSAGE_TOO_BIG),
    # Written in full while the hub has long refused it: the client must still read 1009, not a reset (1006).
    "oversized, 8 MiB": (
        b"\x81\xa1t\xdb" + (8 << 20).to_bytes(4, "big") + b"x" * (8 << 20),
        CloseCode.MESSAGE_TOO_BIG,
    ),
    "undecodable": (b"\x81\xa1t\xa2\xff\xfe", CloseCode.INVALID_PAYLOAD),
    "truncated": (b"\x82\xa1t\xa4ping", CloseCode.INVALID_PAYLOAD),
    "ill-typed": (msgspec.msgpack.encode({"t": "op", "seq": "1", "kind": "cart.add", "args": {}}), 1002),
    "deeply nested": (_nested(5000), CloseCode.PROTOCOL_ERROR),
    "huge declared length": (b"\x82\xa1t\xa2op\xa4args\xdf\xff\xff\xff\xff", CloseCode.PROTOCOL_ERROR),
    "not a map": (b"\x93\x01\x02\x03", CloseCode.PROTOCOL_ERROR),
}


@pytest.mark.parametrize("case", list(BAD_FRAMES))
async def test_hostile_frames_close_only_their_own_connection(hub: HubProcess, case: str) -> None:
    bystanders = [await WireClient.open(hub.url, f"bystander-{i}") for i in range(3)]
    attacker = await WireClient.open(hub.url, "attacker")
    data, code = BAD_FRAMES[case]
    # The hub's close may come while the message is still going out: the client must still read its code.
    with contextlib.suppress(ConnectionClosed):
        await attacker.send_raw(data)
    assert await attacker.closed() == code
    for i, client in enumerate(bystanders):
        await client.send(frames.Ping(ts=i + 1))
        assert (await client.recv_type(frames.Pong)).echo_ts == i + 1
        await client.close()
    assert "Traceback" not in hub.log()


async def test_unknown_frames_and_frames_out_of_order_get_error_frames_and_the_connection_stays(
    hub: HubProcess,
) -> None:
    client = await WireClient.open(hub.url, "app-1", hello=False)
    await client.send(frames.Op(seq=1, kind="cart.add", args={}))
    error = await client.recv()
    assert isinstance(error, frames.Error)
    assert (error.code, error.ref) == (ErrorCode.OUT_OF_ORDER, 1)
    await client.hello(token("app-1"))
    assert client.welcome is not None
    await client.send_raw(msgspec.msgpack.encode({"t": "zzz", "x": 1}))
    error = await client.recv()
    assert isinstance(error, frames.Error)
    assert error.code == ErrorCode.UNKNOWN_FRAME
    await client.send(frames.Ping(ts=7))
    assert (await client.recv_type(frames.Pong)).echo_ts == 7
    await client.close()


async def test_many_connections_at_once_are_served_independently(hub: HubProcess) -> None:
    clients = await asyncio.gather(*(WireClient.open(hub.url, f"c-{i}") for i in range(50)))
    await asyncio.gather(*(c.send(frames.Ping(ts=i + 1)) for i, c in enumerate(clients)))
    pongs = await asyncio.gather(*(c.recv_type(frames.Pong) for c in clients))
    assert [p.echo_ts for p in pongs] == list(range(1, 51))
    await asyncio.gather(*(c.close() for c in clients))


async def test_a_session_ends_with_token_expired_when_its_token_expires(hub: HubProcess) -> None:
    client = await WireClient.open(hub.url, "app-1", tok=token("app-1", ttl_s=2))
    assert client.welcome is not None
    assert await client.closed(timeout=15) == CloseCode.TOKEN_EXPIRED
