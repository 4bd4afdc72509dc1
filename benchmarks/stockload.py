"""Load for the stock workloads (``flashsale``, ``stockwatch``): shoppers reserving through the hub, and the
floor of a reservation — the hub's own ``stock_reserve`` Lua script called straight from a Redis client.

A shopper is closed-loop: it sends ``stock.reserve`` of 1 unit, waits for the answer, and sends the next,
until the hub answers ``insufficient_stock`` (sold out). The floor runs the same script with the same KEYS
and ARGV the hub passes (dedup record, watermark, topic stream, PUBLISH), pipelined from a few connections:
what Redis alone can do for one reservation, with no websocket, no frame decoding and no batching logic.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any, Final

import msgspec
from redis.asyncio import Redis
from websockets.asyncio.client import connect

from benchmarks.dialects import TOKEN_SECRET, Client, Reply, _as_bytes, syncd_reserve
from benchmarks.loadgen import Event, Queue, _report, _wait
from benchmarks.stats import Histogram
from protocol import codec, frames
from protocol import stock as rules
from protocol.codec import CLIENT_LIMITS, FrameDecoder
from protocol.types.stock import StockReserve, StockRestock
from syncd.auth import mint_token
from syncd.store.keys import channel, client_slot
from syncd.store.redis_store import LOG_MAX_AGE_S, LOG_MAX_BYTES, LOG_MAXLEN, _outcome
from syncd.store.scripts import load_scripts
from syncd.types.stock import StockStore

TTL_MS: Final = 600_000
"""Holds outlive any run: nothing expires while a workload measures."""
CHANNEL: Final = "app"
"""The channel of an ``app`` token that names none: the shoppers reserve through it."""
_reply = msgspec.msgpack.Decoder(Reply).decode


async def restock(url: str, sku: str, qty: int) -> None:
    """``qty`` units of ``sku`` on hand, through the hub with an ``ops`` token."""
    await admin_op(url, rules.RESTOCK, {"member": "ops", "sku": sku, "qty": qty})


async def admin_op(url: str, kind: str, args: dict[str, Any]) -> None:
    """One admin op (``stock.restock``, ``stock.allot``…) through the hub with an ``ops`` token."""
    ws = await connect(url, compression=None, max_size=2**22, ping_interval=None, open_timeout=60)
    try:
        tok = mint_token(TOKEN_SECRET, client_id="bench-ops", role="ops", members=["*"])
        now = time.time_ns() // 1_000_000
        await ws.send(codec.encode(frames.Hello(versions=[1], token=tok, client_id="bench-ops", ts=now)))
        decoder = FrameDecoder(frames.SERVER_FRAMES, CLIENT_LIMITS)
        welcome = decoder.decode(_as_bytes(await ws.recv()))
        if not isinstance(welcome, frames.Welcome):
            raise RuntimeError(f"the ops hello was answered with {welcome!r}")
        await ws.send(codec.encode(frames.Op(seq=welcome.last_seq + 1, kind=kind, args=args)))
        while True:
            reply = _reply(_as_bytes(await ws.recv()))
            if reply.t in ("ack", "err"):
                if not reply.ok or reply.t == "err":
                    raise RuntimeError(f"{kind} refused: {reply.code}")
                return
    finally:
        await ws.close()


# --- shoppers through the hub -------------------------------------------------------------------------------


def shopper_pool(
    url: str, devices: list[tuple[str, str]], sku: str, ready: Event, go: Event, out: Queue
) -> None:
    _report(out, _shopper_pool(url, devices, sku, ready, go))


async def _shopper_pool(
    url: str, devices: list[tuple[str, str]], sku: str, ready: Event, go: Event
) -> dict[str, Any]:
    gate = asyncio.Semaphore(100)

    async def open_one(cid: str, member: str) -> Client:
        async with gate:
            return await Client.open("syncd", url, cid, member)

    clients = await asyncio.gather(*(open_one(cid, member) for cid, member in devices))
    ready.set()
    await _wait(go, 0.001)
    cpu0 = time.process_time()
    hist = Histogram()
    ok = 0
    refused: dict[str, int] = {}
    last_ok = 0

    async def shop(client: Client, member: str) -> None:
        nonlocal ok, last_ok
        while True:
            client.seq += 1
            data = syncd_reserve(client.seq, sku, member, TTL_MS)
            sent = time.monotonic_ns()
            await client.ws.send(data)
            while True:
                reply = _reply(_as_bytes(await client.ws.recv()))
                if reply.t in ("ack", "err"):
                    break
            now = time.monotonic_ns()
            hist.add((now - sent) / 1000)
            if reply.t == "ack" and reply.ok:
                ok += 1
                last_ok = max(last_ok, now)
                continue
            code = reply.code or "?"
            refused[code] = refused.get(code, 0) + 1
            return  # sold out (or refused): this shopper is done

    await asyncio.gather(*(shop(c, m) for c, (_, m) in zip(clients, devices, strict=True)))
    cpu_s = time.process_time() - cpu0
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    return {"ok": ok, "refused": refused, "hist": hist.counts, "last_ok_ns": last_ok, "cpu_s": cpu_s}


# --- the floor: the same script, straight from redis-py ---------------------------------------------------


class ScriptFloor:
    """EVALSHA of the hub's own stock scripts with the KEYS and ARGV the hub would pass (standalone Redis:
    the client's watermark key inline), for ``clients`` logical clients of one SKU."""

    def __init__(self, redis: Redis, sku: str) -> None:
        self.redis = redis
        self.sku = sku
        self.spec = StockStore()
        self.scripts = load_scripts()
        self.epoch = secrets.token_hex(6)
        self.count = 0

    async def load(self) -> None:
        for name in ("stock_reserve", "stock_restock"):
            await self.redis.script_load(self.scripts[name].source)

    def command(
        self, kind: str, client_id: str, seq: int, args: StockReserve | StockRestock
    ) -> tuple[Any, ...]:
        script = self.scripts[self.spec.scripts[kind]]
        keys = [*self.spec.keys(args, client_id), f"{client_slot(client_id)}:seq"]
        topic = str(self.spec.topic(args))
        self.count += 1
        argv = [
            client_id,
            seq,
            0,
            0,
            b"\x80",
            7 * 24 * 3600 * 1000,
            LOG_MAXLEN,
            f"{self.epoch}{self.count:x}",
            channel(topic),
            topic,
            kind,
            LOG_MAX_AGE_S * 1000,
            LOG_MAX_BYTES,
            *self.spec.argv(args),
        ]
        return ("EVALSHA", script.sha, len(keys), *keys, *argv)

    async def restock(self, qty: int) -> None:
        args = StockRestock(member="ops", sku=self.sku, qty=qty)
        await self.redis.execute_command(*self.command(rules.RESTOCK, "floor-ops", 1, args))  # type: ignore[no-untyped-call]

    async def sale(self, clients: int, workers: int, depth: int) -> dict[str, Any]:
        """``workers`` connections, each pipelining ``depth`` reservations of distinct logical clients at a
        time, until the SKU is sold out. Latency of a reservation: its pipeline's round trip."""
        seqs = [0] * clients
        hist = Histogram()
        ok = 0
        refused: dict[str, int] = {}
        last_ok = 0
        sold_out = False

        async def worker(own: list[int]) -> None:
            """Each logical client belongs to one worker and has one op in flight at a time, as through the
            hub (two ops of one client in flight could run out of order: the later one's dedup record would
            answer the earlier as a duplicate)."""
            nonlocal ok, last_ok, sold_out
            batch = max(1, min(depth, len(own)))
            turn = 0
            while not sold_out:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for _ in range(batch):
                        i = own[turn % len(own)]
                        turn += 1
                        seqs[i] += 1
                        args = StockReserve(
                            member=f"m-f{i}", sku=self.sku, channel=CHANNEL, qty=1, ttl_ms=TTL_MS
                        )
                        pipe.execute_command(*self.command(rules.RESERVE, f"f-{i}", seqs[i], args))
                    sent = time.monotonic_ns()
                    replies = await pipe.execute()
                now = time.monotonic_ns()
                for reply in replies:
                    hist.add((now - sent) / 1000)
                    code = _script_code(reply)
                    if code is None:
                        ok += 1
                        last_ok = now
                    else:
                        refused[code] = refused.get(code, 0) + 1
                        sold_out = True

        start = time.monotonic_ns()
        cpu0 = time.process_time()
        await asyncio.gather(
            *(worker(list(range(w, clients, workers))) for w in range(min(workers, clients)))
        )
        return {
            "ok": ok,
            "refused": refused,
            "hist": hist,
            "start_ns": start,
            "last_ok_ns": last_ok,
            "cpu_s": time.process_time() - cpu0,
        }


def _script_code(reply: Any) -> str | None:
    """``None`` for an applied op, else the rejection code of a stock script's reply (read as the hub reads
    it)."""
    outcome = _outcome(0, reply)
    return None if outcome.ok else str(outcome.code)
