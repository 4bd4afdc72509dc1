"""One hostile connection must not hurt the others, and what it costs is bounded in bytes and time.

Real hub processes, real sockets; the hostile peers speak raw bytes (a websocket library would read for
them). Assertions are about progress and bounds — a victim's acks keep coming, memory stays under a bound,
connections close — never about timing ratios (those are the ``isolation`` benchmark's).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from benchmarks import isolation
from benchmarks.workloads import CTX
from protocol import codec, frames
from protocol.codec import CLIENT_LIMITS, FrameDecoder
from protocol.errors import CloseCode
from tests.conftest import RedisServerFactory
from tests.e2e.conftest import HubFactory
from tests.e2e.harness import HubProcess, WireClient, token

MiB = 1024 * 1024


def masked(opcode: int, payload: bytes) -> bytes:
    """One final client frame (clients mask, RFC 6455 §5.3)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 1 << 16:
        header = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + body


def upgraded_socket(port: int, rcvbuf: int = 4096) -> socket.socket:
    """A TCP socket through the websocket handshake, with a small receive buffer, non-blocking."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(4096)
        assert chunk, "the hub closed during the handshake"
        response += chunk
    assert response.startswith(b"HTTP/1.1 101"), response[:100]
    sock.setblocking(False)
    return sock


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def assert_no_error_logged(hub: HubProcess) -> None:
    log = hub.log()
    assert " ERROR " not in log and "Traceback" not in log and "exception" not in log.lower(), log[-3000:]


async def flood(sock: socket.socket, frame: bytes, limit: int, until: float) -> tuple[int, bool]:
    """Send ``frame`` over and over without reading: bytes the hub took, and whether it closed us."""
    burst = frame * max(1, 8192 // len(frame))
    sent = 0
    while sent < limit and time.monotonic() < until:
        try:
            sent += sock.send(burst)
        except BlockingIOError:
            await asyncio.sleep(0.02)
        except OSError:  # reset or broken pipe: the hub closed the connection
            return sent, True
    return sent, False


async def acks_under(hub: HubProcess, client_id: str, count: int) -> int:
    """A well-behaved client's ops, one at a time, each waiting for its ack: how many were acked."""
    victim = await WireClient.open(hub.url, client_id)
    acked = 0
    for n in range(count):
        await victim.op("cart.add", {"member": client_id, "sku": f"s{n % 5}", "qty": 1})
        ack = await victim.recv_type(frames.Ack, 30)
        assert ack.ok
        acked += 1
    await victim.close()
    return acked


async def test_a_peer_that_streams_pings_and_never_reads_is_not_read_and_is_closed_at_its_deadline(
    redis_server_factory: RedisServerFactory, hub_factory: HubFactory
) -> None:
    # The close frame waits for the peer up to the heartbeat timeout (3 × 1 s here), then the hub aborts.
    hub = hub_factory(
        redis_server_factory(appendonly=False).url,
        SYNCD_HANDSHAKE_TIMEOUT_MS="2000",
        SYNCD_HEARTBEAT_MS="1000",
    )
    assert hub.proc is not None
    before = rss(hub.proc.pid)
    sock = upgraded_socket(hub.port)
    # Max-size pings: each one's pong is as large, and the peer never takes one of them.
    sent, closed = await flood(sock, masked(0x9, b"p" * 125), 256 * MiB, time.monotonic() + 30)
    grown = rss(hub.proc.pid) - before
    sock.close()
    assert closed, f"still open after the hello deadline; the hub took {sent / MiB:.1f} MiB of pings"
    assert grown < 24 * MiB, f"the hub grew {grown / MiB:.1f} MiB for {sent / MiB:.1f} MiB of pings"
    assert_no_error_logged(hub)


@pytest.mark.parametrize("attack", ["ping_flood", "expensive_frames", "op_flood", "churn"])
async def test_a_client_keeps_getting_acks_while_another_process_attacks_the_hub(
    redis_server_factory: RedisServerFactory, hub_factory: HubFactory, attack: str
) -> None:
    hub = hub_factory(redis_server_factory(appendonly=False).url)
    assert hub.proc is not None
    before = rss(hub.proc.pid)
    ready, stop = CTX.Event(), CTX.Event()
    attacker = CTX.Process(
        target=isolation.attacker, args=(attack, hub.url, hub.port, ready, stop), daemon=True
    )
    attacker.start()
    try:
        assert await asyncio.to_thread(ready.wait, 30)
        await asyncio.sleep(1)
        async with asyncio.timeout(60):
            assert await acks_under(hub, "victim", 100) == 100
        grown = rss(hub.proc.pid) - before
        assert grown < 32 * MiB, f"the hub grew {grown / MiB:.1f} MiB under {attack}"
    finally:
        stop.set()
        attacker.join(10)
        if attacker.is_alive():
            attacker.kill()
    assert_no_error_logged(hub)


