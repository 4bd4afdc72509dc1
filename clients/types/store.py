"""A store's topic on this device: the store's allotment of every SKU and what ops recall of it, and its
handle, :class:`StoreStock` (``client.store(store)``).

No op writes a store topic (the hub feeds it), so the view is the hub's state as it is. A till follows its
own store: it learns what it may sell of every SKU without following each, and it answers the recalls
ops make of its allotment (:mod:`clients.types.stock`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from clients.errors import SubscriptionRefused
from clients.events import TopicChanged, TopicRecord
from clients.models import CartConflict
from clients.types.base import LocalView
from protocol import frames
from protocol.datatype import DataType
from protocol.errors import SyncError
from protocol.types.store import STORE

if TYPE_CHECKING:
    from clients.client import SyncClient


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
    """One store's allotments and recalls, as the hub last said. Get one with ``client.store(store)``."""

    def __init__(self, client: SyncClient, store: str) -> None:
        self._client = client
        self.store = store
        self.topic = f"store:{store}"

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
        return None

    def _close(self) -> None:
        return None

    async def unsubscribe(self) -> None:
        """Stop syncing this store and drop its cached state."""
        await self._client._unsubscribe(self)
