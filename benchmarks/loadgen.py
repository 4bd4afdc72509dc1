"""Load generators: each runs in its own process (``multiprocessing``, spawn), so that the clients are not the
bottleneck of the server they measure, and reports back through a queue.

Times are ``time.monotonic_ns()`` — ``CLOCK_MONOTONIC``, one clock for every process on the machine (Node's
``process.hrtime`` reads the same), so a receive time in one process minus a send time in another is a
latency. Send times are taken just before the message is handed to the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import resource
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from benchmarks.dialects import HEARTBEAT_PING_S, Client, Dialect, syncd_ping, syncd_reserve
from benchmarks.stats import Histogram

SKUS = tuple(f"SKU-{i}" for i in range(8))
"""Ops rotate over a few lines, so a cart stays small (the hub folds a line's dots past 16 anyway)."""

CONNECT_ATTEMPTS = 6
"""Handshakes per connection in ``conns`` before it counts as failed."""

Queue = Any  # multiprocessing queue / event proxies: untyped in the standard library
Event = Any


def _report(out: Queue, coro: Coroutine[Any, Any, dict[str, Any]]) -> None:
    try:
        result = asyncio.run(coro)
    except BaseException:
        result = {"error": traceback.format_exc()}
    out.put(result)


async def _wait(event: Event, poll_s: float = 0.01) -> None:
    while not event.is_set():  # noqa: ASYNC110 - a multiprocessing event, set by another process
        await asyncio.sleep(poll_s)


async def _keepalive(clients: list[Client]) -> None:
    """The hub closes a connection from which nothing arrived for 3 heartbeats: ping like the SDK does."""
    while True:
        await asyncio.sleep(HEARTBEAT_PING_S)
        for client in clients:
            if client.dialect == "syncd":
                with contextlib.suppress(Exception):
                    await client.ws.send(syncd_ping())


async def _paced(rate: float, seconds: float, send: Callable[[], Awaitable[None]]) -> None:
    """Call ``send`` ``rate`` times a second for ``seconds`` (open loop: late calls catch up at once)."""
    total = max(1, round(rate * seconds))
    start = time.monotonic()
    sent = 0
    while sent < total:
        due = min(total, int((time.monotonic() - start) * rate) + 1)
        while sent < due:
            await send()
            sent += 1
        delay = start + sent / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


class _Writer:
    """One writing device: sends ``cart.add`` ops open-loop (``stock.reserve`` of ``sku`` when one is
    given), records send times, counts the replies."""

    def __init__(self, client: Client, member: str, sku: str | None = None) -> None:
        self.client = client
        self.member = member
        self.sku = sku
        self.sends: dict[int, int] = {}
        self.acked = 0
        self.refused: dict[str, int] = {}
        self._reader = asyncio.create_task(self._read())

    async def send(self) -> None:
        if self.sku is not None:
            self.client.seq += 1
            data: bytes | str = syncd_reserve(self.client.seq, self.sku, self.member)
        else:
            data = self.client.op(self.member, SKUS[self.client.seq % len(SKUS)])
        self.sends[self.client.seq] = time.monotonic_ns()
        await self.client.ws.send(data)

    async def _read(self) -> None:
        async for message in self.client.ws:
            kind, code, _ = self.client.parse(message)
            if kind == "ack":
                self.acked += 1
            elif kind == "nack":
                self.refused[code] = self.refused.get(code, 0) + 1
            else:
                await self.client.pong_if_ping(message)

    async def drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.acked + sum(self.refused.values()) < len(self.sends) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        self._reader.cancel()


class _Receiver:
    """One subscribed device: records the receive time of every event, by origin ``(client_id, seq)``."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.received: dict[tuple[str, int], int] = {}
        self.bytes = 0
        self.closed: int | None = None
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for message in self.client.ws:
                now = time.monotonic_ns()
                kind, origin, seq = self.client.parse(message)
                if kind == "ev":
                    self.received.setdefault((origin, seq), now)
                    self.bytes += len(message)
                else:
                    await self.client.pong_if_ping(message)
        finally:
            self.closed = self.client.ws.close_code or 1006

    def stop(self) -> None:
        self._task.cancel()


# --- sync: device A writes, device B receives ------------------------------------------------------------


def sync_writer(
    dialect: Dialect,
    url: str,
    member: str,
    phases: list[tuple[float, float]],
    ready: Event,
    go: Event,
    out: Queue,
) -> None:
    _report(out, _sync_writer(dialect, url, member, phases, ready, go))


async def _sync_writer(
    dialect: Dialect, url: str, member: str, phases: list[tuple[float, float]], ready: Event, go: Event
) -> dict[str, Any]:
    client = await Client.open(dialect, url, "dev-a", member)
    writer = _Writer(client, member)
    ready.set()
    await _wait(go)
    cpu0 = time.process_time()
    bounds = []
    for rate, seconds in phases:
        first = client.seq + 1
        await _paced(rate, seconds, writer.send)
        bounds.append((rate, first, client.seq))
    await writer.drain(10.0)
    return {
        "client_id": client.client_id,
        "sends": writer.sends,
        "phases": bounds,
        "acked": writer.acked,
        "refused": writer.refused,
        "cpu_s": time.process_time() - cpu0,
    }


def sync_receiver(dialect: Dialect, url: str, member: str, ready: Event, stop: Event, out: Queue) -> None:
    _report(out, _sync_receiver(dialect, url, member, ready, stop))


async def _sync_receiver(
    dialect: Dialect, url: str, member: str, ready: Event, stop: Event
) -> dict[str, Any]:
    client = await Client.open(dialect, url, "dev-b", member)
    await client.subscribe(f"cart:{member}")
    receiver = _Receiver(client)
    pinger = asyncio.create_task(_keepalive([client]))
    ready.set()
    cpu0 = time.process_time()
    await _wait(stop, 0.05)
    receiver.stop()
    pinger.cancel()
    return {
        "received": {seq: t for (_, seq), t in receiver.received.items()},
        "closed": receiver.closed,
        "cpu_s": time.process_time() - cpu0,
    }


# --- write: closed-loop writers --------------------------------------------------------------------------


def write_pool(
    dialect: Dialect,
    url: str,
    devices: list[tuple[str, str]],
    warmup_s: float,
    duration_s: float,
    ready: Event,
    go: Event,
    out: Queue,
) -> None:
    _report(out, _write_pool(dialect, url, devices, warmup_s, duration_s, ready, go))


async def _write_pool(
    dialect: Dialect,
    url: str,
    devices: list[tuple[str, str]],
    warmup_s: float,
    duration_s: float,
    ready: Event,
    go: Event,
) -> dict[str, Any]:
    clients = await asyncio.gather(*(Client.open(dialect, url, cid, member) for cid, member in devices))
    ready.set()
    await _wait(go, 0.001)
    start = time.monotonic_ns() + int(warmup_s * 1e9)
    end = start + int(duration_s * 1e9)
    hist = Histogram()
    acked = 0
    refused: dict[str, int] = {}

    async def loop(client: Client, member: str) -> None:
        nonlocal acked
        while True:
            data = client.op(member, SKUS[client.seq % len(SKUS)])
            sent = time.monotonic_ns()
            await client.ws.send(data)
            while True:
                message = await client.ws.recv()
                kind, code, _ = client.parse(message)
                if kind in ("ack", "nack"):
                    break
                await client.pong_if_ping(message)
            now = time.monotonic_ns()
            if now > end:
                return
            if now >= start:
                if kind == "ack":
                    acked += 1
                    hist.add((now - sent) / 1000)
                else:
                    refused[code] = refused.get(code, 0) + 1

    async def cpu_window() -> float:
        await asyncio.sleep(max(0.0, (start - time.monotonic_ns()) / 1e9))
        cpu0 = time.process_time()
        await asyncio.sleep(max(0.0, (end - time.monotonic_ns()) / 1e9))
        return time.process_time() - cpu0

    cpu = asyncio.create_task(cpu_window())
    await asyncio.gather(
        *(loop(client, member) for client, (_, member) in zip(clients, devices, strict=True))
    )
    return {"acked": acked, "refused": refused, "hist": hist.counts, "cpu_s": await cpu}


# --- fanout: one writer, a ramp of rates; a monitor subscriber decides when to stop ------------------------


def fanout_publisher(
    dialect: Dialect,
    url: str,
    member: str,
    ramp: dict[str, float],
    ready: Event,
    go: Event,
    out: Queue,
    sku: str | None = None,
) -> None:
    """The fan-out ramp's writer and its monitor subscriber: ``cart.add`` to ``cart:<member>``, or, with a
    ``sku``, ``stock.reserve`` of it watched on ``stock:<sku>`` (``stockwatch``)."""
    _report(out, _fanout_publisher(_Publisher(dialect, url, member, sku), ramp, ready, go))


@dataclasses.dataclass(frozen=True, slots=True)
class _Publisher:
    dialect: Dialect
    url: str
    member: str
    sku: str | None

    @property
    def topic(self) -> str:
        return f"stock:{self.sku}" if self.sku is not None else f"cart:{self.member}"


async def _fanout_publisher(
    pub: _Publisher, ramp: dict[str, float], ready: Event, go: Event
) -> dict[str, Any]:
    dialect, url, member = pub.dialect, pub.url, pub.member
    writer = _Writer(await Client.open(dialect, url, "pub-0", member), member, pub.sku)
    monitor_client = await Client.open(dialect, url, "mon-0", member)
    await monitor_client.subscribe(pub.topic)
    monitor = _Receiver(monitor_client)
    pinger = asyncio.create_task(_keepalive([writer.client, monitor_client]))
    ready.set()
    await _wait(go)
    cpu0 = time.process_time()
    rate = ramp["start_rate"]
    steps: list[dict[str, Any]] = []
    stop_reason = "max_steps"
    strikes = 0
    for _ in range(int(ramp["max_steps"])):
        first = writer.client.seq + 1
        t0 = time.monotonic_ns()
        await _paced(rate, ramp["step_s"], writer.send)
        t1 = time.monotonic_ns()
        last = writer.client.seq
        await asyncio.sleep(ramp["grace_s"])
        now = time.monotonic_ns()
        lag = Histogram()
        for seq in range(first, last + 1):
            got = monitor.received.get((writer.client.client_id, seq), now)
            lag.add((got - writer.sends[seq]) / 1000)
        p99 = lag.percentile_ms(99) or 0.0
        steps.append({"rate": rate, "first": first, "last": last, "t0": t0, "t1": t1, "monitor_p99_ms": p99})
        if writer.refused or monitor.closed is not None:
            stop_reason = f"refused={writer.refused} monitor_closed={monitor.closed}"
            break
        if p99 > ramp["limit_ms"]:
            # One step over the limit may be a hiccup of a shared machine: try the same rate once more.
            strikes += 1
            if strikes == 2:
                stop_reason = f"monitor p99 {p99} ms > {ramp['limit_ms']} ms twice at {rate:.1f} events/s"
                break
        else:
            strikes = 0
            rate *= ramp["fast_factor"] if p99 <= ramp["comfort_ms"] else ramp["slow_factor"]
            rate = min(rate, ramp["max_rate"])
        # Let a backlog drain before the next step, so each step is its own trial.
        deadline = time.monotonic() + 5
        while (writer.client.client_id, last) not in monitor.received and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    await writer.drain(5.0)
    monitor.stop()
    pinger.cancel()
    events = len(monitor.received)
    return {
        "client_id": writer.client.client_id,
        "sends": writer.sends,
        "steps": steps,
        "stop_reason": stop_reason,
        "refused": writer.refused,
        "event_bytes": round(monitor.bytes / events) if events else None,
        "cpu_s": time.process_time() - cpu0,
    }


# --- conns: many idle, authenticated connections ---------------------------------------------------------


def conn_holder(
    dialect: Dialect,
    url: str,
    devices: list[tuple[str, str]],
    concurrency: int,
    opened: Queue,
    stop: Event,
    out: Queue,
) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    _report(out, _conn_holder(dialect, url, devices, concurrency, opened, stop))


async def _conn_holder(
    dialect: Dialect,
    url: str,
    devices: list[tuple[str, str]],
    concurrency: int,
    opened: Queue,
    stop: Event,
) -> dict[str, Any]:
    gate = asyncio.Semaphore(concurrency)
    failures: dict[str, int] = {}
    clients: list[Client] = []
    receivers: list[_Receiver] = []  # answer engine.io pings, drain pongs
    # Pings start with the first connection: opening thousands takes longer than the hub's heartbeat timeout.
    pinger = asyncio.create_task(_keepalive(clients))

    async def open_one(cid: str, member: str) -> None:
        # A refused or dropped handshake is retried like the SDK does: jittered exponential backoff.
        for attempt in range(CONNECT_ATTEMPTS):
            async with gate:
                try:
                    client = await Client.open(dialect, url, cid, member)
                except Exception as exc:
                    code = getattr(getattr(exc, "rcvd", None), "code", None)
                    name = type(exc).__name__ + (f" {code}" if code else "")
                    failures[name] = failures.get(name, 0) + 1
                else:
                    clients.append(client)
                    receivers.append(_Receiver(client))
                    return
            await asyncio.sleep(random.uniform(0, 0.25 * 2**attempt))

    await asyncio.gather(*(open_one(cid, member) for cid, member in devices))
    opened.put(len(clients))
    await _wait(stop, 0.05)
    closed = sum(1 for receiver in receivers if receiver.closed is not None)
    pinger.cancel()
    return {"opened": len(clients), "failures": failures, "closed_early": closed}
