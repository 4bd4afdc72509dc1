"""The asyncio client: a thin driver of :class:`~clients.engine.SyncEngine` and
:class:`~protocol.connection.ClientProtocol` over a websocket and a SQLite store.

Tasks
-----
* **runner** — connects, runs one session, decides after its end whether and when to connect again
  (:mod:`clients.reconnect`: jittered backoff, close codes);
* **session loop** (inside the runner) — the only code that touches the socket: it feeds received messages
  to the protocol object, the protocol's frames to the engine, the engine's frames back to the protocol and
  the protocol's bytes to the socket; it runs both objects' timers and persists what the engine settled, in
  one SQLite transaction per batch of messages;
* **reader** — moves websocket messages into a bounded buffer (back-pressure reaches TCP when full);
* **committer** — writes the ops the application makes, grouped, to the outbox before their call returns.

Everything that changes state runs on the event loop, so the engine needs no lock. Timers are the
protocol's and the engine's ``next_deadline()``; nothing polls.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import inspect
import logging
import os
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, Final, TypeAlias

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed as WsConnectionClosed
from websockets.exceptions import InvalidHandshake, InvalidURI

from clients import reconnect
from clients.engine import (
    DEFAULT_WINDOW,
    ChangeCause,
    EngineEvent,
    LoadOps,
    Notice,
    OpSettled,
    SubscriptionFailed,
    SyncEngine,
    TopicChanged,
    TopicSynced,
)
from clients.errors import AuthRequired, ClientClosed, ClientStopped, OutboxStalled
from clients.follow import DEFAULT_FOLLOW_STOCK, StockFollows
from clients.handles import Gate, OpHandle, handle_for, handles_for_pending
from clients.models import (
    CartConflict,
    ConnectionState,
    Rejection,
    Status,
    from_ms,
)
from clients.store import SQLiteOutbox
from clients.streams import RejectionStream, rejection_of
from clients.types import TopicHandle, handle_type
from clients.types.cart import Cart, CartView
from clients.types.stock import Stock
from clients.types.store import StoreStock
from protocol import codec, frames
from protocol import topics as topic_names
from protocol.connection import ClientProtocol, CloseRequested, FrameReceived, Opened, State
from protocol.errors import (
    BackendUnavailable,
    CloseCode,
    ConnectionClosed,
    ErrorCode,
    OpRejected,
    ProtocolError,
    SyncError,
)

log = logging.getLogger("clients")

__version__: Final = "0.1.0"
TokenProvider: TypeAlias = Callable[[str], "str | Awaitable[str]"]
"""Called with the ``client_id`` before each connection; returns a (fresh) token."""
ConflictHook: TypeAlias = Callable[["Cart", CartConflict], "Awaitable[None] | None"]
"""Called for every conflict the hub reports on a cart this client syncs (e.g. to re-set the quantity)."""
Clock: TypeAlias = Callable[[], int]

_MAX_MESSAGES_PER_TURN: Final = 512
"""Messages processed between two flushes of outgoing frames."""
REPORT_INTERVAL_MS: Final = 15_000
"""Default longest time between two reports (``ping.stats``) while online, however busy the connection."""
PERSIST_EVERY_MS: Final = 100
"""Settlements and topic states are written at most this often while messages stream in (one transaction
for all of them). Losing them in a crash costs only resends answered as duplicates and events fetched
again; an op itself is always committed before the call that made it returns."""
_READ_BUFFER: Final = 4096
_MAX_GROUP: Final = 1000
"""Ops committed in one SQLite transaction when the application makes many at once."""
_WAITING_FOR_APP: Final = frozenset({ConnectionState.AUTH_REQUIRED, ConnectionState.STOPPED})
_DIAGNOSE: Final = codec.FrameDecoder(frames.SERVER_FRAMES, codec.CLIENT_LIMITS)


def wall_ms() -> int:
    """This device's wall clock in Unix milliseconds (stamps hello, pings, ops and their HLC)."""
    return time.time_ns() // 1_000_000


# --- the client --------------------------------------------------------------------------------------------


class _Inputs:
    """What wakes the session loop: messages from the reader (bounded), or a nudge from elsewhere."""

    def __init__(self) -> None:
        self.items: collections.deque[bytes | _Ended] = collections.deque()
        self.signal = asyncio.Event()
        self.space = asyncio.Event()
        self.space.set()

    async def put(self, item: bytes | _Ended) -> None:
        while len(self.items) >= _READ_BUFFER:
            self.space.clear()
            await self.space.wait()
        self.items.append(item)
        self.signal.set()

    def wake(self) -> None:
        self.signal.set()

    async def wait(self, timeout_s: float | None) -> None:
        if not self.items:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self.signal.wait()
        self.signal.clear()

    def take(self, limit: int) -> list[bytes | _Ended]:
        out: list[bytes | _Ended] = []
        while self.items and len(out) < limit:
            out.append(self.items.popleft())
        self.space.set()
        return out


@dataclasses.dataclass(frozen=True, slots=True)
class _Ended:
    """How a session ended: the close code and reason, who closed, and the error to report."""

    code: int
    reason: str = ""
    by_hub: bool = True
    error: SyncError | None = None
    opened_ms: int | None = None
    fatal: bool = False
    """Stop whatever the close code says (a configuration the hub will never accept)."""


