"""The ``replay`` workload's load processes: the SDK (:class:`clients.SyncClient`) against a running hub.

``replay_load`` queues ops offline (local op latency: call → local SQLite commit), reopens the data dir,
times ``go_online()`` → ``wait_synced()`` and checks exactly-once (the hub's ``last_seq`` for the client and
the cart's total). ``pending_fill`` / ``pending_rss`` queue many ops offline in one process and measure a
fresh process's RSS with them pending after reopening the data dir.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from benchmarks.dialects import Client, syncd_token
from benchmarks.loadgen import SKUS, Queue, _report
from benchmarks.stats import Histogram
from benchmarks.systems import cpu_seconds, rss_kib
from clients import SyncClient

MEMBER = "m-replay"
CLIENT_ID = "replay-1"
BATCH = 500
"""``pending_fill`` submits this many ops at once (the SDK commits them together): only filling is batched."""


def _token(member: str) -> Any:
    return lambda client_id: syncd_token(client_id, member)


class CpuMeter:
    """CPU per op of the processes a replay runs on (this client, the hub, its Redis), read from ``/proc``
    around the replay: on a shared machine the seconds move with other work, the CPU spent much less."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = {"client": os.getpid(), **pids}
        self.start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def per_op_us(self, ops: int) -> dict[str, float]:
        return {
            name: round((cpu_seconds(pid) - self.start[name]) / ops * 1e6, 1)
            for name, pid in self.pids.items()
        }


async def timed_replay(
    client: SyncClient, ops: int, pids: dict[str, int]
) -> tuple[float, dict[str, float], int]:
    """Bring an offline ``client`` online and wait until its outbox has synced: the seconds it took, the
    CPU per op of each process (:class:`CpuMeter`) and the ops still pending after (0 when all synced)."""
    t0, cpu = time.perf_counter(), CpuMeter(pids)
    await client.go_online()
    status = await client.wait_synced(timeout=300)
    return time.perf_counter() - t0, cpu.per_op_us(ops), status.pending_ops


def replay_load(url: str, data_dir: str, ops: int, pids: dict[str, int], out: Queue) -> None:
    _report(out, _replay(url, Path(data_dir), ops, pids))


async def _replay(url: str, data_dir: Path, ops: int, pids: dict[str, int]) -> dict[str, Any]:
    hist = Histogram()
    offline = SyncClient(
        url, token=_token(MEMBER), data_dir=data_dir / "device", client_id=CLIENT_ID, online=False
    )
    async with offline as client:
        cart = client.cart(MEMBER)
        for i in range(ops):
            t0 = time.perf_counter_ns()
            await cart.add(SKUS[i % len(SKUS)], 1)
            hist.add((time.perf_counter_ns() - t0) / 1000)
        queued = client.status.pending_ops
    reopened = SyncClient(
        url, token=_token(MEMBER), data_dir=data_dir / "device", client_id=CLIENT_ID, online=False
    )
    async with reopened as client:
        client.cart(MEMBER)
        pending_before = client.status.pending_ops
        seconds, cpu_us, pending_after = await timed_replay(client, ops, pids)
    hub = await Client.open("syncd", url, CLIENT_ID, MEMBER)  # welcome.last_seq of the replayed client
    last_seq = hub.seq
    await hub.ws.close()
    async with SyncClient(url, token=_token(MEMBER), data_dir=data_dir / "verify", client_id="replay-v") as v:
        cart = v.cart(MEMBER)
        await v.wait_synced(timeout=60)
        units = sum(line.qty for line in cart.lines.values())
    return {
        "ops": ops,
        "replay_s": round(seconds, 3),
        "replay_ops_per_s": round(ops / seconds) if seconds else None,
        "cpu_us_per_op": cpu_us,
        "local_op_p50_ms": hist.percentile_ms(50),
        "local_op_p99_ms": hist.percentile_ms(99),
        "local_op_max_ms": hist.percentile_ms(100),
        "queued": queued,
        "pending_before_replay": pending_before,
        "pending_after_replay": pending_after,
        "hub_last_seq": last_seq,
        "hub_cart_units": units,
    }


def pending_fill(url: str, data_dir: str, ops: int, out: Queue) -> None:
    _report(out, _fill(url, Path(data_dir), ops))


async def _fill(url: str, data_dir: Path, ops: int) -> dict[str, Any]:
    async with SyncClient(
        url, token=_token(MEMBER), data_dir=data_dir, client_id="replay-mem", online=False
    ) as client:
        cart = client.cart(MEMBER)
        for start in range(0, ops, BATCH):
            await asyncio.gather(
                *(cart.add(SKUS[i % len(SKUS)], 1) for i in range(start, min(ops, start + BATCH)))
            )
        return {"queued": client.status.pending_ops}


def pending_rss(url: str, data_dir: str, out: Queue) -> None:
    _report(out, _rss(url, Path(data_dir)))


async def _rss(url: str, data_dir: Path) -> dict[str, Any]:
    before = rss_kib(os.getpid())
    async with SyncClient(
        url, token=_token(MEMBER), data_dir=data_dir, client_id="replay-mem", online=False
    ) as client:
        client.cart(MEMBER)
        pending = client.status.pending_ops
        await asyncio.sleep(0.2)
        after = rss_kib(os.getpid())
    return {"pending_ops": pending, "client_rss_kib": after, "client_rss_delta_kib": after - before}
