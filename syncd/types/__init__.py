"""The hub's side of each data type, one module per type, looked up by topic kind or op kind.

Every type of :data:`protocol.registry.TYPES` has its :class:`~syncd.types.base.StoreType` here (checked by
tests/test_registry.py): the store and the service dispatch through :func:`for_op` and :func:`for_topic` and
never name a type.
"""

from __future__ import annotations

from typing import Final

from protocol import registry
from protocol.topics import TopicKind
from syncd.types.base import StoreType
from syncd.types.cart import CartStore
from syncd.types.stock import StockStore
from syncd.types.store import StoreTopicStore

STORE_TYPES: Final[dict[TopicKind, StoreType]] = {
    t.datatype.kind: t for t in (CartStore(), StockStore(), StoreTopicStore())
}


def for_op(kind: str) -> StoreType:
    """The store type an op kind belongs to, or :class:`~protocol.errors.OpRejected` (``unknown_op``)."""
    return STORE_TYPES[registry.for_op(kind).kind]


def for_topic(kind: TopicKind) -> StoreType | None:
    """The store type serving a topic kind, if any."""
    return STORE_TYPES.get(kind)


__all__ = ["STORE_TYPES", "StoreType", "for_op", "for_topic"]
