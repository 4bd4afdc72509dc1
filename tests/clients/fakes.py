"""A sans-I/O hub and device for engine tests: no sockets, no event loop, a fake clock.

:class:`FakeHub` follows PROTOCOL.md with the reference cart rules (:mod:`protocol.cart`, folding included):
per-client watermarks and dedup (replays answered with the original outcome, ``dup``), ``seq_gap``,
snapshots and gap-free resume from a cursor, events fanned out to every session that holds the topic. Faults
are switches: answer an op with ``rate_limited``/``unavailable``, deliver every event twice, trim history.

:class:`Device` drives a :class:`~clients.engine.SyncEngine` exactly as the asyncio client does — commit
before send, pages loaded on :class:`~clients.engine.LoadOps`, settlements and topic records persisted in
batches — against :class:`MemoryStore`, an in-memory mirror of the SQLite store's rules, so that a
"crash" loses precisely what was not yet persisted.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from clients.engine import LoadOps, Notice, OpSettled, SyncEngine, TopicChanged, TopicRecord, op_topic
from protocol import cart as rules
from protocol import frames
from protocol.errors import ErrorCode, OpRejected
from protocol.ops import parse_args

T0 = 1_767_225_600_000


# --- the hub ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Fault:
    """Answer the op ``seq`` of ``client_id`` with ``err code`` (once) instead of settling it."""

    client_id: str
    seq: int
    code: str
    retry_after_ms: int | None = None


class FakeSession:
    """One connection on the fake hub: what it sends to its client accumulates in ``out``."""

    def __init__(self, hub: FakeHub, client_id: str, sid: int) -> None:
        self.hub = hub
        self.client_id = client_id
        self.sid = sid
        self.subs: dict[str, int] = {}
        self.out: list[frames.Frame] = []
        self.open = True
        self.duplicate_events = False

    def take(self) -> list[frames.Frame]:
        out, self.out = self.out, []
        return out

    def send(self, frame: frames.Frame, now: int) -> None:
        assert self.open
        self.hub.handle(self, frame, now)

    def close(self) -> None:
        self.open = False
        self.hub.sessions.pop(self.sid, None)


class FakeHub:
    def __init__(self, *, max_batch: int = 256, max_frame: int = 65_536, history: int = 1000) -> None:
        self.max_batch = max_batch
        self.max_frame = max_frame
        self.history = history
        self.carts: dict[str, rules.Cart] = {}
        self.epochs: dict[str, str] = {}
        self.logs: dict[str, list[frames.Event]] = {}
        self.offsets: dict[str, int] = {}
        self.last: dict[str, int] = {}
        self.outcomes: dict[tuple[str, int], frames.Ack] = {}
        self.applied: list[tuple[str, int]] = []
        self.sessions: dict[int, FakeSession] = {}
        self.faults: list[Fault] = []
        self._ids = itertools.count(1)
        self._epochs = itertools.count(1)

    # -- sessions -------------------------------------------------------------------------------------

    def connect(self, client_id: str, now: int) -> tuple[FakeSession, frames.Welcome]:
        session = FakeSession(self, client_id, next(self._ids))
        self.sessions[session.sid] = session
        welcome = frames.Welcome(
            version=1,
            session=f"s{session.sid}",
            hub_time=now,
            echo_ts=now,
            last_seq=self.last.get(client_id, 0),
            heartbeat_ms=15_000,
            max_frame=self.max_frame,
            max_batch=self.max_batch,
        )
        return session, welcome

    def handle(self, session: FakeSession, frame: frames.Frame, now: int) -> None:
        if isinstance(frame, frames.Subscribe):
            self._subscribe(session, frame)
        elif isinstance(frame, frames.Unsubscribe):
            session.subs.pop(frame.topic, None)
        elif isinstance(frame, frames.Op):
            self._ops(session, [frame], now)
        elif isinstance(frame, frames.OpBatch):
            assert len(frame.ops) <= self.max_batch, "the client broke max_batch"
            self._ops(session, frame.ops, now)

    # -- topics ---------------------------------------------------------------------------------------

    def _epoch(self, topic: str) -> str:
        if topic not in self.epochs:
            self.epochs[topic] = f"e{next(self._epochs)}"
        return self.epochs[topic]

    def cursor(self, topic: str) -> frames.Cursor:
        return frames.Cursor(self._epoch(topic), self.offsets.get(topic, 0))

    def lose_history(self, topic: str) -> None:
        """The topic's history is gone (a new epoch): cursors held by clients now get a reset."""
        self.epochs[topic] = f"e{next(self._epochs)}"
        self.logs[topic] = []

    def _subscribe(self, session: FakeSession, sub: frames.Subscribe) -> None:
        topic = sub.topic
        session.subs[topic] = sub.id
        current = self.cursor(topic)
        log = self.logs.get(topic, [])
        cursor = sub.cursor
        first_kept = current.offset - len(log) + 1
        if (
            cursor is not None
            and cursor.epoch == current.epoch
            and first_kept <= cursor.offset + 1
            and cursor.offset <= current.offset
        ):
            session.out.append(frames.Snapshot(id=sub.id, topic=topic, cursor=cursor))
            session.out.extend(e for e in log if e.cursor.offset > cursor.offset)
            return
        cart = self.carts.get(topic.partition(":")[2], rules.empty_cart())
        session.out.append(
            frames.Snapshot(
                id=sub.id, topic=topic, cursor=current, state=rules.snapshot(cart), reset=cursor is not None
            )
        )

    # -- ops ------------------------------------------------------------------------------------------

    def _ops(self, session: FakeSession, ops: list[frames.Op], now: int) -> None:
        for op in ops:
            if not self._op(session, op, now):
                return

    def _op(self, session: FakeSession, op: frames.Op, now: int) -> bool:
        client = session.client_id
        for fault in self.faults:
            if fault.client_id == client and fault.seq == op.seq:
                self.faults.remove(fault)
                session.out.append(
                    frames.Error(
                        code=fault.code,
                        ref=op.seq,
                        retry_after_ms=fault.retry_after_ms,
                        about=frames.ABOUT_OP,
                    )
                )
                return False
        last = self.last.get(client, 0)
        if op.seq > last + 1:
            session.out.append(
                frames.Error(
                    code=ErrorCode.SEQ_GAP, ref=op.seq, message=f"after {last}", about=frames.ABOUT_OP
                )
            )
            return False
        if op.seq <= last:
            first = self.outcomes[client, op.seq]
            session.out.append(_dup(first))
            return True
        ack = self._apply(client, op, now)
        self.last[client] = op.seq
        self.outcomes[client, op.seq] = ack
        session.out.append(ack)
        return True

    def _apply(self, client: str, op: frames.Op, now: int) -> frames.Ack:
        try:
            args = parse_args(op.kind, op.args)
        except OpRejected as exc:
            return frames.Ack(seq=op.seq, ok=False, code=exc.code, message=exc.message)
        member = args.member
        cart = self.carts.get(member, rules.empty_cart())
        cart_op = rules.parse_op(op.kind, op.args, client_id=client, seq=op.seq, hlc=op.hlc, ctx=op.ctx)
        outcome = rules.apply(cart, cart_op)
        if outcome.rejected is not None:
            return frames.Ack(seq=op.seq, ok=False, code=outcome.rejected)
        self.carts[member] = outcome.cart
        self.applied.append((client, op.seq))
        topic = f"cart:{member}"
        offset = self.offsets.get(topic, 0) + 1
        self.offsets[topic] = offset
        event = frames.Event(
            topic=topic,
            cursor=frames.Cursor(self._epoch(topic), offset),
            kind=op.kind,
            data=outcome.event_data(),
            at=now,
            origin=frames.Origin(client, op.seq),
            conflict=dict(outcome.conflict) if outcome.conflict is not None else None,
        )
        log = self.logs.setdefault(topic, [])
        log.append(event)
        del log[: max(0, len(log) - self.history)]
        for other in list(self.sessions.values()):
            if topic in other.subs:
                other.out.append(event)
                if other.duplicate_events:
                    other.out.append(event)
        return frames.Ack(seq=op.seq, ok=True, result=outcome.result)

    def lines(self, member: str) -> dict[str, rules.Line]:
        """The hub's cart in wire form (what a snapshot carries)."""
        state: dict[str, rules.Line] = rules.snapshot(self.carts.get(member, rules.empty_cart()))["lines"]
        return state