async def test_connections_that_send_no_complete_request_are_closed_after_the_handshake_timeout(
    redis_server_factory: RedisServerFactory, hub_factory: HubFactory
) -> None:
    hub = hub_factory(redis_server_factory(appendonly=False).url, SYNCD_HANDSHAKE_TIMEOUT_MS="1000")
    silent = [socket.create_connection(("127.0.0.1", hub.port)) for _ in range(50)]
    partial = [socket.create_connection(("127.0.0.1", hub.port)) for _ in range(50)]
    for sock in partial:
        sock.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: web")  # a slowloris's first bytes
    loop = asyncio.get_running_loop()

    async def closed_by_hub(sock: socket.socket) -> bool:
        sock.setblocking(False)
        try:
            async with asyncio.timeout(15):
                return await loop.sock_recv(sock, 1024) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    results = await asyncio.gather(*(closed_by_hub(sock) for sock in silent + partial))
    for sock in silent + partial:
        sock.close()
    assert all(results), f"{results.count(False)} of {len(results)} connections still open"
    assert "version" in hub.healthz()  # and the hub still serves a plain request
    assert_no_error_logged(hub)


async def test_a_subscriber_that_reads_nothing_for_a_heartbeat_gets_4001_before_its_queue_is_full(
    redis_server_factory: RedisServerFactory, hub_factory: HubFactory
) -> None:
    # A 64 MiB queue the test never fills: the heartbeat deadline is what must end the slow session.
    hub = hub_factory(
        redis_server_factory(appendonly=False).url,
        SYNCD_SEND_QUEUE_BYTES=str(64 * MiB),
        SYNCD_HEARTBEAT_MS="1000",
    )
    topic, member = "cart:slow", "slow"
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", hub.port))
    sock.setblocking(False)
    slow = await connect(
        hub.url, sock=sock, max_queue=1, ping_interval=None, max_size=2**22, compression=None
    )
    decoder = FrameDecoder(frames.SERVER_FRAMES, CLIENT_LIMITS)
    await slow.send(codec.encode(frames.Hello(versions=[1], token=token("slow"), client_id="slow", ts=0)))
    assert isinstance(decoder.decode(await slow.recv()), frames.Welcome)
    await slow.send(codec.encode(frames.Subscribe(id=1, topic=topic)))
    assert isinstance(decoder.decode(await slow.recv()), frames.Snapshot)

    # The slow client says it is alive all along (so no 4002 while the hub reads it), but reads nothing.
    async def keep_alive() -> None:
        with contextlib.suppress(OSError, ConnectionClosed):
            while True:
                await slow.send(codec.encode(frames.Ping(ts=int(time.time() * 1000))))
                await asyncio.sleep(0.3)

    alive = asyncio.create_task(keep_alive())
    # Far more than the socket buffers hold, far less than the queue: ~13 MB of events.
    writer = await WireClient.open(hub.url, "writer")
    attrs = {f"k{i:02d}": chr(ord("a") + i) * 256 for i in range(16)}
    for base in range(0, 3000, 10):
        for seq in range(base + 1, base + 11):
            args = {"member": member, "sku": "A", "qty": seq, "attrs": attrs}
            await writer.send(frames.Op(seq=seq, kind="cart.set", args=args, ctx={"writer": seq - 1}))
        for _ in range(10):
            assert (await writer.recv_type(frames.Ack, 20)).ok

    # The hub must end the session (4001 behind what its socket holds, then the connection, as the client
    # never reads that far either): the keep-alive then fails on the closed connection.
    async with asyncio.timeout(30):
        await alive
    assert "closing the session of slow: it reads nothing" in hub.log()
    assert_no_error_logged(hub)


