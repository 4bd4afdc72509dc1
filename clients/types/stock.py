"""One SKU's stock on this device: its local view and its public handle, :class:`Stock`
(``client.stock(sku)``).

Stock is not mergeable, so the view predicts only what cannot be refused: a till's own sales from its
store's allotment. ``stock.sell`` is the one stock op that may be made offline, and only within the
allotment as last synced minus this device's sales not yet reflected in it; beyond that the SDK refuses it
at the call site (``allotment_exceeded``), so a sale replayed later always fits. Every other stock op needs
the hub's answer (a reservation is atomic against the pool, quotas and purchase limits that only the hub
sees) and is refused while offline (``unavailable``): nothing is stored then.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from clients.errors import SubscriptionRefused
from clients.events import TopicChanged, TopicRecord
from clients.handles import OpHandle
from clients.models import CartConflict
from clients.types.base import LocalView
from protocol import frames
from protocol import stock as rules
from protocol.datatype import DataType
from protocol.errors import ErrorCode, OpRejected, SyncError
from protocol.types.stock import STOCK

if TYPE_CHECKING:
    from clients.client import SyncClient

_EMPTY: dict[str, Any] = {"on_hand": 0, "pool": 0, "sold": 0, "atp": {"*": 0}, "allot": {}}


class StockView(LocalView):
    """The hub's view of one SKU (on hand, pool, sold, available to promise per channel, allotments) with
    our unreflected sales taken from their store's allotment."""

    __slots__ = ("_sales", "server", "sku")

    datatype: ClassVar[DataType] = STOCK
    offline_ops: ClassVar[frozenset[str]] = frozenset({rules.SELL})

    def __init__(self, record: TopicRecord, me: str) -> None:
        super().__init__(record, me)
        self.sku = record.topic.partition(":")[2]
        self.server: dict[str, Any] = dict(record.state) if record.state is not None else dict(_EMPTY)
        # seq -> (store, qty, sold) of our sales (sold) and yields not reflected: both leave the allotment
        self._sales: dict[int, tuple[str, int, bool]] = {}

    def record(self) -> TopicRecord:
        return TopicRecord(self.topic, self.server if self.has_state else None, self.cursor, self.reflected)

    def add_op(self, op: frames.Op) -> None:
        if op.kind in (rules.SELL, rules.YIELD) and op.seq > self.reflected:
            # A yield counts in full until reflected (the hub may move less): a sale made after it must fit
            # what is left even if all of it moves.
            self._sales[op.seq] = (op.args["store"], op.args["qty"], op.kind == rules.SELL)

    def remove(self, seq: int) -> frozenset[str] | None:
        self._sales.pop(seq, None)
        return None

    def reflect(self, upto: int) -> frozenset[str] | None:
        if upto <= self.reflected:
            return frozenset()
        self.reflected = upto
        for seq in [s for s in self._sales if s <= upto]:
            del self._sales[seq]
        return None

    @property
    def has_pending_writes(self) -> bool:
        return bool(self._sales)

    def stamp(self, kind: str, args: dict[str, Any]) -> dict[str, int] | None:
        if kind == rules.SELL and args["qty"] > self.allotment(args["store"]):
            raise OpRejected(
                ErrorCode.ALLOTMENT_EXCEEDED,
                f"store {args['store']} has {self.allotment(args['store'])} of {self.sku} left to sell",
            )
        return None

    @staticmethod
    def keys_of(op: frames.Op) -> frozenset[str] | None:
        return None

    def replace(self, state: Mapping[str, Any]) -> None:
        self.server = dict(state)
        self.has_state = True

    def apply_data(self, data: Mapping[str, Any]) -> frozenset[str]:
        self.server = dict(data)
        return frozenset()

    def allotment(self, store: str) -> int:
        """What ``store``'s tills may still sell: its allotment as last synced minus our unreflected sales."""
        own = sum(qty for s, qty, _ in self._sales.values() if s == store)
        return int(self.server["allot"].get(store, 0)) - own

    def view(self) -> dict[str, Any]:
        """The server's view with our unreflected sales applied."""
        out = dict(self.server)
        allot = dict(out["allot"])
        for store, qty, sold in self._sales.values():
            allot[store] = allot.get(store, 0) - qty
            if sold:
                out["on_hand"] -= qty
                out["sold"] += qty
        out["allot"] = allot
        return out


