"""A store's topic on this device: the store's allotment of every SKU and what ops recall of it, and its
handle, :class:`StoreStock` (``client.store(store)``).

No op writes a store topic (the hub feeds it), so the view is the hub's state as it is. A till follows its
own store: it learns what it may sell of every SKU without following each, and it answers the recalls ops
make of its allotment: the hub never takes escrow from a store (it may be offline, selling it), so units
leave a store only when its till gives them back with ``stock.yield`` — in its own op sequence, after the
sales it made before, and never more than it knows it has (docs/design.md §3, "Inventory").
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from clients.errors import SubscriptionRefused
from clients.events import TopicChanged, TopicRecord
from clients.models import CartConflict
from clients.types.base import LocalView
from clients.types.stock import StockView
from protocol import frames
from protocol import stock as rules
from protocol.datatype import DataType
from protocol.errors import SyncError
from protocol.types.store import STORE

if TYPE_CHECKING:
    from clients.client import SyncClient

log = logging.getLogger("clients.store")


class StoreAllotView(LocalView):
    """The hub's view of one store: per SKU its allotment and the recall pending on it."""

    __slots__ = ("skus",)

    datatype: ClassVar[DataType] = STORE
    offline_ops: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, record: TopicRecord, me: str) -> None:
        super().__init__(record, me)
        state = record.state if record.state is not None else {"skus": {}}
        self.skus: dict[str, dict[str, Any]] = {k: dict(v) for k, v in state["skus"].items()}

    def record(self) -> TopicRecord:
        state = {"skus": self.skus} if self.has_state else None
        return TopicRecord(self.topic, state, self.cursor, self.reflected)

    def add_op(self, op: frames.Op) -> None:
        return None

    def remove(self, seq: int) -> frozenset[str] | None:
        return None

    def reflect(self, upto: int) -> frozenset[str] | None:
        self.reflected = max(self.reflected, upto)
        return frozenset()

    @property
    def has_pending_writes(self) -> bool:
        return False

    def stamp(self, kind: str, args: dict[str, Any]) -> dict[str, int] | None:
        return None

    @staticmethod
    def keys_of(op: frames.Op) -> frozenset[str] | None:
        return None

    def replace(self, state: Mapping[str, Any]) -> None:
        self.skus = {k: dict(v) for k, v in state["skus"].items()}
        self.has_state = True

    def apply_data(self, data: Mapping[str, Any]) -> frozenset[str]:
        sku = str(data["sku"])
        self.skus[sku] = {"allot": data["allot"], "recall": data["recall"], "to": data["to"]}
        return frozenset({sku})


@dataclasses.dataclass(frozen=True, slots=True)
class Recall:
    """Units ops ask a store to give back of one SKU: to the pool, or to the store ``to`` (a rebalance)."""

    qty: int
    to: str | None


class StoreStock:
    """One store's allotments and recalls, as the hub last said. Get one with ``client.store(store)``.

    While ``answer_recalls`` (the default; ``client.store(store, answer_recalls=False)`` for a tool that only
    watches), every recall this device sees while online is answered with a ``stock.yield`` of what it asks,
    capped by the allotment this device knows (its unsynced sales taken off), made by ``member`` (the store
    id unless given: the token must be a ``pos`` token of the store, able to act for that member).
    """

    def __init__(self, client: SyncClient, store: str) -> None:
        self._client = client
        self.store = store
        self.topic = f"store:{store}"
        self.answer_recalls = True
        self.member = store
        self._answered: dict[str, tuple[int, str | None, int]] = {}  # sku -> the values last answered
        self._answering: dict[str, asyncio.Task[None]] = {}

    def __repr__(self) -> str:
        return f"<StoreStock {self.store}>"

    @property
    def _view(self) -> StoreAllotView:
        view = self._client._engine.view(self.topic)
        if not isinstance(view, StoreAllotView):
            raise SubscriptionRefused(self.topic, "unsubscribed", "this store was unsubscribed")
        return view

    @property
    def allotments(self) -> dict[str, int]:
        """SKU -> the store's allotment, as the hub last said (our unsynced sales not taken off)."""
        return {sku: int(v["allot"]) for sku, v in self._view.skus.items()}

    @property
    def recalls(self) -> dict[str, Recall]:
        """SKU -> what ops recall of the store's allotment and have not got back yet."""
        return {sku: Recall(int(v["recall"]), v["to"]) for sku, v in self._view.skus.items() if v["recall"]}

    @property
    def error(self) -> SyncError | None:
        return self._view.error

    def _notify(self, change: TopicChanged) -> CartConflict | None:
        self._synced()
        return None

    def _synced(self) -> None:
        """The topic changed or was synced (a resume with nothing new included: a recall seen before a
        restart and not answered yet is answered now)."""
        if self.answer_recalls and self._client._engine.is_open:
            self._answer()

    def _answer(self) -> None:
        """Yield what each recall asks, once per recall as seen (its values): the forward of our own yield
        changes them, and only then is what is left, if any, answered again."""
        view = self._client._engine.view(self.topic)
        if not isinstance(view, StoreAllotView):
            return
        for sku, values in view.skus.items():
            wanted, to = int(values["recall"]), values["to"]
            seen = (wanted, to, int(values["allot"]))
            if wanted < 1 or sku in self._answering or self._answered.get(sku) == seen:
                continue
            stock = self._client._engine.view(f"stock:{sku}")
            known = (
                stock.allotment(self.store) if isinstance(stock, StockView) and stock.has_state else seen[2]
            )
            qty = min(wanted, known)
            if qty < 1:
                continue
            self._answered[sku] = seen
            self._answering[sku] = asyncio.ensure_future(self._give_back(sku, qty, to))

    async def _give_back(self, sku: str, qty: int, to: str | None) -> None:
        args = {"sku": sku, "member": self.member, "store": self.store, "qty": qty, "to": to}
        try:
            handle = await self._client._submit(rules.YIELD, args)
            await handle.acked()
        except Exception as exc:  # a rejection is kept for the app like any other (client.rejections())
            log.warning("answering the recall of %s at %s: %r", sku, self.store, exc)
            self._answered.pop(sku, None)  # answered again at the next change or sync
        finally:
            self._answering.pop(sku, None)

    def _close(self) -> None:
        for task in self._answering.values():
            task.cancel()

    async def unsubscribe(self) -> None:
        """Stop syncing this store and drop its cached state."""
        await self._client._unsubscribe(self)
