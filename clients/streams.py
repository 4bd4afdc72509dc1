"""What the application iterates over: merged cart changes and rejections, each stream bounded.

A slow reader never holds the sync back: a change stream keeps at most one notification waiting, into which
later changes merge (skus united, the latest cause and origin, the last few conflicts); a rejection stream
offers each rejection once.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import weakref
from collections.abc import Callable
from typing import Final, Generic, TypeVar

from clients.engine import ChangeCause, OpSettled, TopicChanged
from clients.models import CartConflict, Rejection, from_ms

__all__ = ["ChangeStream", "Changes", "PendingChange", "RejectionStream", "rejection_of"]

_MAX_CONFLICTS: Final = 16
C = TypeVar("C")


@dataclasses.dataclass(slots=True)
class PendingChange:
    cause: ChangeCause
    skus: set[str] | None
    origin: tuple[str, int] | None
    conflicts: list[CartConflict]
    kind: str | None
    stock: bool = False
    """A sold-out change is merged in (the cart makes it a ``SoldOut``)."""


class ChangeStream:
    """One ``changes()`` iterator: at most one merged notification waiting, so a slow reader costs nothing."""

    def __init__(self) -> None:
        self.pending: PendingChange | None = None
        self.ready = asyncio.Event()
        self.closed = False

    def push(self, change: TopicChanged, conflict: CartConflict | None) -> None:
        origin = (change.origin.client_id, change.origin.seq) if change.origin is not None else None
        p = self.pending
        if p is None:
            skus = None if change.skus is None else set(change.skus)
            self.pending = PendingChange(change.cause, skus, origin, [], change.kind)
            p = self.pending
        else:
            p.cause = change.cause
            p.origin = origin or p.origin
            p.kind = change.kind or p.kind
            if p.skus is not None:
                if change.skus is None:
                    p.skus = None
                else:
                    p.skus.update(change.skus)
        p.stock = p.stock or change.cause is ChangeCause.STOCK
        if conflict is not None:
            p.conflicts.append(conflict)
            del p.conflicts[:-_MAX_CONFLICTS]
        self.ready.set()

    def close(self) -> None:
        self.closed = True
        self.ready.set()


class Changes(Generic[C]):
    """The async iterator of :meth:`Cart.changes <clients.Cart.changes>` (and ``Stock.changes``): registered
    with the handle's streams when made, so a change right after the call is not missed; ``make`` turns a
    merged notification into the change the application sees (a :class:`~clients.models.CartChange`, a
    ``StockChange``)."""

    def __init__(self, streams: weakref.WeakSet[ChangeStream], make: Callable[[PendingChange], C]) -> None:
        self._streams = streams
        self._make = make
        self._stream = ChangeStream()
        streams.add(self._stream)

    def __aiter__(self) -> Changes[C]:
        return self

    async def __anext__(self) -> C:
        stream = self._stream
        while True:
            pending, stream.pending = stream.pending, None
            if pending is not None:
                return self._make(pending)
            if stream.closed:
                raise StopAsyncIteration
            stream.ready.clear()
            await stream.ready.wait()

    async def aclose(self) -> None:
        self._stream.close()
        self._streams.discard(self._stream)


class RejectionStream:
    """One ``rejections()`` iterator: each rejection offered once, stored ones and new ones alike."""

    def __init__(self) -> None:
        self._items: collections.deque[Rejection] = collections.deque()
        self._seen: set[int] = set()
        self._ready = asyncio.Event()
        self._closed = False

    def offer(self, rejection: Rejection) -> None:
        if rejection.seq not in self._seen:
            self._seen.add(rejection.seq)
            self._items.append(rejection)
            self._ready.set()

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    async def next(self) -> Rejection | None:
        while not self._items:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()


def rejection_of(settled: OpSettled) -> Rejection:
    """The application's view of an op the hub settled with a rejection."""
    made, at = from_ms(settled.op.ts), from_ms(settled.at)
    assert made is not None and at is not None
    return Rejection(
        seq=settled.op.seq,
        kind=settled.op.kind,
        args=dict(settled.op.args),
        code=settled.code or "rejected",
        message=settled.message,
        result=settled.result,
        made_at=made,
        rejected_at=at,
    )