@dataclasses.dataclass(frozen=True, slots=True)
class StockState:
    """One SKU as this device shows it, read at once."""

    sku: str
    on_hand: int
    pool: int
    sold: int
    atp: dict[str, int]
    """Available to promise per channel; ``"*"`` for channels without a quota."""
    allot: dict[str, int]
    from_cache: bool
    has_pending_writes: bool


class Stock:
    """One SKU's stock, and the ops on it. Get one with ``client.stock(sku)``.

    ``reserve`` / ``commit`` / ``release`` need the hub (refused offline with ``unavailable``); ``sell`` may
    be made offline within the store's allotment (refused beyond it with ``allotment_exceeded``). Each
    returns an :class:`OpHandle`; a reservation's id is its result's ``rid``.
    """

    def __init__(self, client: SyncClient, sku: str) -> None:
        self._client = client
        self.sku = sku
        self.topic = f"stock:{sku}"

    def __repr__(self) -> str:
        return f"<Stock {self.sku}>"

    async def reserve(self, member: str, qty: int, *, channel: str, ttl_ms: int) -> OpHandle:
        """Hold ``qty`` for ``member`` through ``channel`` for ``ttl_ms``; the reservation id is the ack's
        ``result["rid"]``."""
        args = {"member": member, "channel": channel, "qty": qty, "ttl_ms": ttl_ms}
        return await self._submit(rules.RESERVE, args)

    async def commit(self, member: str, rid: str) -> OpHandle:
        """Sell the reservation ``rid`` (refused once it expired: ``reservation_expired``)."""
        return await self._submit(rules.COMMIT, {"member": member, "rid": rid})

    async def release(self, member: str, rid: str) -> OpHandle:
        """Return the reservation ``rid`` to the pool."""
        return await self._submit(rules.RELEASE, {"member": member, "rid": rid})

    async def sell(self, member: str, qty: int, *, store: str) -> OpHandle:
        """A till's sale from ``store``'s allotment; may be made offline, within the allotment."""
        return await self._submit(rules.SELL, {"member": member, "store": store, "qty": qty})

    async def _submit(self, kind: str, args: dict[str, Any]) -> OpHandle:
        if self._client._topic_handles.get(self.topic) is not self:
            raise ValueError(f"{self.topic} was unsubscribed: get it again with client.stock()")
        if kind not in StockView.offline_ops and not self._client._engine.is_open:
            raise OpRejected(ErrorCode.UNAVAILABLE, f"{kind} needs the hub: it is not made offline")
        return await self._client._submit(kind, {"sku": self.sku, **args})

    @property
    def _view(self) -> StockView:
        view = self._client._engine.view(self.topic)
        if not isinstance(view, StockView):
            raise SubscriptionRefused(self.topic, "unsubscribed", "this stock was unsubscribed")
        return view

    @property
    def state(self) -> StockState:
        view = self._view
        shown = view.view()
        return StockState(
            sku=self.sku,
            on_hand=int(shown["on_hand"]),
            pool=int(shown["pool"]),
            sold=int(shown["sold"]),
            atp=dict(shown["atp"]),
            allot=dict(shown["allot"]),
            from_cache=not (self._client._engine.is_open and view.synced),
            has_pending_writes=view.has_pending_writes,
        )

    def allotment(self, store: str) -> int:
        """What ``store``'s tills may still sell of this SKU, as this device knows it."""
        return self._view.allotment(store)

    @property
    def error(self) -> SyncError | None:
        return self._view.error

    def _notify(self, change: TopicChanged) -> CartConflict | None:
        return None

    def _close(self) -> None:
        return None

    async def unsubscribe(self) -> None:
        """Stop syncing this SKU and drop its cached state (ops already made are still delivered)."""
        await self._client._unsubscribe(self)
