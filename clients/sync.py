"""A blocking facade over :class:`~clients.SyncClient`, for POS code that is not async.

The client runs on its own event loop in a daemon thread; every method here hands a call to that loop and
blocks until it is done (``timeout`` in seconds, ``None`` = wait as long as it takes). Any number of threads
may use one facade: calls are serialised on the loop, so ops keep the order in which they were *made*, and
each returns after its local commit exactly as the async API does::

    with SyncClientSync("ws://hub:8000/ws", token=tok, data_dir="/var/lib/pos-42") as client:
        cart = client.cart("m42")
        cart.add("SKU-1", 2).result(timeout=5)     # or drop the handle: the op is stored and will be sent
        print(cart.lines)

Many handles are awaited from one thread with :meth:`SyncClientSync.as_completed` or
:meth:`SyncClientSync.wait` (no thread per op), and the client's health is followed with
:meth:`SyncClientSync.status_changes`.

Never call it from the client's own loop thread (a deadlock); ``RuntimeError`` says so.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

from clients.client import SyncClient, TokenProvider
from clients.handles import OpHandle
from clients.models import CartChange, CartLine, CartState, Rejection, Status
from clients.types.cart import Attrs, Cart
from clients.types.stock import Stock, StockChange, StockState
from protocol.errors import SyncError

T = TypeVar("T")
_END = object()


class SyncClientSync:
    """:class:`~clients.SyncClient` for threaded code. Same arguments; ``start()``/``close()`` or ``with``."""

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        token: str | TokenProvider,
        data_dir: str | os.PathLike[str],
        **options: Any,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="syncd-client", daemon=True)
        self._client = SyncClient(url, token=token, data_dir=data_dir, **options)
        self._started = False

    def __enter__(self) -> SyncClientSync:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self, timeout: float | None = 30.0) -> None:
        if self._started:
            return
        self._thread.start()
        self._started = True
        self._run(self._client.start(), timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        """Close the client (unsettled ops stay stored) and stop its thread."""
        if not self._started or self._loop.is_closed():
            return
        try:
            self._run(self._client.close(), timeout)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
            if not self._thread.is_alive():
                self._loop.close()

    # -- API --------------------------------------------------------------------------------------------

    @property
    def client_id(self) -> str:
        return self._call(lambda: self._client.client_id)

    @property
    def status(self) -> Status:
        return self._call(lambda: self._client.status)

    def cart(self, member: str) -> CartSync:
        return CartSync(self, self._call(lambda: self._client.cart(member)))

    def stock(self, sku: str) -> StockSync:
        """The stock of ``sku`` (:meth:`SyncClient.stock`), with the same methods, blocking."""
        return StockSync(self, self._call(lambda: self._client.stock(sku)))

    def go_offline(self, timeout: float | None = 30.0) -> None:
        self._run(self._client.go_offline(), timeout)

    def go_online(self, timeout: float | None = 30.0) -> None:
        self._run(self._client.go_online(), timeout)

    def wait_synced(self, timeout: float | None = None) -> Status:
        """Block until online with an empty outbox and every cart in sync.

        ``TimeoutError`` (saying what is missing) after ``timeout`` seconds; at once ``AuthRequired``,
        ``ClientStopped``, ``OutboxStalled`` or ``ClientClosed`` when the client cannot get there by itself.
        """
        return self._run(self._client.wait_synced(timeout), None)

    def status_changes(self, timeout: float | None = None) -> Iterator[Status]:
        """The current status, then each change (merged while the reader is busy); stops after ``timeout``
        seconds without one, or when the client closes."""
        return _drain(self, self._client.status_changes, timeout)

    def set_token(self, token: str | TokenProvider) -> None:
        """Use ``token`` from the next connection on; a client in ``auth_required`` connects again at once."""
        self._call(lambda: self._client.set_token(token))

    def op(self, seq: int, timeout: float | None = 30.0) -> OpHandleSync:
        """A handle for op ``seq`` made before (a restart, a crash): see :meth:`SyncClient.op`."""
        return OpHandleSync(self, self._run(self._client.op(seq), timeout))

    def pending_ops(self, timeout: float | None = 30.0) -> list[OpHandleSync]:
        """A handle for every op still in the outbox, oldest first."""
        return [OpHandleSync(self, h) for h in self._run(self._client.pending_ops(), timeout)]

    def as_completed(
        self, handles: Iterable[OpHandleSync], timeout: float | None = None
    ) -> Iterator[OpHandleSync]:
        """Each handle as soon as its ``result()`` returns or raises without waiting (acked, rejected, or the
        client stopped), in one thread; ``TimeoutError`` when ``timeout`` seconds pass before all are."""
        handles = list(handles)
        done: queue.Queue[OpHandleSync] = queue.Queue()

        async def watch(handle: OpHandleSync) -> None:
            with contextlib.suppress(Exception):  # an outcome either way: result() reports it
                await handle._handle.acked()
            done.put(handle)

        tasks = self._call(lambda: [self._loop.create_task(watch(h)) for h in handles])
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            for count in range(len(handles)):
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    yield done.get(timeout=left)
                except queue.Empty:
                    raise TimeoutError(
                        f"{len(handles) - count} of {len(handles)} ops got no outcome within {timeout} s"
                    ) from None
        finally:
            for task in tasks:
                with contextlib.suppress(RuntimeError):  # the loop is closed: nothing left to cancel
                    self._loop.call_soon_threadsafe(task.cancel)

    def wait(
        self, handles: Iterable[OpHandleSync], timeout: float | None = None
    ) -> tuple[list[OpHandleSync], list[OpHandleSync]]:
        """``(done, not_done)`` once every handle has its outcome or ``timeout`` seconds have passed, as
        ``concurrent.futures.wait`` does: POS code waits for a whole sale's ops without a thread per op."""
        handles = list(handles)
        done: list[OpHandleSync] = []
        with contextlib.suppress(TimeoutError):
            done.extend(self.as_completed(handles, timeout))
        return done, [h for h in handles if h not in done]

    def rejections(self, timeout: float | None = 30.0) -> list[Rejection]:
        """Rejections not yet marked seen, oldest first."""
        return self._run(self._client.pending_rejections(), timeout)

    def mark_seen(self, *rejections: Rejection | int, timeout: float | None = 30.0) -> None:
        self._run(self._client.mark_seen(*rejections), timeout)

    # -- plumbing ---------------------------------------------------------------------------------------

    def _check_thread(self) -> None:
        if threading.current_thread() is self._thread:
            raise RuntimeError(
                "SyncClientSync called from its own event loop thread: use the async API there"
            )

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None, what: str = "the call") -> T:
        """``coro``'s result on the loop. A ``TimeoutError`` the coroutine raises itself passes through with
        its own message; waiting longer than ``timeout`` raises one naming ``what`` and the ``timeout``."""
        self._check_thread()
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        with contextlib.suppress(concurrent.futures.TimeoutError):  # the builtin TimeoutError since 3.11
            future.result(timeout)
        if future.done():
            return future.result()  # the result, or the coroutine's own exception
        future.cancel()
        raise TimeoutError(f"{what} got no answer within {timeout} s")

    def _call(self, fn: Callable[[], T]) -> T:
        """Run a plain function on the loop thread (reads of the engine's state are consistent there)."""
        self._check_thread()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return future.result()


