"""One SKU's stock on this device: its local view and its public handle, :class:`Stock`
(``client.stock(sku)``).

Stock is not mergeable, so the view predicts only what cannot be refused: a till's own sales from its
store's allotment. ``stock.sell`` is the one stock op that may be made offline, and only within the
allotment as last synced minus this device's sales not yet reflected in it; beyond that the SDK refuses it
at the call site (``allotment_exceeded``), so a sale replayed later always fits. Every other stock op needs
the hub's answer (a reservation is atomic against the pool, quotas and purchase limits that only the hub
sees) and is refused while offline (``unavailable``): nothing is stored then.

Those ops are shown once the hub has applied them: from their ack until the hub's state shows them (the ack
may come before the event that carries the change, PROTOCOL.md §7.2), the view applies them on top, as the
cart view keeps an op until its event reflects it. So ``state`` never shows an acked sale undone.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Final, NamedTuple

from clients.errors import SubscriptionRefused
from clients.events import ChangeCause, TopicChanged, TopicRecord
from clients.handles import OpHandle
from clients.models import CartConflict
from clients.streams import Changes, ChangeStream, PendingChange
from clients.types.base import LocalView
from protocol import frames
from protocol import stock as rules
from protocol.datatype import DataType
from protocol.errors import ErrorCode, OpRejected, SyncError
from protocol.types.stock import STOCK

if TYPE_CHECKING:
    from clients.client import SyncClient

_EMPTY: dict[str, Any] = {"on_hand": 0, "pool": 0, "sold": 0, "atp": {"*": 0}, "allot": {}}
_MAX_HOLDS: Final = 4096
"""Reservations this device made that the view remembers (rid -> size), to show their commit or release
between its ack and its event; beyond it the oldest are forgotten (their commit then waits for the event)."""


class StockView(LocalView):
    """The hub's view of one SKU (on hand, pool, sold, available to promise per channel, allotments) with
    our unreflected sales taken from their store's allotment."""

    __slots__ = ("_acked", "_holds", "_sales", "server", "sku")

    datatype: ClassVar[DataType] = STOCK
    offline_ops: ClassVar[frozenset[str]] = frozenset({rules.SELL})
    shows_when_acked: ClassVar[bool] = True

    def __init__(self, record: TopicRecord, me: str) -> None:
        super().__init__(record, me)
        self.sku = record.topic.partition(":")[2]
        self.server: dict[str, Any] = dict(record.state) if record.state is not None else dict(_EMPTY)
        # seq -> (store, qty, sold) of our sales (sold) and yields not reflected: both leave the allotment
        self._sales: dict[int, tuple[str, int, bool]] = {}
        self._acked: dict[
            int, _Effect
        ] = {}  # seq -> effect of our acked reserve/commit/release not reflected
        self._holds: dict[str, tuple[int, str]] = {}  # rid -> (qty, channel) of reservations we made

    def record(self) -> TopicRecord:
        return TopicRecord(self.topic, self.server if self.has_state else None, self.cursor, self.reflected)

    def add_op(self, op: frames.Op) -> None:
        if op.kind in (rules.SELL, rules.YIELD) and op.seq > self.reflected:
            # A yield counts in full until reflected (the hub may move less): a sale made after it must fit
            # what is left even if all of it moves.
            self._sales[op.seq] = (op.args["store"], op.args["qty"], op.kind == rules.SELL)
        elif op.kind == rules.RESERVE:  # its rid is ours to know: "<client_id>/<seq>" (PROTOCOL.md §18)
            self._holds[f"{self._me}/{op.seq}"] = (op.args["qty"], op.args["channel"])
            while len(self._holds) > _MAX_HOLDS:  # forget the oldest (long expired, most likely)
                del self._holds[next(iter(self._holds))]

    def remove(self, seq: int) -> frozenset[str] | None:
        self._sales.pop(seq, None)
        self._acked.pop(seq, None)
        self._holds.pop(f"{self._me}/{seq}", None)
        return None

    def reflect(self, upto: int) -> frozenset[str] | None:
        if upto <= self.reflected:
            return frozenset()
        self.reflected = upto
        for seq in [s for s in self._sales if s <= upto]:
            del self._sales[seq]
        for seq in [s for s in self._acked if s <= upto]:
            del self._acked[seq]
        return None

    def acked(self, op: frames.Op, result: Mapping[str, Any] | None) -> bool:
        """Show an applied reserve, commit or release until the hub's state does (docs: the module)."""
        args = op.args
        if op.kind == rules.RESERVE:
            self._acked[op.seq] = _Effect(rules.RESERVE, args["qty"], args["channel"])
            return True
        if op.kind in (rules.COMMIT, rules.RELEASE):
            hold = self._holds.pop(args["rid"], None)
            if hold is None:
                return False  # another device's reservation: its size is not known here
            self._acked[op.seq] = _Effect(op.kind, *hold)
            return True
        return False

    @property
    def has_pending_writes(self) -> bool:
        return bool(self._sales) or bool(self._acked)

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
        return frozenset((self.sku,))  # the SKU's one key: the engine tells the handle's readers

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
        if self._acked:
            atp = dict(out["atp"])
            for seq in sorted(self._acked):
                _shift(out, atp, self._acked[seq])
            out["atp"] = atp
        return out