class SyncClient:
    """The offline-first sync client. Use as an async context manager::

        async with SyncClient("ws://127.0.0.1:8000/ws", token=tok, data_dir="~/.pos-42") as client:
            cart = client.cart("m42")
            op = await cart.add("SKU-1", 2)      # stored and shown locally at once
            await op.acked()                     # the hub applied it

    ``url`` is one hub URL or a list of them (any hub of one deployment serves any client): after a
    connection ends or an attempt fails, the next attempt goes to the next URL, with the same outbox and
    cursors. ``token`` is a callable ``token(client_id)`` (sync or async) asked before every connection — the
    way to stay connected across token lifetimes — or a string: once the hub refuses a string token the
    client is ``auth_required`` and waits, ops kept, for :meth:`set_token`. ``client_id`` is created on first
    use and kept in ``data_dir``; pass one to pin it (it must match the stored one). ``online=False`` starts
    offline: ops are stored and shown, nothing is sent until :meth:`go_online`. ``follow_stock``: SKUs whose
    stock the client follows for its carts' lines at once, so a cart hears a SKU sell out (``cart.sold_out``,
    ``SoldOut`` changes); 0, the default, follows none (:mod:`clients.follow`).

    The client reports its backlog and latency to the hub (``ping.stats``, PROTOCOL.md §6.12) as soon as a
    session opens — before it replays its outbox, so the hub's POS fleet view sees what a till kept while
    offline — and then at least every ``report_interval_ms``: a busy connection is never idle, so never pings.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        token: str | TokenProvider,
        data_dir: str | os.PathLike[str],
        client_id: str | None = None,
        online: bool = True,
        on_conflict: ConflictHook | None = None,
        agent: str = "",
        window: int = DEFAULT_WINDOW,
        report_interval_ms: int = REPORT_INTERVAL_MS,
        handshake_timeout_ms: int = 10_000,
        backoff: Callable[[], Iterator[float]] = reconnect.backoff,
        clock: Clock = wall_ms,
        follow_stock: int = DEFAULT_FOLLOW_STOCK,
    ) -> None:
        self._hubs = reconnect.Hubs(url)
        self._follows = StockFollows(follow_stock)
        self._token = token
        self._data_dir = data_dir
        self._proposed_id = client_id
        self._want_online = online
        self._on_conflict = on_conflict
        self._agent = f"syncd-python/{__version__}" + (f" ({agent})" if agent else "")
        self._window = window
        if report_interval_ms <= 0:
            raise ValueError(f"report_interval_ms must be positive, not {report_interval_ms}")
        self._report_interval_ms = report_interval_ms
        self._handshake_timeout_ms = handshake_timeout_ms
        self._backoff = backoff
        self._clock = clock
        self._store: SQLiteOutbox | None = None
        self._engine_: SyncEngine | None = None
        self._topic_handles: dict[str, TopicHandle] = {}
        self._handles: weakref.WeakValueDictionary[int, OpHandle] = weakref.WeakValueDictionary()
        self._requests: list[tuple[str, dict[str, Any], asyncio.Future[OpHandle]]] = []
        self._committer: asyncio.Task[None] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._inputs: _Inputs | None = None
        self._online_changed = asyncio.Event()
        self._interrupt = asyncio.Event()  # go_offline()/close() cut a connection attempt short
        self._session_over = asyncio.Event()
        self._session_over.set()
        self._settled: list[OpSettled] = []
        self._persist_due: int | None = None
        self._load: LoadOps | None = None
        self._closing = False
        self._closed = False
        self._gate = Gate()  # closed while the client cannot make progress by itself: waiters fail at once
        # status
        self._state = ConnectionState.OFFLINE
        self._last_error: SyncError | None = None
        self._stopped = False
        self._attempts = 0  # failed connection attempts since last online
        self._auth_refusals = 0  # sessions in a row that ended with an auth close
        self._last_synced_ms: int | None = None
        self._best_sample: tuple[int, int] | None = None  # (rtt, offset)
        self._heartbeat = 15_000
        self._status: Status | None = None
        self._status_version = 0
        self._status_changed = asyncio.Event()
        self._synced = asyncio.Event()
        self._rejection_streams: weakref.WeakSet[RejectionStream] = weakref.WeakSet()

    # -- lifecycle ----------------------------------------------------------------------------------------

    async def __aenter__(self) -> SyncClient:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the data directory, restore the outbox and cached carts, and connect (if online)."""
        if self._store is not None:
            return
        store = await SQLiteOutbox.open(self._data_dir)
        try:
            proposed = self._proposed_id or f"c-{uuid.uuid4().hex[:24]}"
            client_id = await store.client_id(proposed)
            if self._proposed_id is not None and client_id != self._proposed_id:
                raise ValueError(
                    f"{self._data_dir} belongs to client {client_id!r}, not {self._proposed_id!r}"
                )
            meta = await store.meta()
            outbox = await store.outbox()
            last_synced = meta.get("last_synced")
            self._last_synced_ms = int(last_synced) if last_synced is not None else None
            engine = SyncEngine(
                client_id,
                next_seq=int(meta.get("next_seq", 1)),
                hlc=int(meta.get("hlc", 0)),
                pending=outbox.pending,
                oldest_pending_ms=outbox.oldest_made_at,
                window=self._window,
            )
            for record in await store.topics():
                view = engine.load_topic(record)
                async for op in store.load_overlay(record.topic, record.reflected):
                    engine.add_overlay(view, op)
                if view.shows_when_acked:
                    for op in await store.load_acked(record.topic, record.reflected):
                        view.acked(op, None)
                key = record.topic.partition(":")[2]
                self._topic_handles.setdefault(record.topic, handle_type(record.topic)(self, key))
        except BaseException:
            await store.close()
            raise
        self._store, self._engine_ = store, engine
        for handle in list(self._topic_handles.values()):
            if isinstance(handle, Stock):
                self._follows.claim(handle.sku)  # stored: the application asked for it
            elif isinstance(handle, Cart):
                self._follow_lines(handle)
        self._publish_status()
        self._runner = asyncio.create_task(self._run(), name=f"syncd-client-{client_id}")

    async def close(self) -> None:
        """Go offline, store what is pending, close the data directory. Unsettled ops stay in the outbox."""
        if self._closed or self._store is None:
            return
        self._closing = True
        self._want_online = False
        self._interrupt.set()
        self._online_changed.set()
        if self._inputs is not None:
            self._inputs.wake()
        if self._runner is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        await self._committed()
        await self._persist()
        self._closed = True
        self._gate.close(ClientClosed("the client closed before the hub answered; the ops stay stored"))
        for handle in self._topic_handles.values():
            handle._close()
        for stream in list(self._rejection_streams):
            stream.close()
        self._status_changed.set()
        await self._store.close()

    # -- the application's API ----------------------------------------------------------------------------

    @property
    def client_id(self) -> str:
        return self._engine.client_id

    @property
    def url(self) -> str:
        """The hub URL the client is connected to, or will try next."""
        return self._hubs.current

    def set_token(self, token: str | TokenProvider) -> None:
        """Use ``token`` (a string or a provider) from the next connection on.

        A client waiting in ``auth_required`` (or ``stopped``) connects again at once: this is how an app
        with a plain token string renews it after a till was offline longer than the token lives. A client
        that is online keeps its session; the hub closes it when the old token expires and the client
        reconnects with this one.
        """
        self._token = token
        if self._state in (ConnectionState.AUTH_REQUIRED, ConnectionState.STOPPED):
            self._resume()

    async def op(self, seq: int) -> OpHandle:
        """A handle for op ``seq`` of this client, made before (a restart, a crash, a dropped handle).

        Await its ``acked()`` for the outcome: pending while the op is in the outbox, ``OpRejected`` if the
        hub rejected it, ``{}`` if it was applied before this handle existed (results are not stored).
        Raises ``KeyError`` for a seq this data directory never issued.
        """
        await self._committed()
        if not 1 <= seq < self._engine.next_seq:
            raise KeyError(f"op {seq} was never made in this data directory")
        return await handle_for(seq, self._store_(), self._persist, self._handle)

    async def pending_ops(self) -> list[OpHandle]:
        """A handle for every op still in the outbox (not settled by the hub), oldest first."""
        await self._committed()
        return await handles_for_pending(self._store_(), self._persist, self._handle)

    def cart(self, member: str) -> Cart:
        """The cart of ``member``, synced from now on (and across restarts) until unsubscribed."""
        if not topic_names.is_valid_key(member):
            raise ValueError(f"member ids are 1-64 of [A-Za-z0-9._@-], not {member[:64]!r}")
        cart = self._topic_handle(f"cart:{member}", member)
        assert isinstance(cart, Cart)
        self._follow_lines(cart)
        return cart

    def stock(self, sku: str) -> Stock:
        """The stock of ``sku``, synced from now on (and across restarts) until unsubscribed."""
        if not topic_names.is_valid_key(sku):
            raise ValueError(f"SKUs are 1-64 of [A-Za-z0-9._@-], not {sku[:64]!r}")
        if self._follows.transient(sku):
            self._engine.touch(f"stock:{sku}")  # followed for a cart until now: stored from here on
        self._follows.claim(sku)
        stock = self._topic_handle(f"stock:{sku}", sku)
        assert isinstance(stock, Stock)
        return stock

    def store(self, store: str, *, answer_recalls: bool = True, member: str | None = None) -> StoreStock:
        """The allotments and recalls of ``store`` (a till's own: its token's store), synced from now on
        (and across restarts) until unsubscribed. ``answer_recalls``: give back what ops recall, as ``member``
        (default: the store id), when online (:class:`~clients.types.store.StoreStock`)."""
        for key in (store, member or store):
            if not topic_names.is_valid_key(key):
                raise ValueError(f"store and member ids are 1-64 of [A-Za-z0-9._@-], not {key[:64]!r}")
        handle = self._topic_handle(f"store:{store}", store)
        assert isinstance(handle, StoreStock)
        handle.answer_recalls = answer_recalls
        handle.member = member or store
        return handle

    def _topic_handle(self, topic: str, key: str) -> TopicHandle:
        self._engine.subscribe(topic)
        handle = self._topic_handles.get(topic)
        if handle is None:
            handle = self._topic_handles[topic] = handle_type(topic)(self, key)
        self._nudge()
        return handle

    @property
    def status(self) -> Status:
        """The client's health now: connection, outbox backlog, last sync, last error."""
        return self._compute_status()

    async def status_changes(self) -> AsyncIterator[Status]:
        """The current status, then each new one (intermediate ones merged while the reader is busy)."""
        seen = -1
        while not self._closed:
            if self._status_version != seen:
                seen = self._status_version
                yield self.status
                continue
            self._status_changed.clear()
            await self._status_changed.wait()

    async def rejections(self) -> AsyncIterator[Rejection]:
        """Rejections not yet marked seen (stored ones first), then new ones as they happen."""
        stream = RejectionStream()
        self._rejection_streams.add(stream)
        try:
            await self._persist()
            for rejection in await self._store_().rejections():
                stream.offer(rejection)
            while True:
                item = await stream.next()
                if item is None:
                    return
                yield item
        finally:
            self._rejection_streams.discard(stream)

    async def pending_rejections(self) -> list[Rejection]:
        """The rejections not yet marked seen, oldest first."""
        await self._persist()
        return await self._store_().rejections()

    async def mark_seen(self, *rejections: Rejection | int) -> None:
        """The application has shown these rejections: they are no longer offered."""
        seqs = [r if isinstance(r, int) else r.seq for r in rejections]
        await self._persist()  # a rejection still in memory must be stored before it can be marked
        await self._store_().mark_seen(seqs)

    async def go_offline(self) -> None:
        """Close the connection and stay offline (ops are still stored and shown) until :meth:`go_online`."""
        self._want_online = False
        self._interrupt.set()
        self._online_changed.set()
        self._nudge()
        await self._session_over.wait()

    async def go_online(self) -> None:
        """Connect now (also after ``auth_required`` or ``stopped``: the application decided to retry)."""
        self._resume()

    async def wait_synced(self, timeout: float | None = None) -> Status:
        """Wait until online with an empty outbox, every cart in sync and every op's effect visible.

        Raises at once when the client cannot get there by itself (``AuthRequired``, ``ClientStopped``,
        ``OutboxStalled``, ``ClientClosed``, or ``SubscriptionRefused`` for a cart the hub will not serve this
        token: unsubscribe it), and ``TimeoutError`` naming what is still missing.
        """
        try:
            async with asyncio.timeout(timeout):
                while not self._is_synced():
                    views = (self._engine.view(t) for t in self._engine.topics)
                    refused = [v.error for v in views if v is not None and v.error is not None]
                    if refused:
                        raise refused[0]  # on this connection that cart will not be in sync
                    self._synced.clear()
                    await self._gate.wait(self._synced)
        except TimeoutError:
            s = self.status
            raise TimeoutError(
                f"not synced within {timeout} s: {s.state.value}, {s.pending_ops} ops pending"
                + (f", last error: {s.last_error}" if s.last_error else "")
            ) from None
        return self.status

    # -- internals: ops -----------------------------------------------------------------------------------

    @property
    def _engine(self) -> SyncEngine:
        if self._engine_ is None:
            raise ClientClosed("the client is not started: use `async with SyncClient(...)`")
        return self._engine_

    def _store_(self) -> SQLiteOutbox:
        if self._store is None or self._closed:
            raise ClientClosed("the client is closed")
        return self._store

    async def _submit(self, kind: str, args: dict[str, Any]) -> OpHandle:
        if self._closing or self._store is None:
            raise ClientClosed("the client is closed")
        future: asyncio.Future[OpHandle] = asyncio.get_running_loop().create_future()
        self._requests.append((kind, args, future))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_loop())
        return await future

    async def _commit_loop(self) -> None:
        """Store the ops the application made, many per transaction, and only then let them be sent."""
        store, engine = self._store_(), self._engine
        while self._requests:
            batch, self._requests = self._requests[:_MAX_GROUP], self._requests[_MAX_GROUP:]
            now = self._clock()
            prepared: list[tuple[frames.Op, asyncio.Future[OpHandle]]] = []
            for kind, args, future in batch:
                try:
                    op = engine.prepare(kind, args, now)
                except (ValueError, OpRejected) as exc:  # refused at the call site: nothing stored
                    if not future.done():
                        future.set_exception(exc)
                    continue
                prepared.append((op, future))
            if not prepared:
                continue
            ops = [op for op, _ in prepared]
            try:
                await store.append(ops, next_seq=engine.next_seq, hlc=engine.hlc)
            except BaseException as exc:
                engine.abort(ops)
                self._dispatch(engine.events_received())
                error = exc if isinstance(exc, SyncError) else BackendUnavailable(f"cannot store ops: {exc}")
                for _, future in prepared:
                    if not future.done():
                        future.set_exception(error)
                if not isinstance(exc, Exception):
                    raise
                continue
            engine.commit(ops)
            for op, future in prepared:
                handle = self._handle(op.seq, op.kind, op.ts)
                if not future.done():
                    future.set_result(handle)
            self._dispatch(engine.events_received())
            self._nudge()
            self._publish_status()

    def _handle(self, seq: int, kind: str, made_ms: int | None) -> OpHandle:
        """The live handle of op ``seq``, or a new one registered to be settled by its outcome."""
        handle = self._handles.get(seq)
        if handle is None:
            handle = self._handles[seq] = OpHandle(seq, kind, made_ms, self._gate)
        return handle

    async def _committed(self) -> None:
        """Until every op made so far is stored (so its seq is known to the store)."""
        while self._committer is not None and not self._committer.done():
            await self._committer

    async def _unsubscribe(self, handle: TopicHandle) -> None:
        followed = isinstance(handle, Stock) and self._follows.release(handle.sku)
        if not followed:  # a SKU still on a cart's lines stays subscribed, for the cart
            self._engine.unsubscribe(handle.topic)
        self._topic_handles.pop(handle.topic, None)
        handle._close()
        if isinstance(handle, Cart):
            self._unfollow(self._follows.forget(handle.topic))
        self._nudge()
        await self._store_().remove_topic(handle.topic)

    def _transient(self, topic: str) -> bool:
        """A stock topic followed for carts only: not stored (it is followed again when its cart is)."""
        kind, _, sku = topic.partition(":")
        return kind == "stock" and self._follows.transient(sku)

    def _follow_lines(self, cart: Cart, changed: frozenset[str] | None = None) -> None:
        """Follow the stock of the SKUs on ``cart``'s lines (bounded), and let go of those gone from it.
        ``changed``: only these lines may have changed (a big cart is then not read in full)."""
        view = self._engine.view(cart.topic)
        followed = self._follows.skus_of(cart.topic)
        if not isinstance(view, CartView) or (self._follows.limit == 0 and not followed):
            return  # following is off: nothing to read
        if changed is not None:
            present = {sku for sku in changed if view.line(sku) is not None}
            if not (changed - present) & followed:  # no followed line gone: nothing to take its place
                new = present - followed
                if not new:
                    return
                skus: Iterable[str] = followed | new
            else:
                skus = view.lines().keys()
        else:
            skus = view.lines().keys()
        added, dropped = self._follows.update(cart.topic, skus)
        for sku in added:
            self._engine.subscribe(f"stock:{sku}")
        self._unfollow(dropped)
        if added or dropped:
            self._nudge()

    def _unfollow(self, skus: list[str]) -> None:
        for sku in skus:
            topic = f"stock:{sku}"
            self._engine.unsubscribe(topic)
            handle = self._topic_handles.pop(topic, None)
            if handle is not None:
                handle._close()

    # -- internals: connection ----------------------------------------------------------------------------

    async def _run(self) -> None:
        delays = self._backoff()
        while not self._closing:
            if not self._want_online:
                if self._state not in _WAITING_FOR_APP:  # keep showing why it waits
                    self._set_state(ConnectionState.OFFLINE)
                self._online_changed.clear()
                if self._want_online or self._closing:
                    continue
                await self._online_changed.wait()
                delays = self._backoff()
                continue
            if self._state is not ConnectionState.AUTH_REQUIRED:  # a provider asked again stays auth_required
                self._set_state(ConnectionState.CONNECTING)
            self._interrupt.clear()
            self._session_over.clear()
            token = self._token
            try:
                ended = await self._session()
            finally:
                self._session_over.set()
            if self._closing:
                break
            decision = self._after(ended, fresh_token=callable(token))
            opened = ended.opened_ms
            if opened is not None and self._clock() - opened >= self._heartbeat:
                delays = self._backoff()  # it stayed up a while: start again from short delays
            if not self._want_online:
                continue
            if decision.auth and self._token is not token:
                decision = reconnect.Decision(True)  # the application set a new token meanwhile: try it
            elif decision.auth:
                self._block(ConnectionState.AUTH_REQUIRED, AuthRequired(ended.code, ended.reason), decision)
            elif not decision.reconnect:
                self._block(ConnectionState.STOPPED, ClientStopped(ended.code, ended.reason), decision)
            if not decision.reconnect:
                continue
            self._hubs.advance()  # hubs are alike: the next attempt goes to the next one
            delay = max(next(delays), decision.min_delay_s)
            self._online_changed.clear()
            self._publish_status()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._online_changed.wait()  # go_offline/go_online/set_token/close cut it short
        self._set_state(ConnectionState.OFFLINE)

    def _after(self, ended: _Ended, *, fresh_token: bool) -> reconnect.Decision:
        """Account for a session that ended (attempts, last error) and decide what comes next."""
        decision = reconnect.after_close(
            ended.code,
            ended.reason,
            by_hub=ended.by_hub,
            fresh_token=fresh_token,
            auth_refusals=self._auth_refusals,
        )
        if ended.fatal:
            decision = reconnect.Decision(False)
        is_auth = ended.by_hub and ended.code in reconnect.AUTH_CLOSES
        self._auth_refusals = self._auth_refusals + 1 if is_auth else 0
        if ended.error is not None:
            self._last_error = ended.error
            if ended.opened_ms is None:
                self._attempts += 1
                if self._attempts == 1 and decision.reconnect and not decision.auth:
                    # once per outage, not per attempt: status.attempts counts them
                    log.warning("cannot reach %s: %s; retrying with backoff", self.url, ended.error)
        return decision

    def _block(self, state: ConnectionState, error: SyncError, decision: reconnect.Decision) -> None:
        """The client cannot make progress by itself: say why in the status, and fail every waiter now."""
        self._last_error = error
        self._stopped = not decision.reconnect
        if not decision.reconnect:
            self._want_online = False
        self._gate.close(error)
        self._set_state(state)

    def _resume(self) -> None:
        """The application acted (a new token, go_online): connect again, and let waiters wait again."""
        self._want_online = True
        self._stopped = False
        if isinstance(self._gate.error, AuthRequired | ClientStopped):
            self._gate.open()
        if self._state in _WAITING_FOR_APP:
            self._set_state(ConnectionState.CONNECTING)
        self._online_changed.set()

    async def _token_for(self, client_id: str) -> str:
        token = self._token
        if isinstance(token, str):
            return token
        value = token(client_id)
        if inspect.isawaitable(value):
            value = await value
        return str(value)

    async def _session(self) -> _Ended:
        engine = self._engine
        try:
            token = await self._token_for(engine.client_id)
        except Exception as exc:  # the application's token provider failed: retry later
            reason = f"token provider failed: {exc}"[:200]
            return _Ended(1006, reason, by_hub=False, error=ConnectionClosed(1006, reason))
        try:
            proto = ClientProtocol(
                engine.client_id,
                token,
                self._clock(),
                agent=self._agent,
                handshake_timeout_ms=self._handshake_timeout_ms,
            )
        except ValueError as exc:  # a token or client id no hub would accept
            error = ConnectionClosed(CloseCode.UNAUTHORIZED, str(exc)[:200])
            return _Ended(CloseCode.UNAUTHORIZED, str(exc)[:200], error=error, fatal=True)
        try:
            ws = await self._connect()
            if ws is None:
                return _Ended(CloseCode.NORMAL, "going offline", by_hub=False)
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            return _Ended(1006, str(exc)[:200], error=ConnectionClosed(1006, f"cannot connect: {exc}"[:200]))
        except InvalidURI as exc:
            error = ConnectionClosed(CloseCode.UNAUTHORIZED, f"invalid hub URL: {exc}"[:200])
            return _Ended(CloseCode.UNAUTHORIZED, str(exc)[:200], error=error, fatal=True)
        inputs = self._inputs = _Inputs()
        reader = asyncio.create_task(self._read(ws, inputs))
        try:
            return await self._converse(ws, proto, inputs)
        finally:
            self._inputs = None
            if engine.is_open:
                engine.disconnected()
                self._dispatch(engine.events_received())
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            with contextlib.suppress(Exception):
                await ws.close()
            await self._persist()

    async def _connect(self) -> ClientConnection | None:
        """Open the websocket; ``None`` if ``go_offline()`` or ``close()`` came first."""

        async def attempt() -> ClientConnection:
            return await connect(
                self.url,
                max_size=codec.CLIENT_LIMITS.max_frame,
                compression=None,
                ping_interval=None,  # liveness is the protocol's ping/pong (§9)
                open_timeout=self._handshake_timeout_ms / 1000,
                close_timeout=2,
            )

        connecting = asyncio.ensure_future(attempt())
        interrupted = asyncio.ensure_future(self._interrupt.wait())
        try:
            await asyncio.wait({connecting, interrupted}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            interrupted.cancel()
        if connecting.done():
            return connecting.result()
        connecting.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            ws = await connecting
            await ws.close()
        return None

    async def _read(self, ws: ClientConnection, inputs: _Inputs) -> None:
        try:
            async for message in ws:
                if isinstance(message, str):
                    error = ProtocolError(ErrorCode.BAD_FRAME, "the hub sent a text message")
                    await inputs.put(
                        _Ended(CloseCode.PROTOCOL_ERROR, error.message, by_hub=False, error=error)
                    )
                    return
                await inputs.put(message)
        except WsConnectionClosed:
            pass
        code = ws.close_code if ws.close_code is not None else 1006
        reason = ws.close_reason or ""
        await inputs.put(_Ended(code, reason, error=ConnectionClosed(code, reason)))

    async def _converse(self, ws: ClientConnection, proto: ClientProtocol, inputs: _Inputs) -> _Ended:
        engine = self._engine
        proto.connect(self._clock())
        opened_ms: int | None = None
        report_due: int | None = None  # the next report, whether or not the connection goes idle
        while True:
            await self._send(ws, proto)
            if not self._want_online or self._closing:
                await self._close_ws(ws, proto, CloseCode.NORMAL, "going offline")
                return _Ended(CloseCode.NORMAL, "going offline", by_hub=False, opened_ms=opened_ms)
            deadline = _min(_min(proto.next_deadline(), engine.next_deadline()), self._persist_due)
            deadline = _min(deadline, report_due)
            await inputs.wait(None if deadline is None else max(0.0, (deadline - self._clock()) / 1000))
            now = self._clock()
            for item in inputs.take(_MAX_MESSAGES_PER_TURN):
                if isinstance(item, _Ended):
                    if not item.by_hub:
                        await self._close_ws(ws, proto, item.code, item.reason)
                    return dataclasses.replace(item, opened_ms=opened_ms)
                proto.receive_data(item, now)
                ended = self._protocol_events(proto, item, now)
                if ended is not None:
                    await self._close_ws(ws, proto, ended.code, ended.reason)
                    return dataclasses.replace(ended, opened_ms=opened_ms)
                if opened_ms is None and engine.is_open:
                    opened_ms = now
                    report_due = now  # the backlog as it stands, before _pump_engine replays any of it
            due = proto.next_deadline()
            if (due is not None and now >= due) or (report_due is not None and now >= report_due):
                proto.set_stats(engine.stats(now))  # the ping about to go out carries them
                if report_due is not None and now >= report_due and proto.state is State.OPEN:
                    proto.ping(now)  # a report now; the heartbeat ping is then due a beat later
                report_due = now + self._report_interval_ms if report_due is not None else None
            proto.handle_timer(now)
            engine.handle_timer(now)
            ended = self._protocol_events(proto, None, now)
            if ended is not None:
                await self._close_ws(ws, proto, ended.code, ended.reason)
                return dataclasses.replace(ended, opened_ms=opened_ms)
            await self._pump_engine(proto, now)
            await self._send(ws, proto)
            if self._persist_due is not None and now >= self._persist_due:
                await self._persist()
            self._publish_status()

    def _protocol_events(self, proto: ClientProtocol, data: bytes | None, now: int) -> _Ended | None:
        engine = self._engine
        for event in proto.events_received():
            if isinstance(event, Opened):
                self._sample(event.rtt_ms, event.clock_offset_ms)
                self._heartbeat = event.welcome.heartbeat_ms
                engine.connected(event.welcome, now, self._offset())
                self._attempts = self._auth_refusals = 0
                if isinstance(self._gate.error, AuthRequired | ClientStopped):
                    self._gate.open()
                self._set_state(ConnectionState.ONLINE)
            elif isinstance(event, FrameReceived):
                try:
                    engine.receive(event.frame, now)
                except ProtocolError as exc:  # a payload that breaks the protocol: nothing of it was applied
                    self._dispatch(engine.events_received())
                    return _Ended(CloseCode.PROTOCOL_ERROR, exc.message, by_hub=False, error=exc)
                if isinstance(event.frame, frames.Ack | frames.Event | frames.Snapshot):
                    self._last_synced_ms = now
            elif isinstance(event, CloseRequested):
                return _Ended(event.code, event.reason, by_hub=False, error=self._diagnose(event, data))
        if proto.rtt_ms is not None and proto.clock_offset_ms is not None:
            self._sample(proto.rtt_ms, proto.clock_offset_ms)
            engine.set_clock_offset(self._offset())
        self._dispatch(engine.events_received())
        return None

    @staticmethod
    def _diagnose(event: CloseRequested, data: bytes | None) -> SyncError:
        """Why our protocol object closed: the exact decoding error for a bad frame, else the close itself."""
        if event.code in (CloseCode.HEARTBEAT_TIMEOUT, CloseCode.HANDSHAKE_TIMEOUT, CloseCode.NORMAL):
            return ConnectionClosed(event.code, event.reason)
        if data is not None:
            try:
                frame = _DIAGNOSE.decode(data)
            except ProtocolError as exc:
                return exc
            if isinstance(frame, frames.Welcome) and frame.version not in frames.PROTOCOL_VERSIONS:
                return ProtocolError(ErrorCode.UNSUPPORTED_VERSION, f"the hub chose version {frame.version}")
            return ProtocolError(ErrorCode.OUT_OF_ORDER, f"the hub broke the handshake: {event.reason}")
        return ProtocolError(ErrorCode.BAD_FRAME, event.reason)

    async def _close_ws(self, ws: ClientConnection, proto: ClientProtocol, code: int, reason: str) -> None:
        if proto.state is not State.CLOSED:
            proto.close(code, reason)
            proto.events_received()  # the CloseRequested asked for here
        await self._send(ws, proto)
        with contextlib.suppress(Exception):
            await ws.close(code, reason[:120])

    async def _pump_engine(self, proto: ClientProtocol, now: int) -> None:
        """Hand the engine's frames to the protocol, loading outbox pages as the engine asks for them."""
        engine = self._engine
        for _ in range(8):
            if proto.state is State.OPEN:
                for frame in engine.frames_to_send(now):
                    proto.send(frame, now)
            self._dispatch(engine.events_received())
            load, self._load = self._load, None
            if load is None:
                return
            ops = await self._store_().load_pending(load.after_seq, load.limit)
            engine.ops_loaded(ops, load.limit)

    async def _send(self, ws: ClientConnection, proto: ClientProtocol) -> None:
        for data in proto.data_to_send():
            try:
                await ws.send(data)
            except WsConnectionClosed:
                return  # the reader reports the close

    # -- internals: events, persistence, status -----------------------------------------------------------

    def _dispatch(self, events: list[EngineEvent]) -> None:
        for event in events:
            if isinstance(event, TopicChanged):
                self._changed(event)
            elif isinstance(event, OpSettled):
                self._settled.append(event)
                self._settle(event)
                if isinstance(self._gate.error, OutboxStalled):
                    self._gate.open()  # the hub settles our ops again
                if self._persist_due is None:
                    self._persist_due = self._clock() + PERSIST_EVERY_MS
            elif isinstance(event, LoadOps):
                self._load = event
            elif isinstance(event, SubscriptionFailed):
                if self._transient(event.error.topic):  # a follow for carts only: do without it
                    log.warning("not following %s for carts: %s", event.error.topic, event.error)
                    self._follows.refuse(event.error.topic.partition(":")[2])
                    self._unfollow([event.error.topic.partition(":")[2]])
                    continue
                self._last_error = event.error
                self._synced.set()  # wait_synced() waiters: this cart cannot be in sync, say so
                handle = self._topic_handles.get(event.error.topic)
                if handle is not None:
                    handle._notify(TopicChanged(event.error.topic, ChangeCause.SNAPSHOT, frozenset()))
            elif isinstance(event, Notice):
                if isinstance(event.error, OutboxStalled):
                    if isinstance(self._gate.error, OutboxStalled):
                        continue  # retried every 30 s: said once
                    self._gate.close(event.error)  # waiters cannot be satisfied until an operator acts
                log.warning("%s", event.error)
                self._last_error = event.error
            elif isinstance(event, TopicSynced):
                # A handle that acts on its topic's state as it is (a store answering recalls) hears of every
                # sync, even one that brought no change (a resume after a restart).
                synced = getattr(self._topic_handles.get(event.topic), "_synced", None)
                if synced is not None:
                    synced()
        self._check_synced()

    def _changed(self, change: TopicChanged) -> None:
        kind, _, key = change.topic.partition(":")
        if kind == "stock":
            for topic in self._follows.carts_of(key):
                follower = self._topic_handles.get(topic)
                if isinstance(follower, Cart):
                    follower._stock_changed(key)
        cart = self._topic_handles.get(change.topic)
        if cart is None:
            return
        if isinstance(cart, Cart):
            self._follow_lines(cart, change.skus)  # first: the change tells the cart's sold-out lines too
        conflict = cart._notify(change)
        if conflict is not None and isinstance(cart, Cart) and self._on_conflict is not None:
            try:
                result = self._on_conflict(cart, conflict)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    task.add_done_callback(_log_hook_failure)
            except Exception:
                log.exception("the conflict hook failed")

    async def _persist(self) -> None:
        """One transaction for what the engine settled and the topics it advanced since the last one."""
        self._persist_due = None
        if self._store is None or self._closed:
            return
        settled, self._settled = self._settled, []
        records = [r for r in self._engine.take_dirty_topics() if not self._transient(r.topic)]
        if settled or records:
            try:
                await self._store.save(settled, records, last_synced_ms=self._last_synced_ms)
            except BackendUnavailable as exc:
                # Not fatal: what was not recorded is resent (answered as duplicates) or fetched again.
                log.warning("%s", exc)
                self._last_error = exc

    def _settle(self, settled: OpSettled) -> None:
        """Tell the application: the op's handle, and the rejection streams."""
        handle = self._handles.get(settled.op.seq)  # kept while the app holds it: client.op(seq) finds it
        if settled.ok:
            if handle is not None:
                handle._settle(settled.result or {}, None)
            return
        if handle is not None:
            handle._settle(None, OpRejected(settled.code or "rejected", settled.message))
        rejection = rejection_of(settled)
        for stream in list(self._rejection_streams):
            stream.offer(rejection)

    def _nudge(self) -> None:
        if self._inputs is not None:
            self._inputs.wake()

    def _sample(self, rtt: int, offset: int) -> None:
        if self._best_sample is None or rtt <= self._best_sample[0]:
            self._best_sample = (rtt, offset)

    def _offset(self) -> int | None:
        return self._best_sample[1] if self._best_sample is not None else None

    def _set_state(self, state: ConnectionState) -> None:
        if state is not self._state:
            previous, self._state = self._state, state
            _log_state(state, previous, self.url, self._last_error)
        self._publish_status()

    def _is_synced(self) -> bool:
        engine = self._engine_
        return (
            engine is not None
            and self._state is ConnectionState.ONLINE
            and engine.pending == 0
            and engine.all_synced
            and all(not (v := engine.view(t)) or not v.has_pending_writes for t in engine.topics)
        )

    def _check_synced(self) -> None:
        if self._is_synced():
            self._synced.set()

    def _compute_status(self) -> Status:
        engine = self._engine
        return Status(
            state=self._state,
            pending_ops=engine.pending,
            oldest_pending_at=from_ms(engine.oldest_pending_ms),
            last_synced_at=from_ms(self._last_synced_ms),
            last_error=self._last_error,
            clock_offset_ms=self._offset(),
            stopped=self._stopped,
            attempts=self._attempts,
            hub=self.url,
        )

    def _publish_status(self) -> None:
        if self._engine_ is None:
            return
        status = self._compute_status()
        if status != self._status:
            self._status = status
            self._status_version += 1
            self._status_changed.set()
        self._check_synced()


def _log_hook_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the conflict hook failed", exc_info=task.exception())


def _log_state(state: ConnectionState, previous: ConnectionState, url: str, error: SyncError | None) -> None:
    """One line per change of the connection state (never one per attempt)."""
    if state is ConnectionState.ONLINE:
        log.info("online: %s", url)
    elif state is ConnectionState.CONNECTING:
        if previous is ConnectionState.ONLINE:
            log.warning("connection to %s ended (%s); reconnecting", url, error)
        else:
            log.info("connecting to %s", url)
    elif state is ConnectionState.AUTH_REQUIRED:
        log.warning(
            "the hub refused the token (%s): ops are kept; waiting for a new token (set_token)", error
        )
    elif state is ConnectionState.STOPPED:
        log.warning("stopped (%s): ops are kept; go_online() once it is fixed", error)
    else:
        log.info("offline")


def _min(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    return a if b is None else min(a, b)
