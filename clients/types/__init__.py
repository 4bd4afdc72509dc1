"""The SDK's side of each data type, one module per type: its local view and its public handle.

The engine finds a topic's view class here by the topic's kind and never names a type; every type of
:data:`protocol.registry.TYPES` has one (checked by tests/test_registry.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from clients.types.base import LocalView, TopicHandle, op_topic
from clients.types.cart import Cart, CartView
from clients.types.stock import Stock, StockView
from clients.types.store import StoreAllotView, StoreStock

if TYPE_CHECKING:
    from clients.client import SyncClient
from protocol.topics import TopicKind

VIEWS: Final[dict[TopicKind, type[LocalView]]] = {
    v.datatype.kind: v for v in (CartView, StockView, StoreAllotView)
}
HANDLES: Final[dict[TopicKind, Callable[[SyncClient, str], TopicHandle]]] = {
    TopicKind.CART: Cart,
    TopicKind.STOCK: Stock,
    TopicKind.STORE: StoreStock,
}
"""Topic kind -> its public handle, made with the client and the topic's key."""


def _kind(topic: str) -> TopicKind:
    try:
        kind = TopicKind(topic.partition(":")[0])
    except ValueError:
        raise ValueError(f"the SDK does not sync {topic!r} topics") from None
    if kind not in VIEWS:
        raise ValueError(f"the SDK does not sync {topic!r} topics")
    return kind


def view_type(topic: str) -> type[LocalView]:
    """The view class of a topic the SDK syncs, or ValueError."""
    return VIEWS[_kind(topic)]


def handle_type(topic: str) -> Callable[[SyncClient, str], TopicHandle]:
    """What makes the public handle of a topic the SDK syncs, or ValueError."""
    return HANDLES[_kind(topic)]


__all__ = ["HANDLES", "VIEWS", "LocalView", "TopicHandle", "handle_type", "op_topic", "view_type"]
