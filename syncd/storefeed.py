"""Feeding ``store:<store>`` topics from the stock ops that change a store's allotment or recalls.

A SKU's scripts touch only the SKU's hash slot, so the store's topic (another slot) is fed in steps the hub
runs around the op (docs/design.md §3, "Inventory"; keys and scripts in :mod:`syncd.types.store`):

1. :meth:`StoreFeed.mark`: before the op runs, a mark ``<sku>|<client_id>|<seq>`` in the store's slot,
   acknowledged as the durability mode says (so it is durable before the op can be);
2. the op, as any other;
3. :meth:`StoreFeed.forward`, after its ack: the SKU's values for the store, read with their version, put
   into the store's topic if newer, and the mark dropped, in one script.

A hub that dies after 1 leaves the mark: the sweep of any hub forwards it once the op is settled (or drops it
after the dedup retention, an op never sent again). Step 3 writes absolute, versioned values, so running it
twice, or out of order with another op's, never counts a unit twice nor shows an older value.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Final

from protocol import frames
from protocol import stock as rules
from protocol.topics import is_valid_key
from syncd.store.redis_store import RedisStore
from syncd.types.store import Call, due_key, forward_put, forward_read, marker

log = logging.getLogger("syncd.storefeed")

FEEDS: Final = frozenset({rules.ALLOT, rules.SELL, rules.RECALL, rules.YIELD})
"""Op kinds that may change a store's values; their ``store`` (and ``to``) name the stores to feed."""


@dataclasses.dataclass(frozen=True, slots=True)
class Mark:
    seq: int
    sku: str
    store: str
    name: str


def marks_of(client_id: str, ops: Iterable[frames.Op]) -> list[Mark]:
    """The marks ``ops`` need: one per store an op may change (ops with invalid keys change nothing)."""
    marks: list[Mark] = []
    for op in ops:
        if op.kind not in FEEDS:
            continue
        sku = op.args.get("sku")
        if not isinstance(sku, str) or not is_valid_key(sku):
            continue
        stores = {
            s for s in (op.args.get("store"), op.args.get("to")) if isinstance(s, str) and is_valid_key(s)
        }
        marks.extend(Mark(op.seq, sku, s, marker(sku, client_id, op.seq)) for s in sorted(stores))
    return marks


class StoreFeed:
    """The hub's side of the store topics: marks before ops, forwards after them."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store

    async def mark(self, client_id: str, ops: Sequence[frames.Op]) -> list[Mark]:
        """Mark every store ``ops`` may change; raises :class:`~protocol.errors.BackendUnavailable` when a
        mark cannot be made durable (then the ops must not run: the client sends them again)."""
        marks = marks_of(client_id, ops)
        if not marks:  # most ops (a cart's, a reservation) change no store: nothing to write
            return marks
        now = time.time_ns() // 1_000_000
        by_store: dict[str, list[str]] = {}
        for m in marks:  # one call per store (a till's replayed batch: one), all in one pipeline
            by_store.setdefault(m.store, []).append(m.name)
        calls: list[Call] = [([due_key(store)], [now, *names]) for store, names in by_store.items()]
        await self.store.write_many("store_mark", calls)
        return marks

    async def forward(self, client_id: str, marks: Sequence[Mark], settled: Iterable[int]) -> None:
        """Forward the marked ops that were settled (applied or rejected: either way the mark goes), one
        forward per SKU and store however many ops of the batch changed it. A failure is left to the sweep,
        which finds the marks."""
        done = set(settled)
        groups: dict[tuple[str, str], list[str]] = {}
        for m in marks:  # one forward per SKU and store, however many ops of the batch changed it
            if m.seq in done:
                groups.setdefault((m.sku, m.store), []).append(m.name)
        if not groups:
            return
        tools = self.store.scripting()
        try:  # each step for the whole batch in one pipeline: values are absolute and versioned
            reads = [forward_read(sku, store, client_id) for sku, store in groups]
            answers = await self.store.run_many("stock_forward_read", reads)
            puts = [
                forward_put(tools, sku, store, names, answer)
                for ((sku, store), names), answer in zip(groups.items(), answers, strict=True)
            ]
            await self.store.run_many("store_put", [put for put in puts if put is not None])
        except Exception as exc:  # the marks stay: the sweep forwards them
            skus = sorted({sku for sku, _ in groups})
            log.warning("forward of %s to their stores left to the sweep: %r", skus, exc)