def _dup(ack: frames.Ack) -> frames.Ack:
    return frames.Ack(seq=ack.seq, ok=ack.ok, result=ack.result, code=ack.code, message=ack.message, dup=True)


# --- the device's store ------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Row:
    op: frames.Op
    topic: str
    acked: bool = False


class MemoryStore:
    """What the SQLite store keeps, with the same rules, in dicts (a crash keeps exactly this)."""

    def __init__(self) -> None:
        self.meta: dict[str, int] = {"next_seq": 1, "hlc": 0}
        self.outbox: dict[int, _Row] = {}
        self.topics: dict[str, TopicRecord] = {}
        self.rejections: dict[int, OpSettled] = {}

    def append(self, ops: list[frames.Op], next_seq: int, hlc: int) -> None:
        for op in ops:
            topic = op_topic(op.kind, op.args)
            self.outbox[op.seq] = _Row(op, topic)
            self.topics.setdefault(topic, TopicRecord(topic))  # an op's topic is subscribed for good
        self.meta.update(next_seq=next_seq, hlc=hlc)

    def load_pending(self, after: int, limit: int) -> list[frames.Op]:
        seqs = sorted(s for s, r in self.outbox.items() if s > after and not r.acked)
        return [self.outbox[s].op for s in seqs[:limit]]

    def overlay(self, topic: str, after: int) -> list[frames.Op]:
        return [r.op for s, r in sorted(self.outbox.items()) if r.topic == topic and s > after]

    def save(self, settled: list[OpSettled], topics: list[TopicRecord]) -> None:
        for s in settled:
            if s.keep:
                self.outbox[s.op.seq].acked = True
            else:
                self.outbox.pop(s.op.seq, None)
            if not s.ok:
                self.rejections.setdefault(s.op.seq, s)
        for record in topics:
            self.topics[record.topic] = record
            for seq in [s for s, r in self.outbox.items() if r.topic == record.topic]:
                row = self.outbox[seq]
                if row.acked and seq <= record.reflected:
                    del self.outbox[seq]

    def pending(self) -> list[int]:
        return sorted(s for s, r in self.outbox.items() if not r.acked)