class OpHandleSync:
    """A blocking view of an :class:`~clients.OpHandle`."""

    def __init__(self, owner: SyncClientSync, handle: OpHandle) -> None:
        self._owner = owner
        self._handle = handle
        self.seq = handle.seq
        self.kind = handle.kind

    def __repr__(self) -> str:
        return repr(self._handle)

    def done(self) -> bool:
        return self._owner._call(self._handle.done)

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """The hub's result; raises :class:`~protocol.errors.OpRejected`, at once the error that stops the
        client (``AuthRequired``, ``ClientStopped``, …), or ``TimeoutError`` after ``timeout`` seconds."""
        return self._owner._run(self._handle.acked(), timeout, f"op {self.seq} ({self.kind})")


class CartSync:
    """A blocking view of a :class:`~clients.Cart`."""

    def __init__(self, owner: SyncClientSync, cart: Cart) -> None:
        self._owner = owner
        self._cart = cart
        self.member = cart.member

    def add(
        self, sku: str, qty: int = 1, attrs: Attrs | None = None, *, timeout: float | None = 30.0
    ) -> OpHandleSync:
        return self._op(self._cart.add(sku, qty, attrs), timeout)

    def set(
        self, sku: str, qty: int, attrs: Attrs | None = None, *, timeout: float | None = 30.0
    ) -> OpHandleSync:
        return self._op(self._cart.set(sku, qty, attrs), timeout)

    def remove(self, sku: str, *, timeout: float | None = 30.0) -> OpHandleSync:
        return self._op(self._cart.remove(sku), timeout)

    def clear(self, *, timeout: float | None = 30.0) -> OpHandleSync:
        return self._op(self._cart.clear(), timeout)

    def _op(self, coro: Coroutine[Any, Any, OpHandle], timeout: float | None) -> OpHandleSync:
        return OpHandleSync(self._owner, self._owner._run(coro, timeout))

    @property
    def lines(self) -> Mapping[str, CartLine]:
        return self._owner._call(lambda: self._cart.lines)

    @property
    def state(self) -> CartState:
        return self._owner._call(lambda: self._cart.state)

    def line(self, sku: str) -> CartLine | None:
        return self._owner._call(lambda: self._cart.line(sku))

    @property
    def has_pending_writes(self) -> bool:
        return self._owner._call(lambda: self._cart.has_pending_writes)

    @property
    def from_cache(self) -> bool:
        return self._owner._call(lambda: self._cart.from_cache)

    @property
    def sold_out(self) -> frozenset[str]:
        """Lines whose SKU has nothing left to promise online (``follow_stock``; ``Cart.sold_out``)."""
        return self._owner._call(lambda: self._cart.sold_out)

    def changes(self, timeout: float | None = None) -> Iterator[CartChange]:
        """Changes from now on; stops after ``timeout`` seconds without one, or when the client closes.

        Registered on the client's loop before this returns, so a change made right after is not missed.
        """
        return _drain(self._owner, self._cart.changes, timeout)


