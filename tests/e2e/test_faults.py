"""Faults under load, on the wire: real hub processes, real Redis servers, raw protocol frames.

- a hub process is SIGKILLed while 200 clients write through it, and they move to another hub;
- Redis is SIGKILLed under load and restarted on the same port and data, while the hub keeps running;
- a subscriber stops reading and is cut off with 4001 while a normal one gets every event;
- a client over its op rate is told when to retry, and the retry works.

The clients here are deliberately minimal: they keep every op until it is acked and resend it with the same
seq, which is all the SDK does for exactly-once. Every test ends with the same checks, made against what the
hub serves and what Redis holds: each topic's stream has offsets 1..n with origins unique per
``(client_id, seq)``; every acked op is in it exactly once; an op whose outcome was unknown (sent, then the
connection or Redis died) is in it at most once; each cart's total quantity equals the number of distinct ops
applied to it (every op adds one unit). docs/traps.md §2: an op whose outcome is unknown is neither ok nor
failed until its replay is answered.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import socket
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
import redis.asyncio
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from protocol import codec, frames
from protocol.codec import CLIENT_LIMITS, FrameDecoder
from protocol.errors import CloseCode, ErrorCode
from syncd.store.redis_store import LOG_MAX_BYTES
from tests.conftest import RedisServerFactory
from tests.e2e.conftest import HubFactory
from tests.e2e.harness import WireClient, token

pytestmark = pytest.mark.e2e
ADD = "cart.add"
_event = msgspec.msgpack.Decoder(frames.Event)


def add(member: str, seq: int, sku: str | None = None, **args: Any) -> frames.Op:
    """The ``seq``-th op of a client: one unit of a SKU (always qty 1, so a cart's total counts its ops)."""
    return frames.Op(
        seq=seq, kind=ADD, args={"member": member, "sku": sku or f"S{seq % 3}", "qty": 1, **args}
    )


def tcp_send_buffer_max() -> int:
    """The most the kernel may buffer on one socket for sending (``tcp_wmem``'s maximum)."""
    with open("/proc/sys/net/ipv4/tcp_wmem") as wmem:
        return int(wmem.read().split()[2])


async def read_until_closed(ws: Any, decoder: FrameDecoder) -> tuple[list[frames.Event], int | None]:
    """Every event still readable on ``ws``, then the close code the hub sent."""
    events: list[frames.Event] = []
    try:
        while True:
            frame = decoder.decode(await asyncio.wait_for(ws.recv(), 20))
            if isinstance(frame, frames.Event):
                events.append(frame)
    except ConnectionClosed as closed:
        return events, None if closed.rcvd is None else closed.rcvd.code


@dataclasses.dataclass
class Ledger:
    """What one writing client knows about its ops: the test's side of the exactly-once contract."""

    client_id: str
    member: str
    n: int
    acks: dict[int, frames.Ack] = dataclasses.field(default_factory=dict)
    sent: int = 0
    """Highest seq ever sent."""
    unknown: set[int] = dataclasses.field(default_factory=set)
    """Sent, and then the connection (or Redis) failed before the op was answered."""
    welcomes: list[int] = dataclasses.field(default_factory=list)
    """``welcome.last_seq`` at every (re)connection."""
    errors: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    closes: collections.Counter[int] = dataclasses.field(default_factory=collections.Counter)

    @property
    def acked(self) -> int:
        """Highest seq acked; acks come in seq order, so every seq up to it is acked."""
        return max(self.acks, default=0)

    def op(self, seq: int) -> frames.Op:
        return add(self.member, seq)

    def record(self, ack: frames.Ack) -> None:
        assert ack.seq == self.acked + 1, f"{self.client_id}: ack {ack.seq} after {self.acked}"
        assert ack.ok, ack
        self.acks[ack.seq] = ack

    def welcomed(self, client: WireClient) -> None:
        """A (re)connection: the hub's watermark covers every acked op and no op never sent."""
        assert client.welcome is not None
        last = client.welcome.last_seq
        assert self.acked <= last <= self.sent, (self.client_id, self.acked, last, self.sent)
        self.welcomes.append(last)

    def lost(self, code: int | None) -> None:
        """The connection died: whatever was sent and not answered has an unknown outcome."""
        self.unknown |= set(range(self.acked + 1, self.sent + 1))
        if code is not None:
            self.closes[code] += 1


async def reply(client: WireClient) -> frames.Ack | frames.Error:
    """The next ack or error (a writer subscribes to nothing; pings and pongs are skipped)."""
    while True:
        frame = await client.recv(20)
        if isinstance(frame, frames.Ack | frames.Error):
            return frame


async def open_until_welcomed(
    url: str | Callable[[], str], ledger: Ledger, attempts: int = 200
) -> WireClient:
    """Connect and say hello until the hub welcomes us (it refuses with 4003 while Redis is down).

    ``url`` may be a function: the hub to try at each attempt (a client whose hub died tries another).
    """
    for _ in range(attempts):
        try:
            client = await WireClient.open(url() if callable(url) else url, ledger.client_id)
        except (ConnectionClosed, OSError) as exc:
            ledger.errors[f"connect: {type(exc).__name__}"] += 1
        else:
            if client.welcome is not None:
                ledger.welcomed(client)
                return client
            ledger.errors["hello refused"] += 1
            await client.close()
        await asyncio.sleep(0.05)
    raise AssertionError(f"{ledger.client_id} was never welcomed at {url}")


async def stream(redis_url: str, member: str) -> list[frames.Event]:
    """The cart topic's change stream, as Redis holds it (the record; MAXLEN is far above these tests)."""
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        entries = await client.xrange(f"{{m:{member}}}:log:cart")
    finally:
        await client.aclose()
    return [_event.decode(fields[b"ev"]) for _, fields in entries]


async def snapshot(client: WireClient, topic: str, sub_id: int) -> frames.Snapshot:
    await client.send(frames.Subscribe(id=sub_id, topic=topic))
    snap = await client.recv_type(frames.Snapshot, 20)
    await client.send(frames.Unsubscribe(topic=topic))
    return snap


def origins_in(state: dict[str, Any]) -> list[frames.Origin]:
    """The ops a cart's state holds, by seq: every line's dots are ``[client_id, seq, …]``."""
    dots = [dot for line in state["lines"].values() for dot in line["dots"]]
    return [frames.Origin(client, seq) for client, seq, *_ in sorted(dots, key=lambda dot: dot[1])]


async def check_exactly_once(redis_url: str, hub_url: str, ledgers: list[Ledger]) -> None:
    """The invariants of the module docstring, for every ledger."""
    checker = await WireClient.open(hub_url, "checker")
    for i, ledger in enumerate(ledgers):
        # The stream holds the topic's current epoch (a restarted Redis starts a new one, docs/traps.md §4c);
        # the cart's state holds every op ever applied, one dot each.
        events = await stream(redis_url, ledger.member)
        assert [e.cursor.offset for e in events] == list(range(1, len(events) + 1))
        snap = await snapshot(checker, f"cart:{ledger.member}", i + 1)
        assert snap.state is not None and snap.cursor.offset == len(events)
        origins = origins_in(snap.state)
        assert all(o.client_id == ledger.client_id for o in origins)
        applied = [o.seq for o in origins]
        assert len(applied) == len(set(applied)), f"{ledger.client_id}: an op applied twice"
        assert [e.origin.seq for e in events if e.origin] == applied[len(applied) - len(events) :]
        # Every op was eventually acked (the clients resend until they are), so all of them are applied once:
        # nothing acked is lost, nothing unknown doubled, and no seq was skipped.
        assert set(ledger.acks) == set(range(1, ledger.n + 1))
        assert applied == list(range(1, ledger.n + 1))
        assert ledger.unknown <= set(applied)
        assert sum(line["qty"] for line in snap.state["lines"].values()) == len(set(applied))
    await checker.close()


# --- a: a hub killed under 200 writers -------------------------------------------------------------------


async def test_kill_9_of_a_hub_under_200_writers_loses_and_doubles_nothing(
    redis_server_factory: RedisServerFactory, hub_factory: HubFactory
) -> None:
    server = redis_server_factory()
    hub_a, hub_b = hub_factory(server.url), hub_factory(server.url)
    writers, ops, window = 200, 20, 4
    ledgers = [Ledger(f"k{i}", f"km{i}", ops) for i in range(writers)]
    acked = 0
    kill_now = asyncio.Event()
    moved = 0

    def current() -> str:
        """Hub A until it is killed, then hub B (a late client's first connection may race the kill)."""
        return hub_b.url if kill_now.is_set() else hub_a.url

    async def write(ledger: Ledger) -> None:
        nonlocal acked, moved
        client = await open_until_welcomed(current, ledger)
        on_a = client.ws.remote_address[1] == hub_a.port
        next_seq = ledger.acked + 1
        while ledger.acked < ledger.n:
            try:
                while next_seq <= ledger.n and next_seq - ledger.acked <= window:  # up to 4 in flight
                    await client.send(ledger.op(next_seq))
                    ledger.sent = max(ledger.sent, next_seq)
                    next_seq += 1
                answer = await reply(client)
            except ConnectionClosed:
                assert on_a, "hub B dropped a client"
                ledger.lost(client.ws.close_code)
                moved += 1
                client, on_a = await open_until_welcomed(hub_b.url, ledger), False
                next_seq = ledger.acked + 1  # resend every op not acked, with its seq
                continue
            assert isinstance(answer, frames.Ack), answer
            ledger.record(answer)
            acked += 1
            if acked == writers * ops // 3:
                kill_now.set()
        await client.close()

    async def killer() -> None:
        await kill_now.wait()
        await asyncio.to_thread(hub_a.kill)

    async with asyncio.timeout(60):
        await asyncio.gather(killer(), *(write(ledger) for ledger in ledgers))

    assert moved > 0
    unknown = [(ledger, seq) for ledger in ledgers for seq in ledger.unknown]
    assert unknown, "no op was in flight at the crash: the test proved nothing about unknown outcomes"
    # An op in flight at the crash was applied before it (its replay is answered dup) or after (a fresh ack),
    # never both; either way it is in the stream exactly once (checked below). One that hub B's watermark
    # already covered (settled by hub A, ack lost in the crash) must be answered from dedup.
    for ledger, seq in unknown:
        if seq <= ledger.welcomes[-1]:
            assert ledger.acks[seq].dup, (ledger.client_id, seq)
    await check_exactly_once(server.url, hub_b.url, ledgers)


# --- b: Redis killed and restarted under load --------------------------------------------------------------


async def test_redis_kill_9_and_restart_under_load_the_hub_recovers_and_keeps_every_acked_op(
    redis_server_factory: RedisServerFactory, hub_factory: HubFactory
) -> None:
    server = redis_server_factory(appendfsync="always")
    hub = hub_factory(server.url)
    pid = hub.proc.pid if hub.proc else None
    writers, ops = 20, 40
    ledgers = [Ledger(f"r{i}", f"rm{i}", ops) for i in range(writers)]
    watched = ledgers[:5]
    acked = 0
    outage, first_error, done_writing = asyncio.Event(), asyncio.Event(), asyncio.Event()
    watcher_closes: collections.Counter[int] = collections.Counter()

    async def write(ledger: Ledger) -> None:
        nonlocal acked
        client: WireClient | None = None
        seq = 1
        while seq <= ledger.n:
            if client is None:
                client = await open_until_welcomed(hub.url, ledger)
            try:
                await client.send(ledger.op(seq))
                ledger.sent = max(ledger.sent, seq)
                answer = await reply(client)
            except ConnectionClosed:
                ledger.lost(client.ws.close_code)
                first_error.set()
                client = None
                await asyncio.sleep(0.05)
                continue
            if isinstance(answer, frames.Error):
                # Redis is down: the op's outcome is unknown; resend the same op after the delay given.
                assert (answer.code, answer.ref) == (ErrorCode.UNAVAILABLE, seq), answer
                assert answer.retry_after_ms is not None and answer.retry_after_ms > 0
                ledger.errors[answer.code] += 1
                ledger.unknown.add(seq)
                first_error.set()
                await asyncio.sleep(answer.retry_after_ms / 1000)
                continue
            ledger.record(answer)
            acked += 1
            if acked == writers * ops // 3:
                outage.set()
            seq += 1
        if client is not None:
            await client.close()

    # A subscriber of five of the carts follows every change across the outage, resuming from its cursors.
    seen: dict[str, list[frames.Origin]] = {f"cart:{ledger.member}": [] for ledger in watched}
    resets: collections.Counter[str] = collections.Counter()
    ids = dict(enumerate(seen, start=1))
    cursors: dict[str, frames.Cursor] = {}
    first = await WireClient.open(hub.url, "watcher")
    for sub_id, topic in ids.items():  # before any write: every event comes after these snapshots
        await first.send(frames.Subscribe(id=sub_id, topic=topic))
        cursors[topic] = (await first.recv_type(frames.Snapshot)).cursor
        assert cursors[topic].offset == 0

    async def watch() -> None:
        client: WireClient | None = first
        while any(len(events) < ops for events in seen.values()):
            if client is None:
                try:
                    client = await WireClient.open(hub.url, "watcher")
                except (ConnectionClosed, OSError):
                    client = None
                if client is None or client.welcome is None:
                    client = None
                    await asyncio.sleep(0.05)
                    continue
                for sub_id, topic in ids.items():
                    await client.send(frames.Subscribe(id=sub_id, topic=topic, cursor=cursors[topic]))
            try:
                while any(len(events) < ops for events in seen.values()):
                    frame = await client.recv(20)
                    if isinstance(frame, frames.Snapshot):  # a resume: the events after our cursor follow
                        held = cursors[frame.topic]
                        if held == frames.Cursor(frames.EMPTY_EPOCH, 0) and frame.cursor is not None:
                            # A cart never written, now written: the same empty state in its first history.
                            assert (frame.reset, frame.state, frame.cursor.offset) == (False, None, 0), frame
                            cursors[frame.topic] = frame.cursor
                        elif frame.reset:
                            # The restarted server is a new generation of the shard: the topic continues
                            # in a new epoch (docs/traps.md §4c), and its state holds every op so far.
                            assert frame.cursor.epoch != held.epoch and frame.state is not None, frame
                            resets[frame.topic] += 1
                            seen[frame.topic] = origins_in(frame.state)
                            cursors[frame.topic] = frame.cursor
                        else:
                            assert frame.cursor == held, frame
                    elif isinstance(frame, frames.Event):
                        held = cursors[frame.topic]
                        assert frame.cursor == frames.Cursor(held.epoch, held.offset + 1), (
                            "a gap or a duplicate"
                        )
                        assert frame.origin is not None
                        seen[frame.topic].append(frame.origin)
                        cursors[frame.topic] = frame.cursor
                    elif isinstance(frame, frames.Error):
                        assert frame.code == ErrorCode.UNAVAILABLE and frame.retry_after_ms
                        await asyncio.sleep(frame.retry_after_ms / 1000)
                        topic = ids[frame.ref or 0]
                        await client.send(frames.Subscribe(id=frame.ref, topic=topic, cursor=cursors[topic]))
            except ConnectionClosed:
                watcher_closes[client.ws.close_code or 0] += 1
                client = None
                await asyncio.sleep(0.05)
        if client is not None:
            await client.close()

    async def outage_and_restart() -> None:
        await outage.wait()
        await asyncio.to_thread(server.kill)
        await first_error.wait()  # a writer has seen the outage
        await asyncio.to_thread(server.restart)

    async with asyncio.timeout(60):
        await asyncio.gather(outage_and_restart(), watch(), *(write(ledger) for ledger in ledgers))
    done_writing.set()

    # The same hub process served before, during and after: it was never restarted.
    assert hub.proc is not None and hub.proc.poll() is None and hub.proc.pid == pid
    assert hub.healthz()["status"] == "ok"
    outage_seen = sum(sum(ledger.errors.values()) + sum(ledger.closes.values()) for ledger in ledgers)
    assert outage_seen > 0
    assert watcher_closes[CloseCode.BACKEND_UNAVAILABLE] >= 1  # the fan-out lost Redis: "resume from cursors"
    for ledger in watched:
        assert seen[f"cart:{ledger.member}"] == [
            frames.Origin(ledger.client_id, s) for s in range(1, ops + 1)
        ]
    assert resets and set(resets.values()) == {1}  # the restart, once per topic, and nothing else
    # The restarted server started with an empty script cache: the hub met NOSCRIPT and recovered from it.
    direct = redis.asyncio.Redis.from_url(server.url)
    try:
        errors = await direct.info("errorstats")
    finally:
        await direct.aclose()
    assert errors.get("errorstat_NOSCRIPT", {}).get("count", 0) > 0
    await check_exactly_once(server.url, hub.url, ledgers)


# --- c: a subscriber that stops reading ----------------------------------------------------------------


async def test_a_subscriber_that_stops_reading_is_cut_off_with_4001_while_others_get_every_event(
    redis_server_factory: RedisServerFactory, hub_factory: HubFactory
) -> None:
    server = redis_server_factory(appendonly=False)
    queue = 64 * 1024  # bytes: small, but roomy enough that the normal subscriber never comes near it
    hub = hub_factory(server.url, SYNCD_SEND_QUEUE_BYTES=str(queue))
    topic, member = "cart:busy", "busy"
    # Each event carries the line's attrs (over 4.3 KB), so the hub's socket buffers fill after a few hundred.
    attrs = {f"k{i:02d}": chr(ord("a") + i) * 256 for i in range(16)}
    events = 1300
    # More than the slow path can ever hold: the hub's kernel send buffer (at most tcp_wmem's maximum), plus
    # 512 KiB for our tiny receive buffer, the client library's read chunk and the transport's high-water
    # mark (64 KiB), plus the send queue. Past that, the hub must have dropped the slow client, whatever the
    # timing.
    assert events * 4300 > tcp_send_buffer_max() + 2**19 + queue

    # The slow one: a tiny receive buffer, at most one message queued in the library, and no recv() calls.
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
    start = decoder.decode(await slow.recv())
    assert isinstance(start, frames.Snapshot)

    normal = await WireClient.open(hub.url, "normal")
    await normal.send(frames.Subscribe(id=1, topic=topic))
    assert (await normal.recv_type(frames.Snapshot)).cursor == start.cursor
    writer = await WireClient.open(hub.url, "writer")

    async def write() -> None:
        for base in range(0, events, 10):  # ten in flight at a time, so the writer's own queue stays short
            for seq in range(base + 1, base + 11):
                # A set over all it wrote keeps one dot, so the line stays within its size bound (64 KiB).
                args = {"member": member, "sku": "A", "qty": seq, "attrs": attrs}
                await writer.send(frames.Op(seq=seq, kind="cart.set", args=args, ctx={"writer": seq - 1}))
            for _ in range(10):
                assert (await writer.recv_type(frames.Ack, 20)).ok

    async def follow() -> list[frames.Event]:
        got: list[frames.Event] = []
        while len(got) < events:
            got.append(await normal.recv_type(frames.Event, 20))
        return got

    async with asyncio.timeout(60):
        _, got = await asyncio.gather(write(), follow())
    assert [e.cursor.offset for e in got] == list(range(1, events + 1))
    assert min(len(codec.encode(e)) for e in got) >= 4300  # the premise of the volume computed above
    assert [e.origin for e in got] == [frames.Origin("writer", s) for s in range(1, events + 1)]

    # Every event has been handed to the slow session too (same process, same dispatch): it overflowed. Now
    # it reads again and finds what reached its socket — a gap-free prefix — then the close code.
    prefix, code = await read_until_closed(slow, decoder)
    assert code == CloseCode.SLOW_CONSUMER
    assert [e.cursor.offset for e in prefix] == list(range(1, len(prefix) + 1))
    assert len(prefix) < events

    # "Reconnect later": it resumes from the last event it got and receives exactly the rest — or, when the
    # rest outweighs the topic's history (1 MiB of events: more than a snapshot of the cart), a reset
    # snapshot of the final state. Either way nothing is lost.
    back = await WireClient.open(hub.url, "slow")
    cursor = prefix[-1].cursor if prefix else start.cursor
    assert cursor is not None
    await back.send(frames.Subscribe(id=1, topic=topic, cursor=cursor))
    resumed = await back.recv_type(frames.Snapshot)
    missed = sum(len(codec.encode(e)) for e in got[len(prefix) :])
    if missed > LOG_MAX_BYTES:
        assert resumed.reset and resumed.cursor == got[-1].cursor
        assert resumed.state is not None and resumed.state["lines"]["A"]["qty"] == events
    else:
        assert (resumed.reset, resumed.cursor) == (False, cursor)
        rest = [await back.recv_type(frames.Event) for _ in range(events - len(prefix))]
        assert [e.cursor.offset for e in prefix + rest] == list(range(1, events + 1))

    final = await snapshot(normal, topic, 2)
    assert final.state is not None and final.state["lines"]["A"]["qty"] == events


# --- d: rate limiting --------------------------------------------------------------------------------------


async def test_an_over_rate_client_is_told_when_to_retry_and_its_retry_is_applied_once(
    redis_server_factory: RedisServerFactory, hub_factory: HubFactory
) -> None:
    server = redis_server_factory(appendonly=False)
    hub = hub_factory(server.url, SYNCD_OP_RATE="20", SYNCD_OP_BURST="5")
    ledger = Ledger("eager", "em", 30)
    client = await WireClient.open(hub.url, ledger.client_id)

    # A burst of 20 ops at once: the bucket holds 5. The first op over the rate is refused with rate_limited
    # and a delay; the ops after it are refused too (rate_limited, or seq_gap once a predecessor was
    # refused) or left unanswered (the hub may coalesce waiting frames, PROTOCOL.md §7.5) — and none of
    # them is applied. A subscribe sent behind the burst is answered after everything before it: a barrier.
    for seq in range(1, 21):
        await client.send(ledger.op(seq))
    ledger.sent = 20
    await client.send(frames.Subscribe(id=99, topic=f"cart:{ledger.member}"))
    refused: dict[int, frames.Error] = {}
    while not isinstance(frame := await client.recv(), frames.Snapshot):
        if isinstance(frame, frames.Ack):
            assert not refused, f"op {frame.seq} applied after a refused op"
            ledger.record(frame)
            assert not frame.dup
        elif isinstance(frame, frames.Error):
            assert frame.ref is not None and frame.ref not in refused
            refused[frame.ref] = frame
    assert frame.id == 99 and frame.cursor.offset == ledger.acked  # nothing beyond the acks was applied
    await client.send(frames.Unsubscribe(topic=frame.topic))
    first = ledger.acked + 1
    assert ledger.acked >= 5 and min(refused) == first and max(refused) <= 20
    assert refused[first].code == ErrorCode.RATE_LIMITED
    assert refused[first].retry_after_ms is not None and refused[first].retry_after_ms > 0
    assert {e.code for e in refused.values()} <= {ErrorCode.RATE_LIMITED, ErrorCode.SEQ_GAP}

    # Now one op at a time, as fast as acks come: whenever the hub says "retry after t", resending the same
    # op after t succeeds. (The burst's delays are stale: ops after them that got a token spent it on a gap.)
    retried = 0
    seq, delay = ledger.acked + 1, 0
    while seq <= ledger.n:
        await asyncio.sleep(delay / 1000)
        await client.send(ledger.op(seq))
        answer = await reply(client)
        if isinstance(answer, frames.Error):
            assert answer.code == ErrorCode.RATE_LIMITED and answer.ref == seq, answer
            assert delay == 0, "the op was refused again after waiting the delay the hub asked for"
            assert answer.retry_after_ms
            delay = answer.retry_after_ms
            continue
        ledger.record(answer)
        assert not answer.dup  # a refused op had changed nothing
        retried += delay > 0
        delay, seq = 0, seq + 1
    assert retried > 0
    await check_exactly_once(server.url, hub.url, [ledger])
