"""``isolation``: one hostile client must not hurt the others.

A well-behaved device (the *victim*, its own process) sends ``cart.add`` one at a time and times op → ack,
first on a quiet hub, then while an *attacker* process runs each attack in turn against the same hub:

- ``ping_flood``: 4 connections that upgrade, never say ``hello``, never read, and stream websocket pings
  (reconnecting whenever the hub closes them);
- ``expensive_frames``: 2 authenticated connections sending valid 16 KB ``ping`` frames that carry 16,000
  integers (16 lists of 1,000), as fast as the socket takes them (their replies are read);
- ``op_flood``: 3 authenticated clients sending 256-op batches to their own carts as fast as acks come back;
- ``churn``: 4 loops of connect, upgrade, one undecodable frame, closed by the hub, again;
- ``slow_reader``: 4 subscribers of a cart written 200 times a second, none of which reads.

Figures: the victim's p50/p99 per scenario and the ratio of each attack's p99 to the quiet p99 of the same
run (docs/traps.md §17: only figures of one run compare). Target: every ratio ≤ 3.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import time
from pathlib import Path
from typing import Any

import msgspec

from benchmarks.dialects import TOKEN_SECRET
from benchmarks.profiles import Profile
from benchmarks.stats import Histogram
from benchmarks.systems import System, cpu_seconds
from benchmarks.workloads import CTX, Result, _finish, _get, _Procs, _target, log
from protocol import codec, frames
from protocol.codec import CLIENT_LIMITS, FrameDecoder
from syncd.auth import mint_token

_DECODER = FrameDecoder(frames.SERVER_FRAMES, CLIENT_LIMITS)
ATTACKS = ("ping_flood", "expensive_frames", "op_flood", "churn", "slow_reader")
RATIO_LIMIT = 3.0


def _token(client_id: str) -> str:
    return mint_token(TOKEN_SECRET, client_id=client_id, members=["*"])


def _masked(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 1 << 16:
        header = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def _upgrade(port: int, rcvbuf: int | None = None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A websocket connection through its handshake, as raw streams (a small ``rcvbuf`` for non-readers)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    await reader.readuntil(b"\r\n\r\n")
    return reader, writer


async def _discard(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(Exception):
        while await reader.read(65536):
            pass


# --- attackers -----------------------------------------------------------------------------------------


async def _ping_flood(port: int, stop: asyncio.Event) -> None:
    ping = _masked(0x9, b"p" * 125) * 64
    while not stop.is_set():
        with contextlib.suppress(Exception):
            _, writer = await _upgrade(port, rcvbuf=4096)
            while not stop.is_set() and not writer.is_closing():  # never reads
                writer.write(ping)
                await writer.drain()
            writer.close()
        await asyncio.sleep(0.05)


async def _hello(port: int, client_id: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await _upgrade(port)
    hello = frames.Hello(versions=[1], token=_token(client_id), client_id=client_id, ts=0)
    writer.write(_masked(0x2, codec.encode(hello)))
    await writer.drain()
    return reader, writer


async def _expensive_frames(port: int, stop: asyncio.Event, n: int) -> None:
    # 16 lists of 1,000: within every decoding limit (1,024 entries a container, 16,384 a frame), so the
    # frame is valid and the hub answers it; one list of 16,000 would be refused at once (too_long).
    pad = [[1] * 1000 for _ in range(16)]
    frame = _masked(0x2, msgspec.msgpack.encode({"t": "ping", "ts": 1, "pad": pad}))
    while not stop.is_set():
        with contextlib.suppress(Exception):
            reader, writer = await _hello(port, f"spender-{n}")
            reading = asyncio.create_task(_discard(reader))
            while not stop.is_set() and not reading.done():
                writer.write(frame)
                await writer.drain()
            writer.close()
        await asyncio.sleep(0.05)


async def _op_flood(url: str, stop: asyncio.Event, n: int) -> None:
    from websockets.asyncio.client import connect

    client_id = f"flooder-{n}"
    while not stop.is_set():
        with contextlib.suppress(Exception):
            async with connect(url, max_size=2**22, compression=None) as ws:
                await ws.send(
                    codec.encode(
                        frames.Hello(versions=[1], token=_token(client_id), client_id=client_id, ts=0)
                    )
                )
                welcome = _DECODER.decode(await ws.recv())
                assert isinstance(welcome, frames.Welcome)
                seq = welcome.last_seq
                while not stop.is_set():
                    ops = []
                    for _ in range(256):
                        seq += 1
                        args = {"member": client_id, "sku": f"s{seq % 50}", "qty": 1}
                        ops.append(frames.Op(seq=seq, kind="cart.add", args=args))
                    await ws.send(codec.encode(frames.OpBatch(ops=ops)))
                    await ws.recv()  # the first reply: then the next batch (the rest are read on the way)
        await asyncio.sleep(0.05)


async def _churn(port: int, stop: asyncio.Event) -> None:
    bad = _masked(0x2, b"\xc1")
    while not stop.is_set():
        with contextlib.suppress(Exception):
            reader, writer = await _upgrade(port)
            writer.write(bad)
            await writer.drain()
            await _discard(reader)
            writer.close()


async def _slow_reader(url: str, port: int, stop: asyncio.Event) -> None:
    from websockets.asyncio.client import connect

    topic = "cart:hot"
    for n in range(4):
        client_id = f"slow-{n}"
        _, writer = await _upgrade(port, rcvbuf=4096)
        writer.write(
            _masked(
                0x2,
                codec.encode(frames.Hello(versions=[1], token=_token(client_id), client_id=client_id, ts=0)),
            )
        )
        writer.write(_masked(0x2, codec.encode(frames.Subscribe(id=1, topic=topic))))
        await writer.drain()  # and never reads
    async with connect(url, max_size=2**22, compression=None) as ws:
        await ws.send(codec.encode(frames.Hello(versions=[1], token=_token("hot"), client_id="hot", ts=0)))
        welcome = _DECODER.decode(await ws.recv())
        assert isinstance(welcome, frames.Welcome)
        seq = welcome.last_seq
        while not stop.is_set():
            seq += 1
            await ws.send(
                codec.encode(
                    frames.Op(
                        seq=seq, kind="cart.add", args={"member": "hot", "sku": f"s{seq % 20}", "qty": 1}
                    )
                )
            )
            await ws.recv()
            await asyncio.sleep(1 / 200)


def attacker(attack: str, url: str, port: int, ready: Any, stop_flag: Any) -> None:
    """Process target: run ``attack`` until ``stop_flag`` is set."""

    async def main() -> None:
        stop = asyncio.Event()
        if attack == "ping_flood":
            tasks = [_ping_flood(port, stop) for _ in range(4)]
        elif attack == "expensive_frames":
            tasks = [_expensive_frames(port, stop, n) for n in range(2)]
        elif attack == "op_flood":
            tasks = [_op_flood(url, stop, n) for n in range(3)]
        elif attack == "churn":
            tasks = [_churn(port, stop) for _ in range(4)]
        else:
            tasks = [_slow_reader(url, port, stop)]
        running = [asyncio.create_task(task) for task in tasks]
        ready.set()
        await asyncio.to_thread(stop_flag.wait)
        stop.set()
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    asyncio.run(main())


# --- the victim ------------------------------------------------------------------------------------------


def victim(url: str, client_id: str, count: int, out: Any) -> None:
    """Process target: ``count`` ``cart.add`` one at a time, 5 ms apart; op → ack latencies in ms."""
    from websockets.asyncio.client import connect

    async def main() -> list[float]:
        latencies: list[float] = []
        async with connect(url, max_size=2**22, compression=None) as ws:
            hello = frames.Hello(versions=[1], token=_token(client_id), client_id=client_id, ts=0)
            await ws.send(codec.encode(hello))
            welcome = _DECODER.decode(await ws.recv())
            assert isinstance(welcome, frames.Welcome)
            seq = welcome.last_seq
            for n in range(count):
                seq += 1
                op = frames.Op(
                    seq=seq, kind="cart.add", args={"member": client_id, "sku": f"s{n % 5}", "qty": 1}
                )
                started = time.perf_counter()
                await ws.send(codec.encode(op))
                while not isinstance(_DECODER.decode(await ws.recv()), frames.Ack):
                    pass
                latencies.append((time.perf_counter() - started) * 1000)
                await asyncio.sleep(0.005)
        return latencies

    out.put(asyncio.run(main()))


def _measure(system: System, profile: Profile, attack: str | None, n: int) -> Result:
    procs = _Procs()
    stop_flag = CTX.Event()
    ready = CTX.Event()
    out = CTX.Queue()
    try:
        if attack is not None:
            procs.spawn(attacker, attack, system.url, system.port, ready, stop_flag)
            procs.wait(ready, 30, f"{attack} attacker ready", system)
            time.sleep(profile.isolation_warmup_s)
        cpu_before = cpu_seconds(system.pid)
        redis_before = cpu_seconds(system.redis_pid())
        started = time.monotonic()
        procs.spawn(victim, system.url, f"victim-{n}", profile.isolation_ops, out)
        latencies: list[float] = _get(out, 600, system)  # type: ignore[assignment]
        elapsed = time.monotonic() - started
        hub_cores = (cpu_seconds(system.pid) - cpu_before) / elapsed
        redis_cores = (cpu_seconds(system.redis_pid()) - redis_before) / elapsed
    finally:
        stop_flag.set()
        procs.close()
    histogram = Histogram()
    histogram.add_all(value * 1000 for value in latencies)
    summary = histogram.summary()
    return {
        "count": len(latencies),
        "p50_ms": summary["p50_ms"],
        "p99_ms": summary["p99_ms"],
        "max_ms": summary["max_ms"],
        "hub_cores": round(hub_cores, 2),
        "redis_cores": round(redis_cores, 2),
    }


def isolation(profile: Profile, workdir: Path) -> Result:
    system = System("syncd", workdir)
    log("  syncd: starting")
    results: dict[str, Result] = {}
    try:
        system.start()
        for n, attack in enumerate((None, *ATTACKS)):
            name = attack or "quiet"
            results[name] = _measure(system, profile, attack, n)
            log(f"  {name}: {results[name]}")
        if not system.alive():
            raise RuntimeError(f"syncd: the hub died during the run:\n{system.log()}")
    finally:
        system.stop()
    quiet = results["quiet"]["p99_ms"]
    ratios = {attack: round(results[attack]["p99_ms"] / quiet, 2) if quiet else None for attack in ATTACKS}
    targets = [
        _target(f"{attack} p99 <= {RATIO_LIMIT}x quiet", ratios[attack], "<=", RATIO_LIMIT)
        for attack in ATTACKS
    ]
    params = {
        "victim_ops": profile.isolation_ops,
        "warmup_s": profile.isolation_warmup_s,
        "attacks": list(ATTACKS),
    }
    return _finish("isolation", profile, params, {"syncd": {"victim": results}}, ratios, targets)
