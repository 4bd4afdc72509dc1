"""The service layer: what the hub does for a session, independent of how bytes reach it.

The websocket endpoint (:mod:`syncd.endpoint`) drives the sans-I/O ``ServerProtocol`` and hands each decoded
request to a :class:`Hub`: authenticate a ``hello``, subscribe a topic gap-free, apply an op exactly once. The
hub checks scope and rate, and calls the store (:class:`~syncd.store.redis_store.RedisStore`), which owns
Redis and its scripts. Hub processes hold no authoritative state: any number of them share one Redis (or Redis
Cluster), and :class:`~syncd.fanout.Fanout` brings changes applied anywhere to every session.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol

from protocol import codec, frames
from protocol.errors import BackendUnavailable, CloseCode, ErrorCode, OpRejected, ProtocolError
from protocol.ops import OpArgs
from protocol.registry import SERVED_KINDS
from protocol.snapshots import encode_snapshot
from protocol.topics import parse_topic
from syncd.admission import Admission
from syncd.auth import Principal, Role, TokenVerifier
from syncd.fanout import Fanout
from syncd.metrics import Metrics
from syncd.session import RateLimit, Session, Subscription
from syncd.settings import Settings
from syncd.store.redis_store import HISTORY_LIMIT, OpOutcome, RedisStore
from syncd.storefeed import Mark, StoreFeed
from syncd.tasks import stop
from syncd.telemetry import REPLAY_AGE_MS, Telemetry

log = logging.getLogger("syncd.hub")

RETRY_AFTER_UNAVAILABLE_MS = 1000
"""What an op refused because Redis is unreachable is told: retry the same op after this long."""
APPLY_CHUNK = 64
"""Ops given to the store at a time: about a millisecond of the loop's work (their scripts' calls built, their
replies read, their acks encoded) before the next await lets other connections in."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Hub:
    """One hub process's services, shared by all its sessions."""

    def __init__(
        self, settings: Settings, store: RedisStore, fanout: Fanout, verifier: TokenVerifier
    ) -> None:
        self.settings = settings
        self.store = store
        self.feed = StoreFeed(store)
        """Feeds the topics of the stores whose allotments ops change (:mod:`syncd.storefeed`)."""
        self.fanout = fanout
        self.verifier = verifier
        self.sessions: set[Session] = set()
        self.admission = Admission(settings.max_pending_per_address, settings.max_connections_per_client)
        self._tasks: set[asyncio.Task[None]] = set()
        self.ticker = Ticker()
        """Connections whose deadlines one shared task checks, instead of a timer task per connection."""
        self.metrics: Metrics | None = Metrics() if settings.metrics else None
        """Prometheus counters (``None`` with ``metrics = false``: the hot path then skips them)."""
        self.telemetry = Telemetry(
            settings.alert_window_s, channel=self.metrics.channel if self.metrics is not None else None
        )

    # -- handshake ------------------------------------------------------------------------------------

    def authenticate(self, hello: frames.Hello) -> Principal:
        """The hello's principal, or :class:`AuthError` with the close code to end the connection with."""
        return self.verifier.verify(hello.token, hello.client_id)

    def open_session(
        self,
        principal: Principal,
        last_seq: int,
        raw_send: Callable[[bytes], bool] | None = None,
        hello: frames.Hello | None = None,
    ) -> Session:
        session = Session(
            principal,
            max_queue_bytes=self.settings.send_queue_bytes,
            rate=RateLimit(rate=self.settings.op_rate, burst=self.settings.op_burst),
            on_gap=self._resync_later,
        )
        session.raw_send = raw_send
        session.known_last = last_seq
        self.sessions.add(session)
        agent = hello.agent if hello is not None else ""
        session.clock_offset_ms = now_ms() - hello.ts if hello is not None and hello.ts else 0
        again = self.telemetry.connected(principal, agent)
        self.telemetry.event("connect", principal, role=principal.role.value, agent=agent, last_seq=last_seq)
        if self.metrics is not None:
            self.metrics.opened(principal.channel, principal.role.value, again)
        return session

    def close_session(self, session: Session, code: int = CloseCode.GOING_AWAY) -> None:
        """Forget a session that ended with close ``code`` (the hub's, or the peer's when it closed first)."""
        if session in self.sessions:
            self.telemetry.disconnected(session.principal)
            self.telemetry.event("disconnect", session.principal, code=code)
            if self.metrics is not None:
                self.metrics.closed(code)
        self.sessions.discard(session)
        for topic in list(session.subscriptions):
            self.fanout.leave(topic, session)
        session.subscriptions.clear()

    def end_revoked(self, client_id: str) -> None:
        """Close (4504) the sessions of ``client_id`` whose token the verifier now refuses: an operator
        revoked the client (:mod:`syncd.revocation`)."""
        revocations = self.verifier.revocations
        if revocations is None:
            return
        for session in list(self.sessions):
            if session.principal.client_id == client_id and revocations.refuses(session.principal):
                session.close(CloseCode.REVOKED, "client revoked by an operator")

    @staticmethod
    def new_session_id() -> str:
        return uuid.uuid4().hex

    # -- subscriptions ------------------------------------------------------------------------------------

    async def subscribe(self, session: Session, request: frames.Subscribe) -> None:
        """Answer ``sub`` with a snapshot (or the missed events), then live events, with no gap between."""
        try:
            topic = parse_topic(request.topic)
        except ProtocolError as exc:
            return self._error(session, exc.code, exc.message, request.id)
        if not session.principal.may_read(topic):
            return self._error(
                session, ErrorCode.NOT_PERMITTED, f"{topic} is outside the token's scope", request.id
            )
        if topic.kind not in SERVED_KINDS:  # a kind the protocol defines, not served yet: not "unknown"
            return self._error(
                session, ErrorCode.UNSUPPORTED_TOPIC, f"{topic.kind} topics are not served yet", request.id
            )
        name = str(topic)
        if (
            name not in session.subscriptions
            and len(session.subscriptions) >= self.settings.max_subscriptions
        ):
            return self._error(
                session,
                ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                f"at most {self.settings.max_subscriptions} subscriptions per connection",
                request.id,
            )
        sub = session.subscriptions[name] = Subscription(name, request.id)
        try:
            await self.fanout.join(name, session)  # first: from now on, live events are buffered in `sub`
            await self._synchronise(session, sub, request.cursor)
        except ProtocolError as exc:  # e.g. a topic kind with no state yet
            self._drop(session, name)
            self._error(session, exc.code, exc.message, request.id)
        except BackendUnavailable as exc:
            self._drop(session, name)
            self._error(session, ErrorCode.UNAVAILABLE, str(exc), request.id, RETRY_AFTER_UNAVAILABLE_MS)

    def unsubscribe(self, session: Session, request: frames.Unsubscribe) -> None:
        self._drop(session, request.topic)

    def _drop(self, session: Session, topic: str) -> None:
        if session.subscriptions.pop(topic, None) is not None:
            self.fanout.leave(topic, session)

    async def _synchronise(self, session: Session, sub: Subscription, cursor: frames.Cursor | None) -> None:
        """Send what the client lacks — the events after its cursor, or a snapshot — then go live."""
        if cursor is not None:
            events = await self._history(sub.topic, cursor)
            if events is not None:
                if (
                    cursor.epoch == frames.EMPTY_EPOCH and events
                ):  # the history that began from the empty state
                    cursor = frames.Cursor(events[0].cursor.epoch, 0)
                session.send(codec.encode(frames.Snapshot(id=sub.request_id, topic=sub.topic, cursor=cursor)))
                last = cursor.offset
                for event in events:
                    await session.room()  # paced by the writer: a long replay must not overflow the queue
                    if session.close_code is not None:
                        return
                    session.send(codec.encode(event))
                    last = event.cursor.offset
                session.synchronised(sub, cursor.epoch, last)
                return
        at, state = await self.store.snapshot(sub.topic)
        snap = frames.Snapshot(
            id=sub.request_id, topic=sub.topic, cursor=at, state=state, reset=cursor is not None
        )
        for number, page in enumerate(encode_snapshot(snap)):  # pages when over the client's frame limit
            if number:
                await session.room()  # paced by the writer, like a replay
                if session.close_code is not None:
                    return
            session.send(page)
        session.synchronised(sub, at.epoch, at.offset)

    async def _history(self, topic: str, cursor: frames.Cursor) -> list[frames.Event] | None:
        """Every event after ``cursor``, or ``None`` when it cannot be honoured (a reset is due)."""
        events: list[frames.Event] = []
        while True:
            page = await self.store.events_after(topic, cursor)
            if page is None:
                return None
            events.extend(page)
            if not page or len(page) < HISTORY_LIMIT:
                return events
            cursor = page[-1].cursor

    def generation_changed(self, nodes: set[str]) -> None:
        """Shards with a new history (:mod:`syncd.generations`): resynchronise every subscription whose topic
        lives on one of ``nodes``; each gets a reset snapshot, or nothing if its cursor still holds."""
        for session in list(self.sessions):
            for sub in list(session.subscriptions.values()):
                node = self.store.node_of(sub.topic)
                if node is None or node in nodes:
                    session.resynchronise(sub)

    def _resync_later(self, session: Session, sub: Subscription) -> None:
        """A live event revealed a hole (or a new epoch): fill it from the stream, off the fan-out path."""
        self.spawn(self._resync(session, sub))

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background; it is cancelled when the hub closes."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resync(self, session: Session, sub: Subscription) -> None:
        try:
            await self._synchronise(session, sub, frames.Cursor(sub.epoch, sub.offset) if sub.epoch else None)
        except Exception as exc:  # the session cannot be trusted to be complete any more
            log.warning("resync of %s failed: %s", sub.topic, exc)
            session.close(CloseCode.BACKEND_UNAVAILABLE, "could not fill a gap; resume from your cursors")

    # -- ops ------------------------------------------------------------------------------------------

    async def apply(self, session: Session, ops: Sequence[frames.Op]) -> None:
        """Apply ops in order and queue their acks. Stops at the first op that is not settled (gap, rate,
        backend): the client resends from there, and the ops after it would only be refused as gaps.

        The store is called for :data:`APPLY_CHUNK` ops at a time, so the loop work done for one connection
        between two awaits (building scripts' calls, reading their replies, encoding acks) stays short
        whatever the batch: a flood of 1,024-op batches cannot hold the loop for tens of milliseconds
        (docs/traps.md §20).
        """
        principal = session.principal
        granted, retry = session.rate.take(now_ms(), len(ops))
        applied: list[OpOutcome] = []
        error: ProtocolError | BackendUnavailable | None = None
        marks: list[Mark] = []
        if granted:
            try:
                marks = await self.feed.mark(principal.client_id, ops[:granted])
            except BackendUnavailable as exc:  # not marked: not run either, the client sends them again
                self.refused(principal, None, ops[0].seq)
                return self._error(
                    session,
                    ErrorCode.UNAVAILABLE,
                    str(exc),
                    ops[0].seq,
                    RETRY_AFTER_UNAVAILABLE_MS,
                    frames.ABOUT_OP,
                )
        for start in range(0, granted, APPLY_CHUNK):
            chunk = ops[start : min(granted, start + APPLY_CHUNK)]
            started = time.perf_counter()
            batch = await self.store.apply_ops(
                principal.client_id, chunk, check=scope_check(principal), known_last=session.known_last
            )
            if self.metrics is not None:
                self.metrics.settled(principal.channel, chunk, batch.outcomes, time.perf_counter() - started)
            for outcome in batch.outcomes:
                session.send(codec.encode(outcome.ack()))
                if not outcome.ok and not outcome.dup:
                    self.telemetry.event("rejected", principal, seq=outcome.seq, code=outcome.code or "")
            applied.extend(batch.outcomes)
            if batch.outcomes:
                session.known_last = max(session.known_last or 0, batch.outcomes[-1].seq)
            if batch.error is not None:
                error = batch.error
                break
        if applied:
            self._log_replay(session, ops[: len(applied)], applied)
        if marks:
            self.spawn(self.feed.forward(principal.client_id, marks, [o.seq for o in applied]))
        if error is not None:
            session.known_last = None  # the watermark is not known any more: the next op checks it
            failed = ops[len(applied)].seq
            self.refused(principal, error.code if isinstance(error, ProtocolError) else None, failed)
            if isinstance(error, ProtocolError):
                return self._error(session, error.code, error.message, failed, about=frames.ABOUT_OP)
            return self._error(
                session,
                ErrorCode.UNAVAILABLE,
                str(error),
                failed,
                RETRY_AFTER_UNAVAILABLE_MS,
                frames.ABOUT_OP,
            )
        if retry is not None:
            self.refused(principal, ErrorCode.RATE_LIMITED, ops[granted].seq)
            self._error(
                session, ErrorCode.RATE_LIMITED, "op rate exceeded", ops[granted].seq, retry, frames.ABOUT_OP
            )

    def _log_replay(self, session: Session, ops: Sequence[frames.Op], outcomes: Sequence[OpOutcome]) -> None:
        """One line for a batch of ops made long before it arrived (a device catching up after being offline):
        ops are made in order, so the first is the oldest; its clock is the device's, hence the offset."""
        first = ops[0]
        if not first.ts:
            return
        age = now_ms() - (first.ts + session.clock_offset_ms)
        if age > REPLAY_AGE_MS:
            self.telemetry.event(
                "replay",
                session.principal,
                ops=len(outcomes),
                dup=sum(1 for o in outcomes if o.dup),
                rejected=sum(1 for o in outcomes if not o.ok and not o.dup),
                oldest_ms=age,
            )

    def refused(self, principal: Principal, code: str | None, seq: int) -> None:
        """An op not settled (rate, gap, Redis unavailable): the device sends it again later."""
        label = code or ErrorCode.UNAVAILABLE.value
        if self.metrics is not None:
            self.metrics.refused_op(principal.channel, label)
        self.telemetry.event("refused", principal, seq=seq, code=label)

    @staticmethod
    def _error(
        session: Session,
        code: ErrorCode,
        message: str,
        ref: int,
        retry_after_ms: int | None = None,
        about: str = frames.ABOUT_SUB,
    ) -> None:
        """An ``err`` answering a ``sub`` (``ref`` its id) or, with ``about=ABOUT_OP``, an op (its seq)."""
        session.send(
            codec.encode(
                frames.Error(
                    code=code, message=message[:1024], ref=ref, retry_after_ms=retry_after_ms, about=about
                )
            )
        )

    async def close(self) -> None:
        await self.ticker.close()
        for task in list(self._tasks):
            await stop(task)
        for session in list(self.sessions):
            session.close(CloseCode.GOING_AWAY, "hub shutting down")