class _Effect(NamedTuple):
    """An acked op of ours the hub's state does not show yet."""

    kind: str
    qty: int
    channel: str


def _shift(out: dict[str, Any], atp: dict[str, int], effect: _Effect) -> None:
    """``out`` (and its ``atp``) after ``effect``, from what the view shows: exact for the pool, on hand,
    sold and the op's own channel; another channel's ATP is capped by the new pool (a reservation) or kept
    (a release: its quota is not known here, so it is not promised more than the hub last said)."""
    qty, channel = effect.qty, effect.channel
    if effect.kind == rules.COMMIT:
        out["on_hand"] -= qty
        out["sold"] += qty
        return
    delta = -qty if effect.kind == rules.RESERVE else qty
    out["pool"] += delta
    for each in atp:
        if each == channel:
            atp[each] = max(0, atp[each] + delta)
        elif delta < 0:
            atp[each] = min(atp[each], out["pool"])
    atp["*"] = out["pool"]


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


@dataclasses.dataclass(frozen=True, slots=True)
class StockChange:
    """The SKU's stock changed (as :class:`~clients.models.CartChange` for a cart). ``state`` is the stock as
    shown now; ``cause`` a hub event, a (reset) snapshot, an op of ours the hub applied (``acked``) or one it
    rejected; ``origin`` the ``(client_id, seq)`` of the op behind a hub event (none for an expiry sweep);
    ``kind`` the op or event kind (``stock.reserve``, ``stock.expire``, …). Changes the application reads
    slower than they happen are merged into one (the latest state)."""

    sku: str
    cause: ChangeCause
    state: StockState
    origin: tuple[str, int] | None = None
    kind: str | None = None


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
        self._streams: weakref.WeakSet[ChangeStream] = weakref.WeakSet()  # an abandoned iterator drops out

    def __repr__(self) -> str:
        return f"<Stock {self.sku}>"

    async def reserve(
        self,
        member: str,
        qty: int,
        *,
        channel: str,
        ttl_ms: int | None = None,
        until: int | str | None = None,
    ) -> OpHandle:
        """Hold ``qty`` for ``member`` through ``channel``: for ``ttl_ms``, or ``until`` a Unix ms instant or
        ``"clearing"`` (the brand's next daily clearing; PROTOCOL.md §18); the reservation id is the ack's
        ``result["rid"]``, its expiry ``result["until"]``."""
        args: dict[str, Any] = {"member": member, "channel": channel, "qty": qty}
        if ttl_ms is not None:
            args["ttl_ms"] = ttl_ms
        if until is not None:
            args["until"] = until
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

    def changes(self) -> Changes[StockChange]:
        """Each change of this SKU's stock from the moment of this call, merged while the reader is busy.

        Registered at once (not at the first ``anext``), so a change right after this call is never missed.
        It ends when the client closes; ``aclose()`` it to stop earlier.
        """
        return Changes(self._streams, self._change)

    def _change(self, p: PendingChange) -> StockChange:
        return StockChange(sku=self.sku, cause=p.cause, state=self.state, origin=p.origin, kind=p.kind)

    def _notify(self, change: TopicChanged) -> CartConflict | None:
        for stream in list(self._streams):
            stream.push(change, None)
        return None

    def _close(self) -> None:
        for stream in list(self._streams):
            stream.close()

    async def unsubscribe(self) -> None:
        """Stop syncing this SKU and drop its cached state (ops already made are still delivered)."""
        await self._client._unsubscribe(self)
