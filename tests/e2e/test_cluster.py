"""Hub processes over a 3-primary Redis Cluster the test creates: the cart scenario, and fan-out failover.

Hubs run with ``SYNCD_REDIS_CLUSTER=1`` and the URL of one node; the store discovers the others (durability
``script``: these clusters have no replicas to wait for, tests/e2e/test_failover.py has). Members are
picked so that their hash slots live on different primaries, and the tests check where the keys landed, so
"it works on a cluster" cannot pass by all keys happening to sit on one node.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator

import pytest
import redis
from redis.cluster import RedisCluster as SyncRedisCluster

from protocol import frames
from protocol.errors import CloseCode
from syncd.embedded import EmbeddedRedis
from tests.conftest import ClusterFactory
from tests.e2e.conftest import HubFactory
from tests.e2e.harness import WireClient
from tests.e2e.test_cart_sync import fold_events

pytestmark = pytest.mark.e2e
ADD = "cart.add"


@pytest.fixture
def cluster(cluster_factory: ClusterFactory) -> Iterator[list[EmbeddedRedis]]:
    """A private 3-primary cluster. ``cluster-require-full-coverage no``: when a test kills one primary, the
    others keep serving their own slots (the default would refuse every command once the node is marked
    failed), which is what lets the failover test observe the fan-out moving to a surviving node."""
    nodes = cluster_factory(extra_args=["--cluster-require-full-coverage", "no"])
    yield nodes
    for node in nodes:
        node.stop()


def owners(nodes: list[EmbeddedRedis], keys: dict[str, str]) -> dict[str, int]:
    """``name -> index in nodes`` of the primary that owns each key's slot, as the cluster itself says."""
    client = SyncRedisCluster(host=nodes[0].host, port=nodes[0].port)
    try:
        ports = [node.port for node in nodes]
        return {name: ports.index(int(client.get_node_from_key(key).port)) for name, key in keys.items()}
    finally:
        client.close()


def one_per_node(nodes: list[EmbeddedRedis], template: str, exclude: Collection[int] = ()) -> list[str]:
    """Names ``template.format(i)``, one whose ``{m:<name>}`` slot lands on each node not in ``exclude``."""
    candidates = [template.format(i) for i in range(200)]
    where = owners(nodes, {name: f"{{m:{name}}}" for name in candidates})
    chosen: dict[int, str] = {}
    for name in candidates:
        chosen.setdefault(where[name], name)
    wanted = [i for i in range(len(nodes)) if i not in exclude]
    return [chosen[i] for i in wanted]


async def subscribe(client: WireClient, sub_id: int, topic: str, cursor: frames.Cursor | None = None) -> None:
    await client.send(frames.Subscribe(id=sub_id, topic=topic, cursor=cursor))


class Reader:
    """One connection's view of its topics: the snapshot of each, then every event, checked gap-free.

    A hub that finds a hole in its live stream resynchronises the subscription by itself: a further ``snap``
    without state at the client's own position, then the missed events (PROTOCOL.md §8.3). That is allowed
    (and counted in ``resyncs``), as is the move of a topic never written (cursor ``["-", 0]``) to offset 0
    of its first history; any other snapshot after the first is a failure.
    """

    def __init__(self, client: WireClient) -> None:
        self.client = client
        self.snapshots: dict[str, frames.Snapshot] = {}
        self.events: dict[str, list[frames.Event]] = {}
        self.resyncs = 0

    def cursor(self, topic: str) -> frames.Cursor:
        seen = self.events.get(topic)
        return seen[-1].cursor if seen else self.snapshots[topic].cursor

    def last(self, topic: str) -> int:
        seen = self.events.get(topic)
        return seen[-1].cursor.offset if seen else self.snapshots[topic].cursor.offset

    async def until(self, want: dict[str, int]) -> None:
        """Read until every topic in ``want`` has its snapshot and its events up to offset ``want[topic]``."""
        while any(t not in self.snapshots or self.last(t) < offset for t, offset in want.items()):
            frame = await self.client.recv()
            if isinstance(frame, frames.Snapshot) and frame.topic in self.snapshots:
                assert (frame.state, frame.reset) == (None, False), frame
                held = self.cursor(frame.topic)
                if held == frames.Cursor(frames.EMPTY_EPOCH, 0) and frame.cursor is not None:
                    assert frame.cursor.offset == 0, frame  # the empty cart, named in its first history
                    self.snapshots[frame.topic] = frame
                else:
                    assert frame.cursor == held, frame
                self.resyncs += 1
            elif isinstance(frame, frames.Snapshot):
                self.snapshots[frame.topic] = frame
            elif isinstance(frame, frames.Event):
                assert frame.topic in self.snapshots, "an event before its topic's snapshot"
                assert frame.cursor.offset == self.last(frame.topic) + 1, "a gap or a duplicate"
                self.events.setdefault(frame.topic, []).append(frame)
            else:
                assert not isinstance(frame, frames.Error), frame