class Ticking(Protocol):
    def tick(self, now: int) -> None: ...


class Ticker:
    """One task, started with the first connection, calling ``tick(now_ms)`` on each about once a second.

    Heartbeat and handshake deadlines are seconds apart and need no precision beyond that; one task for all
    connections saves a task (a few KiB) per idle connection.
    """

    INTERVAL_S = 0.5

    def __init__(self) -> None:
        self._members: set[Ticking] = set()
        self._task: asyncio.Task[None] | None = None

    def add(self, member: Ticking) -> None:
        self._members.add(member)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="syncd-ticker")

    def discard(self, member: Ticking) -> None:
        self._members.discard(member)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.INTERVAL_S)
            now = now_ms()
            for member in list(self._members):
                try:
                    member.tick(now)
                except Exception:  # one connection's fault must not stop the others' heartbeats
                    log.exception("tick failed")

    async def close(self) -> None:
        if self._task is not None:
            await stop(self._task)
            self._task = None


def scope_check(principal: Principal) -> Callable[[OpArgs], None]:
    """Ops act for a member: the token must hold it (a rejection, settled like any other); admin ops need an
    ``ops`` token, till-only ops a ``pos`` token, and an op's ``channel`` or ``store`` must be the token's
    own."""

    def check(args: OpArgs) -> None:
        if not principal.may_act_for(args.member):
            raise OpRejected(ErrorCode.NOT_PERMITTED, "member outside the token's scope")
        if principal.role is Role.OPS and not args.till_only:
            return
        if args.till_only and principal.role is not Role.POS:
            raise OpRejected(ErrorCode.NOT_PERMITTED, "only the store's own till may make this op")
        if args.admin:
            raise OpRejected(ErrorCode.NOT_PERMITTED, "an ops token is needed for this op")
        # An op acting through a channel or a store acts through the token's own (PROTOCOL.md §18).
        if getattr(args, "channel", principal.channel) != principal.channel:
            raise OpRejected(ErrorCode.NOT_PERMITTED, "channel is not the token's")
        if getattr(args, "store", principal.store) != principal.store:
            raise OpRejected(ErrorCode.NOT_PERMITTED, "store is not the token's")

    return check