# --- the device --------------------------------------------------------------------------------------------


class Device:
    """One client: an engine over a :class:`MemoryStore`, driven as :class:`~clients.SyncClient` drives it."""

    def __init__(self, client_id: str, store: MemoryStore | None = None, **engine: Any) -> None:
        self.client_id = client_id
        self.store = store if store is not None else MemoryStore()
        self.engine_options = engine
        pending = self.store.pending()
        self.engine = SyncEngine(
            client_id,
            next_seq=self.store.meta["next_seq"],
            hlc=self.store.meta["hlc"],
            pending=len(pending),
            oldest_pending_ms=self.store.outbox[pending[0]].op.ts if pending else None,
            **engine,
        )
        for record in self.store.topics.values():
            self.engine.load_topic(record, self.store.overlay(record.topic, record.reflected))
        self.session: FakeSession | None = None
        self.settled: list[OpSettled] = []  # to persist at the next flush
        self.outcomes: list[OpSettled] = []  # every settlement seen, for assertions
        self.notices: list[Any] = []
        self.changes: list[TopicChanged] = []
        self.sent: list[frames.Frame] = []

    # -- local ops ------------------------------------------------------------------------------------

    def op(self, kind: str, now: int = T0, **args: Any) -> frames.Op:
        op = self.engine.prepare(kind, args, now)
        self.store.append([op], self.engine.next_seq, self.engine.hlc)
        self.engine.commit([op])
        return op

    def subscribe(self, member: str) -> None:
        self.engine.subscribe(f"cart:{member}")

    def view(self, member: str) -> dict[str, rules.Line]:
        view = self.engine.view(f"cart:{member}")
        return view.lines() if view is not None else {}

    # -- connection -----------------------------------------------------------------------------------

    def connect(self, hub: FakeHub, now: int = T0) -> None:
        self.session, welcome = hub.connect(self.client_id, now)
        self.engine.connected(welcome, now, 0)

    def disconnect(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None
            self.engine.disconnected()
            self.flush()

    def restart(self) -> Device:
        """Crash and start again from what the store holds (anything not flushed is lost)."""
        if self.session is not None:
            self.session.close()
        return Device(self.client_id, self.store, **self.engine_options)

    def pump(self, now: int = T0, *, rounds: int = 10_000) -> None:
        """Exchange frames until neither side has anything more to say (or the engine is paused)."""
        for _ in range(rounds):
            moved = self.step(now)
            if not moved:
                return
        raise AssertionError("no quiescence")

    def step(self, now: int = T0) -> bool:
        moved = False
        self.handle_events()
        if self.session is not None and self.session.open:
            for frame in self.engine.frames_to_send(now):
                moved = True
                self.sent.append(frame)
                self.session.send(frame, now)
            moved = self.handle_events() or moved
            for frame in self.session.take():
                moved = True
                self.engine.receive(frame, now)
            moved = self.handle_events() or moved
        self.flush()
        return moved

    def handle_events(self) -> bool:
        moved = False
        for event in self.engine.events_received():
            if isinstance(event, LoadOps):
                moved = True
                self.engine.ops_loaded(self.store.load_pending(event.after_seq, event.limit), event.limit)
            elif isinstance(event, OpSettled):
                self.settled.append(event)
                self.outcomes.append(event)
            elif isinstance(event, Notice):
                self.notices.append(event.error)
            elif isinstance(event, TopicChanged):
                self.changes.append(event)
        return moved

    def flush(self) -> None:
        """Persist what the client persists after each batch of frames."""
        settled, self.settled = self.settled, []
        self.store.save(settled, self.engine.take_dirty_topics())
