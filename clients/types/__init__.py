"""The SDK's side of each data type, one module per type: its local view and its public handle.

The engine finds a topic's view class here by the topic's kind and never names a type; every type of
:data:`protocol.registry.TYPES` has one (checked by tests/test_registry.py).
"""

from __future__ import annotations

from typing import Final

from clients.types.base import LocalView, op_topic
from clients.types.cart import CartView
from protocol.topics import TopicKind

VIEWS: Final[dict[TopicKind, type[LocalView]]] = {v.datatype.kind: v for v in (CartView,)}


def view_type(topic: str) -> type[LocalView]:
    """The view class of a topic the SDK syncs, or ValueError."""
    try:
        found = VIEWS.get(TopicKind(topic.partition(":")[0]))
    except ValueError:
        found = None
    if found is None:
        raise ValueError(f"the SDK does not sync {topic!r} topics")
    return found


__all__ = ["VIEWS", "LocalView", "op_topic", "view_type"]
