"""A store's topic in Redis, fed from its SKUs' stock (docs/design.md §3, "Inventory"; scripts in
``lua/store/`` and ``lua/stock/stock_forward_read.lua``).

Keys, in the store's slot::

    {s:<store>}:store       hash   sku -> '<allot>|<recall>|<to>|<sku epoch>|<sku offset>': the SKU's values
                                   for this store and the version (the SKU topic's cursor) they were read at
    {s:<store>}:due         hash   '<sku>|<client_id>|<seq>' -> ms: ops that may change the store's values,
                                   marked before they run, dropped once their effect is forwarded
    {s:<store>}:top:store, {s:<store>}:log:store   the topic's meta and stream

Why a forward and not a write by the SKU's script: a SKU's scripts touch only the SKU's slot (Redis Cluster),
and the store's keys are in another. So a change reaches the store in two steps, each atomic: the SKU op,
then :func:`forward` (read the SKU's values with their version; ``store_put`` them into the store's slot if
newer, dropping the op's marker). A hub that dies between the two leaves the marker; every hub's sweep
forwards marked ops once they are settled. Nothing is lost (the marker is durable before the op runs) and
nothing doubles (values are absolute and versioned: a second forward of the same version is a no-op;
docs/traps.md §8b).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, ClassVar, Final

from protocol import frames
from protocol.datatype import DataType, OpArgs
from protocol.topics import TopicKind, TopicName
from protocol.types.store import STORE
from syncd.store.keys import channel, dedup_key, topic_keys, topic_slot
from syncd.types.base import EncodableArg, ScriptRunner, StoreType, Sweep

_DUE_SUFFIX: Final = "}:due"
log = logging.getLogger("syncd.storefeed")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def marker(sku: str, client_id: str, seq: int) -> str:
    """The name of an op's mark in its store's ``due`` hash."""
    return f"{sku}|{client_id}|{seq}"


def due_key(store: str) -> str:
    return f"{topic_slot(TopicName(TopicKind.STORE, store))}:due"


Call = tuple[list[str], list[EncodableArg]]
"""One script call: its KEYS and ARGV."""


def forward_read(sku: str, store: str, client_id: str = "", seq: int = 0) -> Call:
    """The first step of a forward: ``stock_forward_read`` of ``sku``'s values for ``store``, and whether the
    marked op ``(client_id, seq)`` is settled on the SKU (``seq`` 0: no op to wait for)."""
    sku_topic = TopicName(TopicKind.STOCK, sku)
    sku_slot = topic_slot(sku_topic)
    keys = [
        f"{sku_slot}:stock",
        f"{sku_slot}:recall",
        topic_keys(sku_topic)[0],
        dedup_key(sku_slot, client_id),
    ]
    return keys, [store, seq]


def forward_put(sweep: Sweep, sku: str, store: str, marks: Sequence[str], read: Any) -> Call | None:
    """The second step: ``store_put`` of what :func:`forward_read` answered (``read``), dropping ``marks``;
    ``None`` when the marked op is not settled yet (nothing is written)."""
    settled, allot, recall, to, epoch, offset = read
    if not int(settled):
        return None
    topic = TopicName(TopicKind.STORE, store)
    name = str(topic)
    slot = topic_slot(topic)
    keys = [f"{slot}:store", *topic_keys(topic), f"{slot}:due"]
    argv: list[EncodableArg] = [sweep.epoch(), channel(name), name, *sweep.log_argv]
    argv += [sku, int(allot), int(recall), _text(to), _text(epoch), int(offset), *marks]
    return keys, argv


async def forward(
    sweep: Sweep, sku: str, store: str, marks: Sequence[str] = (), client_id: str = "", seq: int = 0
) -> bool:
    """Bring ``store``'s topic up to date with ``sku``'s values for it, dropping ``marks`` (ops settled
    before the read); ``False`` (and nothing written) when the marked op ``(client_id, seq)`` is not settled
    on the SKU yet (``seq`` 0: the caller knows they are)."""
    put = forward_put(
        sweep,
        sku,
        store,
        marks,
        await sweep.run("stock_forward_read", *forward_read(sku, store, client_id, seq)),
    )
    if put is None:
        return False
    await sweep.run("store_put", *put)
    return True


class StoreTopicStore(StoreType):
    datatype: ClassVar[DataType] = STORE
    scripts: ClassVar[dict[str, str]] = {}
    state_keys: ClassVar[tuple[str, ...]] = ("store",)

    def argv(self, args: OpArgs) -> list[EncodableArg]:
        raise NotImplementedError("no op writes a store topic")  # STORE.ops is empty: never called

    async def sweep(self, sweep: Sweep, limit: int) -> int:
        """Forward the ops a hub marked and did not forward (it died, or Redis failed it in between), once
        each is settled; drop marks older than the dedup retention (an op never sent again). Stores are
        found by their ``due`` key (SCAN: every primary, on a cluster). Returns 0: the sweep's count is of
        holds returned (a metric); forwards are logged instead, being the repair of a hub's failure."""
        forwarded = 0
        async for raw in sweep.client.scan_iter(match="{s:*" + _DUE_SUFFIX, count=1000):
            key = _text(raw)
            if not key.startswith("{s:") or not key.endswith(_DUE_SUFFIX):
                continue
            store = key[len("{s:") : -len(_DUE_SUFFIX)]
            marks = await sweep.client.hgetall(key)
            for name_raw, at_raw in list(marks.items())[:limit]:
                name = _text(name_raw)
                sku, _, rest = name.partition("|")
                client_id, _, seq = rest.rpartition("|")
                if not (sku and client_id and seq.isdigit()):
                    await sweep.client.hdel(key, name)
                    continue
                if await forward(sweep, sku, store, [name], client_id, int(seq)):
                    forwarded += 1
                elif int(_text(at_raw)) < time.time_ns() // 1_000_000 - sweep.retention_ms:
                    await sweep.client.hdel(key, name)  # its op was never sent again: nothing to forward
        if forwarded:
            log.info("forwarded %d store-topic changes a hub left marked", forwarded)
        return 0

    async def snapshot(
        self, run: ScriptRunner, topic: TopicName, epoch: str
    ) -> tuple[frames.Cursor, dict[str, Any]]:
        top, log = topic_keys(topic)
        reply = await run("store_snapshot", [top, log, self.state_key(topic)], [epoch])
        cursor = frames.Cursor(epoch=_text(reply[0]), offset=int(reply[1]))
        skus: dict[str, Any] = {}
        for i in range(2, len(reply), 2):
            allot, recall, to, _, _ = _text(reply[i + 1]).split("|")
            skus[_text(reply[i])] = {"allot": int(allot), "recall": int(recall), "to": to or None}
        return cursor, {"skus": skus}