async def write(writer: WireClient, ops: list[tuple[str, str]]) -> list[frames.Ack]:
    """``cart.add`` of one unit per ``(member, sku)``, pipelined; their acks, in order."""
    for member, sku in ops:
        await writer.op(ADD, {"member": member, "sku": sku, "qty": 1})
    acks = [await writer.recv_type(frames.Ack) for _ in ops]
    assert [a.seq for a in acks] == list(range(writer.seq - len(ops) + 1, writer.seq + 1))
    assert all(a.ok and not a.dup for a in acks), acks
    return acks


async def test_cart_scenario_through_two_hubs_on_a_three_primary_cluster(
    cluster: list[EmbeddedRedis], hub_factory: HubFactory
) -> None:
    hub_a = hub_factory(cluster[0].url, SYNCD_REDIS_CLUSTER="1", SYNCD_DURABILITY="script")
    hub_b = hub_factory(cluster[1].url, SYNCD_REDIS_CLUSTER="1", SYNCD_DURABILITY="script")
    health = hub_a.healthz()
    assert health["status"] == "ok", health
    assert (health["redis"]["mode"], health["redis"]["nodes"]) == ("cluster", 3)
    assert health["redis"]["persistence"]["aof"] is True

    members = one_per_node(cluster, "shopper{}")  # members[i] lives on cluster[i]
    topics = [f"cart:{m}" for m in members]

    # Subscribers on hub B, writes through hub A, ten rounds over the three members (three nodes).
    watcher = await WireClient.open(hub_b.url, "watcher")
    for i, topic in enumerate(topics):
        await subscribe(watcher, i + 1, topic)
    watching = Reader(watcher)
    await watching.until(dict.fromkeys(topics, 0))  # every snapshot read before the first write
    rounds = [(m, f"S{r % 3}") for r in range(10) for m in members]
    writer = await WireClient.open(hub_a.url, "pos-1")
    acks = await write(writer, rounds)
    await watching.until(dict.fromkeys(topics, 10))
    for member, topic in zip(members, topics, strict=True):
        assert watching.snapshots[topic].cursor.offset == 0
        seqs = [a.seq for a, (m, _) in zip(acks, rounds, strict=True) if m == member]
        assert [e.origin for e in watching.events[topic]] == [frames.Origin("pos-1", s) for s in seqs]

    # Each member's keys sit on the node that owns its slot, and only there: three members, three nodes.
    for index, node in enumerate(cluster):
        direct = redis.Redis(host=node.host, port=node.port)
        try:
            tags = {key.split(b"}", 1)[0] + b"}" for key in direct.scan_iter(match="{m:*", count=1000)}
        finally:
            direct.close()
        assert tags == {f"{{m:{members[index]}}}".encode()}

    # A device that saw offset 10 everywhere goes away; five more rounds; it resumes on the *other* hub.
    late = await WireClient.open(hub_b.url, "late")
    for i, topic in enumerate(topics):
        await subscribe(late, i + 1, topic)
    seen = Reader(late)
    await seen.until(dict.fromkeys(topics, 10))
    await late.close()
    more = [(m, f"S{r % 3}") for r in range(5) for m in members]
    more_acks = await write(writer, more)
    back = Reader(await WireClient.open(hub_a.url, "late"))
    for i, topic in enumerate(topics):
        await subscribe(back.client, i + 1, topic, seen.snapshots[topic].cursor)
    await back.until(dict.fromkeys(topics, 15))
    for member, topic in zip(members, topics, strict=True):
        resumed = back.snapshots[topic]
        assert (resumed.reset, resumed.state, resumed.cursor) == (False, None, seen.snapshots[topic].cursor)
        seqs = [a.seq for a, (m, _) in zip(more_acks, more, strict=True) if m == member]
        assert [e.origin for e in back.events[topic]] == [frames.Origin("pos-1", s) for s in seqs]

    # The writer's connection "drops" before its last acks: it replays two ops through hub B. Both are
    # answered from dedup with their original results, and nothing new is appended anywhere.
    await writer.close()
    again = await WireClient.open(hub_b.url, "pos-1")
    assert again.welcome is not None and again.welcome.last_seq == 45
    for ack, (member, sku) in ((acks[1], rounds[1]), (more_acks[-1], more[-1])):
        await again.send(frames.Op(seq=ack.seq, kind=ADD, args={"member": member, "sku": sku, "qty": 1}))
        replayed = await again.recv_type(frames.Ack)
        assert (replayed.seq, replayed.ok, replayed.dup, replayed.result) == (ack.seq, True, True, ack.result)
    await write(again, [(members[0], "S0")])  # seq 46: the next event the watcher sees is this one
    final_offsets = {**dict.fromkeys(topics, 15), topics[0]: 16}
    await watching.until(final_offsets)
    assert watching.events[topics[0]][-1].origin == frames.Origin("pos-1", 46)

    # What a live device assembled from events is what a fresh snapshot (through hub A) holds.
    check = Reader(await WireClient.open(hub_a.url, "check"))
    for i, topic in enumerate(topics):
        await subscribe(check.client, i + 1, topic)
    await check.until(final_offsets)
    for topic in topics:
        final = check.snapshots[topic]
        assert final.state is not None and final.cursor.offset == final_offsets[topic]
        assert fold_events({"lines": {}}, watching.events[topic]) == final.state
        assert sum(line["qty"] for line in final.state["lines"].values()) == final.cursor.offset