class StockSync:
    """A blocking view of a :class:`~clients.Stock`: the same ops and reads, each returning when the async
    one does (an op after its local commit, or at once refused: ``unavailable``, ``allotment_exceeded``)."""

    def __init__(self, owner: SyncClientSync, stock: Stock) -> None:
        self._owner = owner
        self._stock = stock
        self.sku = stock.sku

    def reserve(
        self,
        member: str,
        qty: int,
        *,
        timeout: float | None = 30.0,
        channel: str,
        ttl_ms: int | None = None,
        until: int | str | None = None,
    ) -> OpHandleSync:
        return self._op(
            self._stock.reserve(member, qty, channel=channel, ttl_ms=ttl_ms, until=until), timeout
        )

    def commit(self, member: str, rid: str, *, timeout: float | None = 30.0) -> OpHandleSync:
        return self._op(self._stock.commit(member, rid), timeout)

    def release(self, member: str, rid: str, *, timeout: float | None = 30.0) -> OpHandleSync:
        return self._op(self._stock.release(member, rid), timeout)

    def sell(self, member: str, qty: int, *, store: str, timeout: float | None = 30.0) -> OpHandleSync:
        return self._op(self._stock.sell(member, qty, store=store), timeout)

    def _op(self, coro: Coroutine[Any, Any, OpHandle], timeout: float | None) -> OpHandleSync:
        return OpHandleSync(self._owner, self._owner._run(coro, timeout))

    @property
    def state(self) -> StockState:
        return self._owner._call(lambda: self._stock.state)

    def allotment(self, store: str) -> int:
        return self._owner._call(lambda: self._stock.allotment(store))

    @property
    def error(self) -> SyncError | None:
        return self._owner._call(lambda: self._stock.error)

    def changes(self, timeout: float | None = None) -> Iterator[StockChange]:
        """Changes from now on; stops after ``timeout`` seconds without one, or when the client closes."""
        return _drain(self._owner, self._stock.changes, timeout)

    def unsubscribe(self, timeout: float | None = 30.0) -> None:
        self._owner._run(self._stock.unsubscribe(), timeout)


def _drain(
    owner: SyncClientSync, source: Callable[[], AsyncIterator[T]], timeout: float | None
) -> Iterator[T]:
    """The items of an async iterator of the client's loop, in this thread: ``source()`` runs on the loop
    before this returns (so nothing after the call is missed); the iteration stops after ``timeout`` seconds
    without an item, or when the source ends."""
    items: queue.Queue[object] = queue.Queue()

    async def pump(iterator: AsyncIterator[T]) -> None:
        try:
            async for item in iterator:
                items.put(item)
        finally:
            items.put(_END)

    task = owner._call(lambda: owner._loop.create_task(pump(source())))
    return _items(owner, items, task, timeout)


def _items(
    owner: SyncClientSync, items: queue.Queue[object], task: asyncio.Task[None], timeout: float | None
) -> Iterator[T]:
    try:
        while True:
            try:
                item = items.get(timeout=timeout)
            except queue.Empty:
                return
            if item is _END:
                return
            yield item  # type: ignore[misc]  # put by pump(), typed T there
    finally:
        with contextlib.suppress(RuntimeError):
            owner._loop.call_soon_threadsafe(task.cancel)