async def test_connections_awaiting_hello_are_capped_per_address_and_sessions_per_client_id(
    redis_server_factory: RedisServerFactory, hub_factory: HubFactory
) -> None:
    hub = hub_factory(
        redis_server_factory(appendonly=False).url,
        SYNCD_MAX_PENDING_PER_ADDRESS="3",
        SYNCD_MAX_CONNECTIONS_PER_CLIENT="2",
    )
    waiting = [await WireClient.open(hub.url, f"w{n}", hello=False) for n in range(3)]
    over = await WireClient.open(hub.url, "w3", hello=False)
    assert await over.closed() == CloseCode.TRY_AGAIN_LATER
    assert isinstance(await waiting[0].hello(token("w0")), frames.Welcome)  # a hello frees its place
    again = await WireClient.open(hub.url, "w4", hello=False)
    assert isinstance(await again.hello(token("w4")), frames.Welcome)

    first = await WireClient.open(hub.url, "till")
    second = await WireClient.open(hub.url, "till")
    assert first.welcome is not None and second.welcome is not None
    third = await WireClient.open(hub.url, "till", hello=False)
    await third.send(frames.Hello(versions=[1], token=token("till"), client_id="till", ts=0))
    assert await third.closed() == CloseCode.TRY_AGAIN_LATER
    await first.close()
    await asyncio.sleep(0.5)  # the hub sees the close
    fourth = await WireClient.open(hub.url, "till")
    assert fourth.welcome is not None
    assert_no_error_logged(hub)


async def close_code_of(sock: socket.socket) -> int | None:
    """The code of the close frame the hub sends on ``sock`` (``None`` if it closes without one)."""
    loop = asyncio.get_running_loop()
    data = b""
    with contextlib.suppress(ConnectionResetError):
        async with asyncio.timeout(10):
            while chunk := await loop.sock_recv(sock, 4096):
                data += chunk
    sock.close()
    start = data.find(b"\x88")  # the close frame (FIN + opcode 8), after anything sent before it
    if start < 0 or len(data) < start + 4:
        return None
    return int.from_bytes(data[start + 2 : start + 4], "big")


@pytest.mark.parametrize("payload", [b"\xff\xfe\xfd", b"hello"], ids=["invalid_utf8", "valid_utf8"])
async def test_a_text_message_is_refused_with_1002_and_logs_no_error(
    redis_server_factory: RedisServerFactory, hub_factory: HubFactory, payload: bytes
) -> None:
    """The protocol is binary messages only (PROTOCOL.md §2): any text message, decodable or not, before the
    hello or after, closes 1002 — and a peer's mistake, repeated, never reaches the log as an ERROR."""
    hub = hub_factory(redis_server_factory(appendonly=False).url)
    codes = []
    for _ in range(20):
        sock = upgraded_socket(hub.port, rcvbuf=65536)
        sock.sendall(masked(0x1, payload))
        codes.append(await close_code_of(sock))
    assert codes == [CloseCode.PROTOCOL_ERROR] * 20
    client = await WireClient.open(hub.url, "texter")  # after the hello too
    await client.ws.send(payload.decode(errors="replace"))
    assert await client.closed() == CloseCode.PROTOCOL_ERROR
    assert "version" in hub.healthz()
    assert_no_error_logged(hub)


async def test_subscribers_leaving_while_the_hub_writes_to_them_log_no_error(
    redis_server_factory: RedisServerFactory, hub_factory: HubFactory
) -> None:
    """A client leaving is normal, even in the middle of the events being written to it: half of them close
    cleanly, half reset their socket, while a writer keeps their cart busy — the hub logs no ERROR, no
    ``Task exception was never retrieved`` and no ``socket.send() raised``, and keeps serving."""
    hub = hub_factory(redis_server_factory(appendonly=False).url)
    topic, member = "cart:leavers", "leavers"
    subscribers = []
    for i in range(60):
        client = await WireClient.open(hub.url, f"leaver-{i}")
        await client.send(frames.Subscribe(id=1, topic=topic))
        await client.recv_type(frames.Snapshot)
        subscribers.append(client)
    writer = await WireClient.open(hub.url, "writer")
    attrs = {f"k{i:02d}": "x" * 200 for i in range(16)}  # events of a few KiB: writes are still under way

    async def write(ops: int) -> None:
        for _ in range(ops):
            await writer.op(
                "cart.add", {"member": member, "sku": f"s{writer.seq % 8}", "qty": 1, "attrs": attrs}
            )
        for _ in range(ops):
            assert (await writer.recv_type(frames.Ack, 20)).ok

    await write(40)
    for i, client in enumerate(subscribers):
        if i % 2:
            client.ws.transport.abort()  # a reset: the hub's next write to it fails
        else:
            await client.close()
        if i % 10 == 0:
            await write(5)
    await write(20)
    await writer.send(frames.Ping(ts=1))
    assert (await writer.recv_type(frames.Pong)).echo_ts == 1
    await asyncio.sleep(1)  # anything the hub would log about the gone peers is written by now
    log = hub.log()
    assert "never retrieved" not in log and "socket.send() raised" not in log
    assert_no_error_logged(hub)
