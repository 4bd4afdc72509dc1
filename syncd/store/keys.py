"""Redis key names shared by every data type: hash slots, a topic's offset and stream, pub/sub channels.

Every key one script touches shares a hash slot (``{m:<member>}``, ``{sku:<sku>}``, …), so the same scripts
run unchanged on Redis Cluster. A type's own keys are built by its module in :mod:`syncd.types` from these.
"""

from __future__ import annotations

from typing import Final

from protocol.topics import TopicKind, TopicName


def member_slot(member: str) -> str:
    """The hash tag of everything that belongs to one member."""
    return f"{{m:{member}}}"


def client_slot(client_id: str) -> str:
    """The hash tag of a client's watermark and pre-script rejections."""
    return f"{{c:{client_id}}}"


# Topic kind -> hash-tag prefix of the entity that owns the topic's offset and stream.
_TOPIC_SLOTS: Final = {
    TopicKind.CART: "m",
    TopicKind.POINTS: "m",
    TopicKind.MEMBER: "m",
    TopicKind.STOCK: "sku",
    TopicKind.STORE: "s",
}


def topic_slot(topic: TopicName) -> str:
    """The hash tag of the entity that owns a topic (``{m:M}`` for ``cart:M``)."""
    prefix = _TOPIC_SLOTS.get(topic.kind)
    return "{catalog}" if prefix is None else f"{{{prefix}:{topic.key}}}"


def topic_keys(topic: TopicName) -> tuple[str, str]:
    """``(meta, stream)`` keys of a topic: ``{m:M}:top:cart`` and ``{m:M}:log:cart`` for ``cart:M``."""
    slot = topic_slot(topic)
    return f"{slot}:top:{topic.kind.value}", f"{slot}:log:{topic.kind.value}"


def dedup_key(slot: str, client_id: str) -> str:
    """A client's dedup hash in an entity's slot: the first KEY of every op script."""
    return f"{slot}:d:{client_id}"


def channel(topic: str) -> str:
    """The pub/sub channel on which every event of ``topic`` is published (``ev:cart:m42``)."""
    return f"ev:{topic}"
