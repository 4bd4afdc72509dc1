"""The cart on this device: its local view (the hub's lines with our pending ops predicted on top, by the
rules of :mod:`protocol.cart`) and its public handle, :class:`Cart` (``client.cart(member)``).

Every cart op may be made offline: the rules merge whatever the hub applied meanwhile (docs/cart-rules.md).
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
import sys
import weakref
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, TypeAlias

from clients.errors import SubscriptionRefused
from clients.events import ChangeCause, TopicChanged, TopicRecord
from clients.handles import CompositeHandle, OpHandle
from clients.models import CartChange, CartConflict, CartLine, CartState, SoldOut
from clients.streams import Changes, ChangeStream, PendingChange
from clients.types.base import MAX_CTX, LocalView
from clients.types.stock import StockView
from protocol import cart as rules
from protocol import frames
from protocol import vv as vvs
from protocol.datatype import DataType
from protocol.errors import SyncError
from protocol.types.cart import CART

if TYPE_CHECKING:
    from clients.client import SyncClient

Attrs: TypeAlias = Mapping[str, str | int | bool]


def _lines_of(state: Mapping[str, Any]) -> dict[str, rules.Line]:
    lines: dict[str, rules.Line] = dict(state["lines"])
    return lines


# --- prediction --------------------------------------------------------------------------------------------


class Pending(NamedTuple):
    """An overlay op in the few fields a prediction needs (compact: the outbox may hold 100,000)."""

    seq: int
    kind: str
    sku: str | None
    qty: int | None
    hlc: int
    ctx: Mapping[str, int] | None
    attrs: Mapping[str, Any] | None


def _pending_of(op: frames.Op) -> Pending:
    args = op.args
    sku = args.get("sku")
    qty = args.get("qty")
    return Pending(
        op.seq,
        sys.intern(op.kind),
        sys.intern(sku) if isinstance(sku, str) and op.kind != rules.CLEAR else None,
        qty if op.kind in (rules.ADD, rules.SET) else None,
        op.hlc,
        op.ctx,
        args.get("attrs") if op.kind in (rules.ADD, rules.SET) else None,
    )


def predict_line(line: rules.Line | None, sku: str, op: Pending, me: str) -> rules.Line | None:
    """``line`` after our op, by :func:`protocol.cart.predict` (no folding); runs of our adds merge into one.

    Merging is exact here: every later op of ours covers all our earlier dots (its ``ctx`` is the view), and
    quantity, vector, set winner and attrs do not depend on how our add-dots are split (see
    :func:`_merge_own_adds` for the one case where they would, which is not merged).
    """
    cart: rules.Cart = {"lines": {sku: line} if line is not None else {}, "folds": 0}
    cart_op = rules.CartOp(
        kind=op.kind,
        client_id=me,
        seq=op.seq,
        hlc=op.hlc,
        ctx=op.ctx or {},
        sku=None if op.kind == rules.CLEAR else sku,
        qty=op.qty,
        attrs=op.attrs,
    )
    # protocol.cart.apply would fold a line past 16 dots under a fold number the hub never issued.
    outcome = rules.predict(cart, cart_op)
    if outcome.rejected is not None:
        return line  # the hub will reject it too; a rejection changes nothing
    new = outcome.cart["lines"].get(sku)
    if new is None or op.kind != rules.ADD:
        return new
    return _merge_own_adds(new, me, op.seq)


def _merge_own_adds(line: rules.Line, me: str, seq: int) -> rules.Line:
    """Merge our add-dot ``seq`` with our previous live add-dot on the line, if any, into one dot.

    The merged dot is ``[me, seq, "a", sum, hlc of seq, attrs of seq?]``, at the place of ``seq``'s dot. Both
    are adds of ours, so the quantity, the vector (``seq`` is our greatest) and the set winner stay. The
    attrs stay too as long as ``seq``'s dot outranks the older one (a later hlc, as our clock gives) and
    carries attrs whenever the older one does: then the older dot's attrs never show while ``seq``'s dot
    is live. In the other case (older attrs, none now) the two dots are kept apart.
    """
    dots = line["dots"]
    new_at = old_at = -1
    for i, d in enumerate(dots):
        if d[0] == me and d[2] == rules.DOT_ADD:
            if d[1] == seq:
                new_at = i
            elif old_at < 0 or d[1] > dots[old_at][1]:
                old_at = i
    if old_at < 0 or new_at < 0:
        return line
    old, new = dots[old_at], dots[new_at]
    if new[4] < old[4] or (len(old) > 5 and len(new) <= 5):
        return line
    merged_dot = [me, seq, rules.DOT_ADD, old[3] + new[3], new[4], *new[5:6]]
    merged_dots = [merged_dot if i == new_at else d for i, d in enumerate(dots) if i != old_at]
    merged: rules.Line = {"qty": line["qty"], "vv": line["vv"], "dots": merged_dots}
    if "attrs" in line:
        merged["attrs"] = line["attrs"]
    return merged


class CartView(LocalView):
    """One cart topic: server state, cursor, overlay of our ops, and the predicted lines (cached per sku).

    Lines are recomputed lazily, per sku, from the server line and the overlay ops that touch it (plus every
    ``clear``), so an event costs work on the lines it changed only, and only when someone reads them.
    """

    __slots__ = ("_by_sku", "_cache", "_clears", "_order", "member", "ops", "server")

    datatype: ClassVar[DataType] = CART
    offline_ops: ClassVar[frozenset[str]] = rules.KINDS

    def __init__(self, record: TopicRecord, me: str) -> None:
        super().__init__(record, me)
        self.member = record.topic.partition(":")[2]
        self.server: dict[str, rules.Line] = _lines_of(record.state) if record.state is not None else {}
        self.ops: dict[int, Pending] = {}
        self._order: collections.deque[int] = collections.deque()  # overlay seqs, ascending (lazy deletes)
        self._by_sku: dict[str, collections.deque[Pending]] = {}
        self._clears: collections.deque[Pending] = collections.deque()
        self._cache: dict[str, rules.Line | None] = {}

    def record(self) -> TopicRecord:
        state = {"lines": self.server} if self.has_state else None
        return TopicRecord(self.topic, state, self.cursor, self.reflected)

    # -- overlay ------------------------------------------------------------------------------------------

    def add_op(self, op: frames.Op) -> None:
        self.add(_pending_of(op))

    def add(self, op: Pending) -> None:
        """Put our op, in its compact form, on top of the view (ops arrive in ascending ``seq``)."""
        if op.seq <= self.reflected or op.seq in self.ops:
            return
        self.ops[op.seq] = op
        self._order.append(op.seq)
        if op.sku is None:
            self._clears.append(op)
            for sku, line in list(self._cache.items()):
                self._cache[sku] = predict_line(line, sku, op, self._me)
        else:
            self._by_sku.setdefault(op.sku, collections.deque()).append(op)
            if op.sku in self._cache:
                self._cache[op.sku] = predict_line(self._cache[op.sku], op.sku, op, self._me)

    def remove(self, seq: int) -> frozenset[str] | None:
        """Withdraw one op (rejected or aborted); the skus whose lines may change (``None``: all)."""
        op = self.ops.pop(seq, None)
        if op is None:
            return frozenset()
        if op.sku is None:
            self._clears.remove(op)
            self._cache.clear()
            return None
        ops = self._by_sku[op.sku]
        ops.remove(op)
        if not ops:
            del self._by_sku[op.sku]
        self._cache.pop(op.sku, None)
        return frozenset((op.sku,))

    def reflect(self, upto: int) -> frozenset[str] | None:
        """The server state now shows our ops up to ``upto``: they leave the overlay."""
        if upto <= self.reflected:
            return frozenset()
        self.reflected = upto
        skus: set[str] = set()
        everything = False
        order = self._order
        while order and order[0] <= upto:
            op = self.ops.pop(order.popleft(), None)
            if op is None:
                continue  # removed earlier
            if op.sku is None:
                self._clears.popleft()
                everything = True
            else:
                ops = self._by_sku[op.sku]
                ops.popleft()
                if not ops:
                    del self._by_sku[op.sku]
                skus.add(op.sku)
        if everything:
            self._cache.clear()
            return None
        for sku in skus:
            self._cache.pop(sku, None)
        return frozenset(skus)

    # -- server state -------------------------------------------------------------------------------------

    def replace(self, state: Mapping[str, Any]) -> None:
        self.server = _lines_of(state)
        self.has_state = True
        self._cache.clear()

    def apply_data(self, data: Mapping[str, Any]) -> frozenset[str]:
        changed: Mapping[str, rules.Line | None] = data["lines"]
        for sku, line in changed.items():
            if line is None:
                self.server.pop(sku, None)
            else:
                self.server[sku] = line
            self._cache.pop(sku, None)
        return frozenset(changed)

    # -- reading ------------------------------------------------------------------------------------------

    def line(self, sku: str) -> rules.Line | None:
        try:
            return self._cache[sku]
        except KeyError:
            pass
        line = self.server.get(sku)
        own = self._by_sku.get(sku, ())
        ops: Iterable[Pending] = heapq.merge(own, self._clears) if self._clears else own
        for op in ops:
            line = predict_line(line, sku, op, self._me)
        self._cache[sku] = line
        return line

    def skus(self) -> set[str]:
        return set(self.server) | set(self._by_sku)

    def lines(self) -> dict[str, rules.Line]:
        out: dict[str, rules.Line] = {}
        for sku in sorted(self.skus()):
            line = self.line(sku)
            if line is not None:
                out[sku] = line
        return out

    def ctx_for(self, kind: str, sku: str | None) -> dict[str, int] | None:
        """The causal context of an op made now: what this device shows of its target."""
        if kind == rules.ADD:
            return None  # add removes nothing: the rules ignore its ctx
        if kind == rules.CLEAR:
            merged: dict[str, int] = {}
            for each in self.lines().values():
                merged = vvs.merge(merged, each["vv"])
            return merged
        assert sku is not None
        line = self.line(sku)
        return dict(line["vv"]) if line is not None else {}

    def stamp(self, kind: str, args: dict[str, Any]) -> dict[str, int] | None:
        ctx = self.ctx_for(kind, args.get("sku"))
        if kind == rules.SET and "attrs" not in args and args["qty"] > 0:
            # A set replaces the dots it saw, their attrs included (docs/cart-rules.md): without attrs of
            # its own it would drop the ones this device shows. Keep them, as seen with this ctx.
            shown = self.line(args["sku"])
            if shown is not None and shown.get("attrs"):
                args["attrs"] = dict(shown["attrs"])
        return ctx

    @staticmethod
    def keys_of(op: frames.Op) -> frozenset[str] | None:
        sku = op.args.get("sku")
        return frozenset((sku,)) if isinstance(sku, str) and op.kind != rules.CLEAR else None

    @property
    def has_pending_writes(self) -> bool:
        return bool(self.ops)


# --- the cart handle ---------------------------------------------------------------------------------------


class Cart:
    """A member's cart as this device shows it, and the ops that change it. Get one with ``client.cart()``.

    Every op returns after the local commit (the cart shows it at once, offline too) with an
    :class:`OpHandle`; it reaches the hub as soon as the client is online.
    """

    def __init__(self, client: SyncClient, member: str) -> None:
        self._client = client
        self.member = member
        self.topic = f"cart:{member}"
        self._streams: weakref.WeakSet[ChangeStream] = weakref.WeakSet()  # an abandoned iterator drops out
        self._sold_out: frozenset[str] = frozenset()  # as last told to the streams

    def __repr__(self) -> str:
        return f"<Cart {self.member} {len(self.lines)} lines>"

    # -- ops ------------------------------------------------------------------------------------------

    async def add(
        self, sku: str, qty: int = 1, attrs: Mapping[str, str | int | bool] | None = None
    ) -> OpHandle:
        """Add ``qty`` (1‥999) of ``sku``; concurrent adds from other devices all count."""
        return await self._client._submit("cart.add", self._args(sku=sku, qty=qty, attrs=attrs))

    async def set(self, sku: str, qty: int, attrs: Attrs | None = None) -> OpHandle:
        """Make the line ``qty`` (0‥9999; 0 removes it) over what this device shows of it.

        Without ``attrs`` the line keeps the attrs this device shows (they are sent along: a set replaces
        what it saw, attrs included); ``attrs={}`` clears them.
        """
        return await self._client._submit("cart.set", self._args(sku=sku, qty=qty, attrs=attrs))

    async def remove(self, sku: str) -> OpHandle:
        """Remove the line as this device shows it (adds it has not seen yet survive)."""
        return await self._client._submit("cart.remove", self._args(sku=sku))

    async def clear(self) -> OpHandle:
        """Remove every line as this device shows them."""
        view = self._view
        ctx = view.ctx_for("cart.clear", None) or {}
        if len(ctx) > MAX_CTX:  # more devices than one context may name: clear line by line
            parts = [await self._client._submit("cart.remove", self._args(sku=sku)) for sku in view.lines()]
            return CompositeHandle(parts, self._client._gate)
        return await self._client._submit("cart.clear", self._args())

    def _args(self, **args: Any) -> dict[str, Any]:
        if self._client._topic_handles.get(self.topic) is not self:
            raise ValueError(f"{self.topic} was unsubscribed: get the cart again with client.cart()")
        out: dict[str, Any] = {"member": self.member}
        for key, value in args.items():
            if value is not None:
                out[key] = dict(value) if key == "attrs" else value
        return out

    # -- reading --------------------------------------------------------------------------------------

    @property
    def _view(self) -> CartView:
        view = self._client._engine.view(self.topic)
        if not isinstance(view, CartView):
            raise SubscriptionRefused(self.topic, "unsubscribed", "this cart was unsubscribed")
        return view

    @property
    def lines(self) -> dict[str, CartLine]:
        """Every line, by sku: the hub's state with this device's pending ops applied."""
        return {sku: _line(sku, line) for sku, line in self._view.lines().items()}

    @property
    def state(self) -> CartState:
        """Lines and sync flags read together, as one consistent value."""
        return CartState(self.member, self.lines, self.from_cache, self.has_pending_writes, self.error)

    def line(self, sku: str) -> CartLine | None:
        line = self._view.line(sku)
        return _line(sku, line) if line is not None else None

    @property
    def from_cache(self) -> bool:
        """True unless the hub has confirmed this cart on the current connection."""
        return not (self._client._engine.is_open and self._view.synced)

    @property
    def has_pending_writes(self) -> bool:
        """Whether ops of ours on this cart are not yet visible in the hub's state."""
        return self._view.has_pending_writes

    @property
    def error(self) -> SyncError | None:
        """Why the hub refused this cart's subscription, if it did (retried on the next connection)."""
        return self._view.error

    def changes(self) -> Changes[CartChange]:
        """Each change of this cart from the moment of this call, merged while the reader is busy.

        The iterator is registered at once (not at its first ``anext``), so a change made right after this
        call is never missed. It ends when the client closes; ``aclose()`` it to stop earlier.
        """
        return Changes(self._streams, self._change)

    @property
    def following(self) -> frozenset[str]:
        """The SKUs on this cart's lines whose stock the client follows (bounded: ``follow_stock``)."""
        return self._client._follows.skus_of(self.topic)

    @property
    def sold_out(self) -> frozenset[str]:
        """SKUs on this cart's lines that have nothing left to promise online (their pool is 0), as this
        device last heard; only followed SKUs are known. Per channel, see ``client.stock(sku).state.atp``."""
        engine = self._client._engine
        out = set()
        for sku in self.following:
            stock = engine.view(f"stock:{sku}")
            shown = isinstance(stock, StockView) and stock.has_state and stock.view()["pool"] <= 0
            if shown and self._view.line(sku) is not None:
                out.add(sku)
        return frozenset(out)

    def _stock_changed(self, sku: str) -> None:
        """The stock of a SKU this cart follows changed: tell the streams when the sold-out lines did."""
        now = self.sold_out
        if now != self._sold_out:
            self._sold_out = now
            change = TopicChanged(self.topic, ChangeCause.STOCK, frozenset((sku,)))
            for stream in list(self._streams):
                stream.push(change, None)

    def _change(self, p: PendingChange) -> CartChange:
        change = CartChange(
            member=self.member,
            cause=p.cause,
            lines=self.lines,
            skus=None if p.skus is None else frozenset(p.skus),
            from_cache=self.from_cache,
            has_pending_writes=self.has_pending_writes,
            origin=p.origin,
            conflicts=tuple(p.conflicts),
            kind=p.kind,
        )
        if not p.stock:
            return change
        fields = {f.name: getattr(change, f.name) for f in dataclasses.fields(change)}
        return SoldOut(**fields, sold_out=self._sold_out)

    def _notify(self, change: TopicChanged) -> CartConflict | None:
        conflict = CartConflict.from_wire(change.conflict) if change.conflict is not None else None
        for stream in list(self._streams):
            stream.push(change, conflict)
        if self._client._follows.skus_of(self.topic):
            self._stock_changed_lines()
        return conflict

    def _stock_changed_lines(self) -> None:
        """A line for a sold-out SKU came or went: the change just pushed becomes a ``SoldOut``."""
        now = self.sold_out
        if now != self._sold_out:
            self._sold_out = now
            for stream in list(self._streams):
                if stream.pending is not None:
                    stream.pending.stock = True

    def _close(self) -> None:
        for stream in list(self._streams):
            stream.close()

    async def unsubscribe(self) -> None:
        """Stop syncing this cart and drop its cached state (ops already made are still delivered)."""
        await self._client._unsubscribe(self)


def _line(sku: str, line: Mapping[str, Any]) -> CartLine:
    return CartLine(sku=sku, qty=int(line["qty"]), attrs=dict(line.get("attrs") or {}))
