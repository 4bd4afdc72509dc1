"""Redis Cluster failover under load: no acknowledged op lost or doubled, no history that silently diverges.

A 3-primary + 3-replica cluster of the ``redis-server`` on PATH (``cluster-node-timeout 2000``, AOF on), two
hub processes with ``SYNCD_REDIS_CLUSTER=1`` and the default durability (``replicas`` on a cluster), writers
that resend an op until it is acked (same seq: what the SDK's outbox does), and a subscriber that follows
every cart. While ops flow, one primary is frozen (SIGSTOP past the node timeout, then SIGCONT: it wakes up
demoted) or killed (SIGKILL, restarted later: it rejoins as a replica); a replica is promoted.

What must hold (docs/traps.md §4b, §4c):

- every op is acked once, and the final carts hold every acked op exactly once: 0 lost, 0 doubled;
- the subscriber's view — snapshots, then events at the next offset of the same epoch — ends equal to the
  final carts: an event the old primary published and the failover discarded (a phantom), or an offset the
  new primary reused, is only ever followed by a reset snapshot, never silently trusted.

The figures of each run are printed (``pytest -s``) in one ``failover:`` line.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import os
import signal
from collections.abc import Iterator

import pytest
from websockets.exceptions import ConnectionClosed

from protocol import frames
from protocol.errors import ErrorCode
from syncd.embedded import EmbeddedRedis, find_server_binary
from tests.conftest import RedisServerFactory, add_replicas, start_cluster
from tests.e2e.conftest import HubFactory
from tests.e2e.harness import HubProcess, WireClient
from tests.e2e.test_cluster import owners
from tests.e2e.test_faults import Ledger, open_until_welcomed, origins_in, reply

pytestmark = pytest.mark.e2e
NODE_TIMEOUT_MS = 2000
FREEZE_S = 3 * NODE_TIMEOUT_MS / 1000
"""Past the node timeout, long enough for the replica to be promoted before the old primary wakes."""


@dataclasses.dataclass
class Cluster:
    primaries: list[EmbeddedRedis]
    replicas: list[EmbeddedRedis]


@pytest.fixture
def cluster(redis_server_factory: RedisServerFactory) -> Iterator[Cluster]:
    binary = str(find_server_binary())
    args = ["--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--appendfsync", "always"]
    primaries = start_cluster(redis_server_factory, extra_args=args, binary=binary)
    replicas = add_replicas(
        redis_server_factory, primaries, extra_args=[*args, "--repl-diskless-sync-delay", "0"], binary=binary
    )
    yield Cluster(primaries, replicas)
    for server in [*primaries, *replicas]:
        if server.pid is not None:
            os.kill(server.pid, signal.SIGCONT)
        server.kill()  # nothing to keep; a graceful stop of a failed-over pair can take its 10 s timeout
        server.stop()


def members_on(primaries: list[EmbeddedRedis], per_node: int) -> list[tuple[str, int]]:
    """``(member, primary index)``: ``per_node`` members whose slots each primary owns."""
    names = [f"fo{i}" for i in range(400)]
    where = owners(primaries, {name: f"{{m:{name}}}" for name in names})
    chosen: list[tuple[str, int]] = []
    for node in range(len(primaries)):
        chosen += [(name, node) for name in names if where[name] == node][:per_node]
    return chosen


@dataclasses.dataclass
class Run:
    fault: str
    writers: int
    ops: int
    """Per writer, at most 48: its ops add to 3 lines, and past 16 dots a line folds the oldest into one
    base dot, which no longer names the ops (:func:`origins_in` could not count them)."""


async def failover_under_load(cluster: Cluster, hub_factory: HubFactory, run: Run) -> dict[str, int]:
    """Write, fault, check; returns the figures."""
    env = {"SYNCD_REDIS_CLUSTER": "1", "SYNCD_REDIS_TIMEOUT_MS": "3000"}
    hubs: list[HubProcess] = [hub_factory(cluster.primaries[i].url, **env) for i in (1, 2)]
    assert all(hub.healthz()["durability"]["mode"] == "replicas" for hub in hubs)
    turn = itertools.count()

    def next_hub() -> str:
        return hubs[next(turn) % len(hubs)].url

    victim = 0
    per_node = run.writers // len(cluster.primaries)
    placed = members_on(cluster.primaries, per_node + 1)
    idle_member = next(member for member, node in placed if node == victim)
    placed = [(member, node) for member, node in placed if member != idle_member][: per_node * 3]
    ledgers = [Ledger(f"w{i}", member, run.ops) for i, (member, _) in enumerate(placed)]
    # A cart on the victim written once, before the fault, and never again: no new event will tell its
    # subscribers that the shard has a new history; the hubs' generation watcher must.
    idle = Ledger("idler", idle_member, 1)
    idler = await open_until_welcomed(next_hub, idle)
    await idler.send(idle.op(1))
    first = await reply(idler)
    assert isinstance(first, frames.Ack), first
    idle.record(first)
    await idler.close()
    on_victim = sum(1 for _, node in placed if node == victim)
    assert on_victim > 0
    acked_total = 0
    fault_now, faulted = asyncio.Event(), asyncio.Event()

    async def write(ledger: Ledger) -> None:
        nonlocal acked_total
        client: WireClient | None = None
        seq = 1
        while seq <= ledger.n:
            if client is None:
                client = await open_until_welcomed(next_hub, ledger, attempts=600)
            try:
                await client.send(ledger.op(seq))
                ledger.sent = max(ledger.sent, seq)
                answer = await reply(client)
            except ConnectionClosed:
                ledger.lost(client.ws.close_code)
                client = None
                await asyncio.sleep(0.05)
                continue
            if isinstance(answer, frames.Error):  # outcome unknown: resend the same op
                assert (answer.code, answer.ref) == (ErrorCode.UNAVAILABLE, seq), answer
                ledger.errors[answer.code] += 1
                ledger.unknown.add(seq)
                await asyncio.sleep((answer.retry_after_ms or 100) / 1000)
                continue
            ledger.record(answer)
            acked_total += 1
            if acked_total == len(ledgers) * run.ops // 4:
                fault_now.set()
            seq += 1
            if not faulted.is_set():
                await asyncio.sleep(0.01)  # spread the ops over the fault instead of racing ahead of it
        if client is not None:
            await client.close()

    topics = {f"cart:{ledger.member}": ledger for ledger in [*ledgers, idle]}
    idle_topic = f"cart:{idle_member}"
    seen: dict[str, list[frames.Origin]] = {topic: [] for topic in topics}
    cursors: dict[str, frames.Cursor | None] = dict.fromkeys(topics)
    resets: collections.Counter[str] = collections.Counter()
    writing = asyncio.Event()

    def complete() -> bool:
        return (
            not writing.is_set()
            and all(len(seen[t]) >= ledger.n for t, ledger in topics.items())
            and resets[idle_topic] > 0
        )

    async def watch() -> None:
        ids = dict(enumerate(topics, start=1))
        while not complete():
            try:
                client = await WireClient.open(next_hub(), "watcher")
            except (ConnectionClosed, OSError):
                await asyncio.sleep(0.1)
                continue
            if client.welcome is None:
                await client.close()
                await asyncio.sleep(0.1)
                continue
            try:
                for sub_id, topic in ids.items():
                    await client.send(frames.Subscribe(id=sub_id, topic=topic, cursor=cursors[topic]))
                while not complete():
                    try:
                        frame = await client.recv(1)
                    except TimeoutError:
                        continue
                    if isinstance(frame, frames.Snapshot):
                        held = cursors[frame.topic]
                        if frame.state is not None:  # a first snapshot, or a reset: the state is the truth
                            resets[frame.topic] += held is not None
                            seen[frame.topic] = origins_in(frame.state)
                        else:  # a resume: the events after our cursor follow
                            assert held is None or frame.cursor == held or held.epoch == frames.EMPTY_EPOCH
                        cursors[frame.topic] = frame.cursor
                    elif isinstance(frame, frames.Event):
                        held = cursors[frame.topic]
                        assert held is not None
                        assert frame.cursor == frames.Cursor(held.epoch, held.offset + 1), (
                            held,
                            frame.cursor,
                        )
                        assert frame.origin is not None
                        seen[frame.topic].append(frame.origin)
                        cursors[frame.topic] = frame.cursor
                    elif isinstance(frame, frames.Error):
                        assert frame.code == ErrorCode.UNAVAILABLE, frame
                        await asyncio.sleep((frame.retry_after_ms or 100) / 1000)
                        topic = ids[frame.ref or 0]
                        await client.send(frames.Subscribe(id=frame.ref, topic=topic, cursor=cursors[topic]))
            except ConnectionClosed:
                await asyncio.sleep(0.05)
            finally:
                await client.close()

    async def fault() -> None:
        await fault_now.wait()
        server = cluster.primaries[victim]
        assert server.pid is not None
        if run.fault == "sigstop":
            os.kill(server.pid, signal.SIGSTOP)
            await asyncio.sleep(FREEZE_S)
            os.kill(server.pid, signal.SIGCONT)  # it wakes up a primary, and learns it was demoted
        else:
            await asyncio.to_thread(server.kill)
            await asyncio.sleep(FREEZE_S)
            # Back as a replica of the promoted one: until then that shard has no replica, and durability
            # replicas answers its ops unavailable (no ack without a second copy).
            await asyncio.to_thread(server.restart)
        faulted.set()

    async def writers() -> None:
        writing.set()
        try:
            await asyncio.gather(*(write(ledger) for ledger in ledgers))
        finally:
            writing.clear()

    async with asyncio.timeout(100):
        await asyncio.gather(writers(), watch(), fault())

    # The truth: each cart as a hub serves it now.
    checker = await open_until_welcomed(next_hub, Ledger("checker", "none", 0))
    lost = doubled = 0
    for sub_id, (topic, ledger) in enumerate(topics.items(), start=1):
        await checker.send(frames.Subscribe(id=sub_id, topic=topic))
        snap = await checker.recv_type(frames.Snapshot, 20)
        assert snap.state is not None
        applied = [origin.seq for origin in origins_in(snap.state)]
        lost += len(set(ledger.acks) - set(applied))
        doubled += len(applied) - len(set(applied))
        assert set(ledger.acks) == set(range(1, ledger.n + 1))  # every op acked in the end
        assert sorted(applied) == list(range(1, ledger.n + 1)), f"{topic}: lost or doubled"
        assert seen[topic] == origins_in(snap.state), f"{topic}: the subscriber's view diverged silently"
    await checker.close()
    figures = {
        "writers": len(ledgers),
        "ops": sum(ledger.n for ledger in ledgers),
        "acked": sum(len(ledger.acks) for ledger in ledgers),
        "unknown": sum(len(ledger.unknown) for ledger in ledgers),
        "unavailable": sum(ledger.errors[ErrorCode.UNAVAILABLE] for ledger in ledgers),
        "lost": lost,
        "doubled": doubled,
        "resets": sum(resets.values()),
    }
    print(f"failover: {run.fault} durability=replicas {figures}")
    assert (lost, doubled) == (0, 0)
    assert figures["unavailable"] > 0, "no op met the fault: the run proved nothing"
    return figures


async def test_a_frozen_primary_loses_no_acked_op_and_no_subscriber_diverges(
    cluster: Cluster, hub_factory: HubFactory
) -> None:
    await failover_under_load(cluster, hub_factory, Run("sigstop", writers=9, ops=40))


@pytest.mark.slow
async def test_a_killed_primary_loses_no_acked_op_and_no_subscriber_diverges(
    cluster: Cluster, hub_factory: HubFactory
) -> None:
    await failover_under_load(cluster, hub_factory, Run("kill", writers=18, ops=40))
