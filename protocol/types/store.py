"""A store's topic, ``store:<store>``: the store's allotment of every SKU and what ops recall of it.

No op writes this topic: the hub feeds it from the SKUs' stock (docs/design.md §3, "Inventory"), after every
op that changes a store's allotment or its recalls, so a till learns what it may sell and what it is asked
to give back without following every SKU. Each event carries one SKU's values for the store, absolute (not a
delta): the hub's forward is idempotent, and a replayed or coalesced forward never counts twice.
"""

from __future__ import annotations

from typing import Final

import msgspec

from protocol.datatype import DataType
from protocol.topics import TopicKind

SKU_CHANGED: Final = "store.sku"
"""The kind of every event of a store topic: one SKU's allotment or recall for this store changed."""


class StoreSku(msgspec.Struct, forbid_unknown_fields=False):
    """One SKU as a store sees it: its allotment, and the units ops recall from it (0: none), bound for the
    pool or, for a rebalance, for the store ``to``."""

    allot: int
    recall: int
    to: str | None


class StoreView(msgspec.Struct, forbid_unknown_fields=False):
    """A store topic's snapshot ``state``: every SKU the store was ever allotted."""

    skus: dict[str, StoreSku]


class StoreEvent(StoreSku, forbid_unknown_fields=False):
    """A store topic's event ``data``: one SKU's new values."""

    sku: str


STORE = DataType(
    kind=TopicKind.STORE,
    ops={},
    key_field="store",
    state=StoreView,
    event=StoreEvent,
    events=frozenset({SKU_CHANGED}),
)
"""A store's allotments and recalls, topic ``store:<store>`` (written by the hub only)."""
