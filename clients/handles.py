"""Op handles and what makes their waiters give up: the client's :class:`Gate`.

An :class:`OpHandle` is how the application hears the outcome of one op. Its waiters (``await op.acked()``,
the blocking ``result()``, ``wait_synced()``) wait for one of two things: the hub's outcome, or the client
reaching a state from which it cannot make progress without the application or a person (a refused
token, a protocol version the hub refuses, an outbox the hub's history does not match, a closed client).
The second is the gate: when it closes, every waiter fails at once with the typed error that closed it,
instead of hanging; the op itself stays in the outbox, and a waiter that asks again after the cause is
removed (``set_token``, ``go_online``) waits for the real outcome.

Handles can also be made for ops the application no longer holds a handle for — after a crash or a
restart — from the outbox and the stored rejections (:func:`handle_for`, :func:`handles_for_pending`), so a
till can tell the cashier whether sale N went through.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from clients.models import from_ms
from protocol import frames
from protocol.errors import OpRejected, SyncError

if TYPE_CHECKING:
    from clients.store import SQLiteOutbox

__all__ = ["CompositeHandle", "Gate", "OpHandle", "handle_for", "handles_for_pending"]

Maker: TypeAlias = Callable[[int, str, "int | None"], "OpHandle"]
"""``make(seq, kind, made_ms)``: the client's live handle for the op, or a new one it registers."""
Flush: TypeAlias = Callable[[], Awaitable[None]]
"""Writes the client's settlements so far to the store."""
_PAGE: Final = 1024


class Gate:
    """Open while the client can make progress by itself; closed with the error that says why it cannot.

    Waiters (:meth:`wait`) fail at once while it is closed and as soon as it closes. Reopening it lets new
    waits go on; the failed ones have already told their callers why.
    """

    __slots__ = ("_tripped", "error")

    def __init__(self) -> None:
        self.error: SyncError | None = None
        self._tripped: asyncio.Future[None] | None = None

    def close(self, error: SyncError) -> None:
        self.error = error
        tripped, self._tripped = self._tripped, None
        if tripped is not None and not tripped.done():
            tripped.set_result(None)

    def open(self) -> None:
        self.error = None

    async def wait(self, done: asyncio.Event | asyncio.Future[None]) -> None:
        """Until ``done`` is set, or raise the gate's error (at once if it is already closed)."""
        is_done = done.is_set if isinstance(done, asyncio.Event) else done.done
        while not is_done():
            if self.error is not None:
                raise self.error
            if self._tripped is None:
                self._tripped = asyncio.get_running_loop().create_future()
            waiter = asyncio.ensure_future(done.wait()) if isinstance(done, asyncio.Event) else done
            try:
                await asyncio.wait({waiter, self._tripped}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if waiter is not done:
                    waiter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await waiter


class OpHandle:
    """An op made by this client: already stored locally and shown in its cart; ``await acked()`` for the hub.

    The handle may be dropped: the op is in the outbox either way and is sent until the hub settles it. Get a
    handle again with ``client.op(seq)`` or ``client.pending_ops()``, after a restart too.
    """

    __slots__ = ("__weakref__", "_done", "_error", "_gate", "_result", "kind", "made_at", "seq")

    def __init__(self, seq: int, kind: str, made_ms: int | None, gate: Gate) -> None:
        self.seq = seq
        self.kind = kind
        self.made_at = from_ms(made_ms)
        self._gate = gate
        self._done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._result: dict[str, Any] | None = None
        self._error: SyncError | None = None

    @classmethod
    def of(cls, op: frames.Op, gate: Gate) -> OpHandle:
        return cls(op.seq, op.kind, op.ts, gate)

    def __repr__(self) -> str:
        state = "pending" if not self.done() else ("rejected" if self._error else "acked")
        return f"<OpHandle seq={self.seq} {self.kind} {state}>"

    def done(self) -> bool:
        """Whether the hub's outcome is known."""
        return self._done.done()

    async def acked(self) -> dict[str, Any]:
        """The op's result once the hub applied it (``{"qty": n}`` for cart line ops; ``{}`` when it was
        applied before this handle was made, e.g. before a restart: results are not stored).

        Raises :class:`~protocol.errors.OpRejected` if the hub rejected it (a stored rejection). Raises at
        once, the op staying in the outbox, when the client cannot make progress: ``AuthRequired`` (a new
        token is needed), ``ClientStopped`` (a person must act), ``OutboxStalled``, or ``ClientClosed``.
        """
        await self._gate.wait(self._done)
        if self._error is not None:
            raise self._error
        return dict(self._result or {})

    def _settle(self, result: dict[str, Any] | None, error: SyncError | None) -> None:
        if not self._done.done():
            self._result, self._error = result, error
            self._done.set_result(None)


class CompositeHandle(OpHandle):
    """A ``clear`` sent as one ``remove`` per line: its context would exceed the protocol's 256 entries.

    ``acked()`` gives ``{"lines": n}``, the number of the cleared lines that survived (adds this device had
    not seen), and raises the first rejection if any part was rejected.
    """

    __slots__ = ("_parts",)

    def __init__(self, parts: list[OpHandle], gate: Gate) -> None:
        last = parts[-1]
        super().__init__(last.seq, "cart.clear", None, gate)
        self.made_at = last.made_at
        self._parts = parts

    def done(self) -> bool:
        return all(p.done() for p in self._parts)

    async def acked(self) -> dict[str, Any]:
        results = [await p.acked() for p in self._parts]
        return {"lines": sum(1 for r in results if r.get("qty", 0) > 0)}


async def handle_for(seq: int, store: SQLiteOutbox, flush: Flush, make: Maker) -> OpHandle:
    """A handle for op ``seq``, made before this call (a crash, a restart, a dropped handle).

    An op still in the outbox gets a pending handle (the live one if the client has it); a rejected one a
    handle that raises its :class:`~protocol.errors.OpRejected`; an applied one a handle whose result is
    ``{}`` (results are not stored; an op no longer in the outbox was applied, since rejections are kept).
    The caller checks that ``seq`` was issued.
    """
    handle = make(seq, "", None)  # registered first: an outcome arriving from now on settles it
    await flush()  # and one that came before is in the store
    await _settle_from_store(handle, store)
    return handle


async def handles_for_pending(store: SQLiteOutbox, flush: Flush, make: Maker) -> list[OpHandle]:
    """A handle for every op still in the outbox, oldest first (live ones where the client has them).

    Read in pages; each page's handles are registered before the settlements so far are flushed and the
    page checked again, so an op settled while it was read is not left with a handle that never settles.
    """
    handles: list[OpHandle] = []
    after = 0
    while True:
        await flush()
        ops = await store.load_pending(after, _PAGE)
        if not ops:
            return handles
        page = [make(op.seq, op.kind, op.ts) for op in ops]
        await flush()
        still = set(await store.pending_seqs(after, ops[-1].seq))
        for handle in page:
            if handle.seq not in still:
                await _settle_from_store(handle, store)
        handles += page
        after = ops[-1].seq


async def _settle_from_store(handle: OpHandle, store: SQLiteOutbox) -> None:
    record = await store.op_record(handle.seq)
    if record is not None:
        handle.kind = handle.kind or record.kind
        handle.made_at = handle.made_at or from_ms(record.made_ms)
    if record is None or record.state == "applied":
        handle._settle({}, None)
    elif record.state == "rejected":
        handle._settle(None, OpRejected(record.code or "rejected", record.message))
