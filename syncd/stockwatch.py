"""What the dashboard's stock panel shows of the SKUs people watch: their state, read from Redis.

Prometheus never gets a label per SKU (docs/traps.md §18), so the panel does not come from metrics: each hub
process publishes which ``stock:<sku>`` topics its sessions subscribe to and how many of them
(:func:`watched`), the page's process adds them up and reads the state of the most watched from Redis
(:func:`read_stock`) — one non-transactional pipeline, two reads per SKU, every key in the SKU's slot, so it
works on Redis Cluster too. Read-only: a SKU never written shows as ``None`` and nothing is created. Channel
and store names are masked like every id on the dashboard.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from typing import Any, Final

from protocol.topics import TopicKind, TopicName
from syncd.masking import mask
from syncd.store.keys import topic_slot
from syncd.types.stock import atp_by_channel, stock_of

PREFIX: Final = f"{TopicKind.STOCK.value}:"


def watched(topics: Iterable[tuple[str, int]], limit: int) -> list[tuple[str, int]]:
    """The ``limit`` SKUs with the most subscribers among ``(topic, subscribers)``, most first."""
    return most_watched(((topic[len(PREFIX) :], n) for topic, n in topics if topic.startswith(PREFIX)), limit)


def most_watched(skus: Iterable[tuple[str, int]], limit: int) -> list[tuple[str, int]]:
    """The ``limit`` rows of ``(sku, subscribers)`` with the most subscribers, most first (then by SKU)."""
    return heapq.nsmallest(limit, skus, key=lambda row: (-row[1], row[0]))


async def read_stock(redis: Any, skus: Sequence[str]) -> dict[str, dict[str, Any] | None]:
    """Each SKU's buckets (``on_hand``, ``pool``, ``sold``, ``held``), available to promise per channel
    (``*``: a channel without a quota), allotments per store and the number of holds; ``None`` for a SKU
    never written."""
    if not skus:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for sku in skus:
            slot = topic_slot(TopicName(TopicKind.STOCK, sku))
            pipe.hgetall(f"{slot}:stock")
            pipe.hlen(f"{slot}:holds")
        replies = await pipe.execute()
    return {sku: _row(replies[2 * i], int(replies[2 * i + 1])) for i, sku in enumerate(skus)}


def _row(flat: dict[Any, Any], holds: int) -> dict[str, Any] | None:
    if not flat:
        return None
    fields = {(k.decode() if isinstance(k, bytes) else str(k)): int(v) for k, v in flat.items()}
    stock = stock_of(fields)
    return {
        "on_hand": stock["on_hand"],
        "pool": stock["pool"],
        "sold": stock["sold"],
        "held": fields.get("held", 0),
        "holds": holds,
        "atp": atp_by_channel(stock),
        "allot": {mask(store): n for store, n in sorted(stock["allot"].items())},
    }