async def test_fan_out_moves_to_a_surviving_node_when_its_node_dies(
    cluster: list[EmbeddedRedis], hub_factory: HubFactory
) -> None:
    hub = hub_factory(cluster[0].url, SYNCD_REDIS_CLUSTER="1", SYNCD_DURABILITY="script")

    def fanout_node() -> int | None:
        """The node holding the hub's pub/sub connection (it always subscribes ``syncd:fanout``)."""
        for index, node in enumerate(cluster):
            if not node.running:
                continue
            direct = redis.Redis(host=node.host, port=node.port)
            try:
                if dict(direct.pubsub_numsub("syncd:fanout")).get(b"syncd:fanout"):
                    return index
            finally:
                direct.close()
        return None

    doomed = fanout_node()
    assert doomed is not None
    # A member and two clients whose slots live on surviving nodes (a client's watermark lives in its own
    # slot): what they do keeps working without `doomed`.
    member = one_per_node(cluster, "buyer{}", exclude={doomed})[0]
    reader_id, writer_id = [
        cid
        for cid, index in owners(cluster, {f"dev{i}": f"{{c:dev{i}}}" for i in range(200)}).items()
        if index != doomed
    ][:2]
    topic = f"cart:{member}"

    reader = Reader(await WireClient.open(hub.url, reader_id))
    await subscribe(reader.client, 1, topic)
    writer = await WireClient.open(hub.url, writer_id)
    await write(writer, [(member, "A")])
    await reader.until({topic: 1})

    cluster[doomed].kill()
    # The hub cannot know what it missed while its pub/sub node died: the subscriber is told to resume.
    assert await reader.client.closed() == CloseCode.BACKEND_UNAVAILABLE
    back = Reader(await WireClient.open(hub.url, reader_id))
    # The snapshot (here: the resume) is sent only once the fan-out is subscribed again, on a live node.
    await subscribe(back.client, 1, topic, reader.events[topic][-1].cursor)
    await back.until({topic: 1})
    await write(writer, [(member, "B"), (member, "A")])
    await back.until({topic: 3})
    assert back.snapshots[topic].reset is False
    assert [e.origin for e in back.events[topic]] == [frames.Origin(writer_id, s) for s in (2, 3)]
    assert fanout_node() not in (None, doomed)
