"""One SKU's stock in Redis (docs/design.md §3, "Inventory"; scripts and key layout in ``lua/stock/``).

Every key of a SKU is in its slot ``{sku:<sku>}`` (a member's purchase count too), so the scripts run
unchanged on Redis Cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Final

import msgspec

from protocol import frames
from protocol import stock as rules
from protocol.datatype import DataType, OpArgs
from protocol.topics import TopicName
from protocol.types.stock import (
    STOCK,
    StockAdjust,
    StockAllot,
    StockCommit,
    StockLimit,
    StockQuota,
    StockRecall,
    StockRelease,
    StockReserve,
    StockRestock,
    StockSell,
    StockYield,
)
from syncd.store.keys import channel, topic_keys, topic_slot
from syncd.types.base import EncodableArg, OpEnv, ScriptRunner, StoreType, Sweep

_EXP_SUFFIX: Final = "}:exp"


class StockStore(StoreType):
    datatype: ClassVar[DataType] = STOCK
    scripts: ClassVar[dict[str, str]] = {kind: kind.replace(".", "_") for kind in rules.KINDS}
    state_keys: ClassVar[tuple[str, ...]] = ("stock", "holds", "bought", "exp")

    def argv(self, args: OpArgs) -> list[EncodableArg]:
        return self.argv_in(args, OpEnv())

    def argv_in(self, args: OpArgs, env: OpEnv) -> list[EncodableArg]:
        if isinstance(args, StockReserve):
            return [args.channel, args.member, args.qty, *env.holds.reserve_argv(args.ttl_ms, args.until)]
        return self._argv(args)

    def _argv(self, args: OpArgs) -> list[EncodableArg]:
        if isinstance(args, StockCommit | StockRelease):
            return [args.rid]
        if isinstance(args, StockAllot | StockSell):
            return [args.store, args.qty]
        if isinstance(args, StockRecall | StockYield):
            return [args.store, args.qty, args.to or ""]
        if isinstance(args, StockAdjust):
            return [args.delta, args.reason]
        if isinstance(args, StockQuota):
            return [args.channel, args.qty]
        assert isinstance(args, StockRestock | StockLimit)
        return [args.qty]

    def keys(self, args: OpArgs, client_id: str) -> list[str]:
        """A recall and its answer also take the SKU's ``recall`` hash (``lua/stock/_escrow.lua``), after the
        topic's keys: the other stock ops keep their layout."""
        keys = super().keys(args, client_id)
        if isinstance(args, StockRecall | StockYield):
            keys.append(f"{topic_slot(self.topic(args))}:recall")
        return keys

    async def sweep(self, sweep: Sweep, limit: int) -> int:
        """Return every SKU's expired holds (``stock_expire``). Every hub sweeps; the script makes each
        return happen once. SKUs are found by their ``exp`` key (SCAN: every primary, on a cluster)."""
        returned = 0
        async for raw in sweep.client.scan_iter(match="{sku:*" + _EXP_SUFFIX, count=1000):
            key = raw.decode() if isinstance(raw, bytes) else raw
            if not key.startswith("{sku:") or not key.endswith(_EXP_SUFFIX):
                continue
            topic = TopicName(self.datatype.kind, key[len("{sku:") : -len(_EXP_SUFFIX)])
            name = str(topic)
            keys = [*self.keys_after_dedup(topic)]
            argv: list[EncodableArg] = [sweep.epoch(), channel(name), name, *sweep.log_argv, limit]
            reply = await sweep.run("stock_expire", keys, argv)
            returned += int(reply[0])
        return returned

    async def snapshot(
        self, run: ScriptRunner, topic: TopicName, epoch: str
    ) -> tuple[frames.Cursor, dict[str, Any]]:
        top, log = topic_keys(topic)
        reply = await run("stock_snapshot", [top, log, self.state_key(topic)], [epoch])
        epoch_raw = reply[0]
        cursor = frames.Cursor(
            epoch=epoch_raw.decode() if isinstance(epoch_raw, bytes) else epoch_raw, offset=int(reply[1])
        )
        if len(reply) < 3:
            return cursor, {"on_hand": 0, "pool": 0, "sold": 0, "atp": {"*": 0}, "allot": {}}
        state: dict[str, Any] = msgspec.msgpack.decode(reply[2])
        return cursor, state


def stock_of(fields: Mapping[str, int]) -> rules.Stock:
    """A SKU's ``stock`` hash (``on_hand``, ``pool``, ``sold``, ``limit``; ``q:``/``t:`` per channel, ``a:``
    per store) in the reference rules' shape, without its holds: what the ops API and the dashboard show."""
    stock = rules.empty()
    buckets: dict[str, dict[str, int]] = {"q:": stock["quota"], "t:": stock["taken"], "a:": stock["allot"]}
    for name, value in fields.items():
        if name[:2] in buckets:
            buckets[name[:2]][name[2:]] = value
    stock["on_hand"] = fields.get("on_hand", 0)
    stock["pool"] = fields.get("pool", 0)
    stock["sold"] = fields.get("sold", 0)
    stock["limit"] = fields.get("limit", rules.NO_LIMIT)
    return stock


def atp_by_channel(stock: rules.Stock) -> dict[str, int]:
    """Available to promise to any channel (``*``) and to each channel with a quota."""
    return {"*": rules.atp(stock, "*"), **{ch: rules.atp(stock, ch) for ch in sorted(stock["quota"])}}


async def full_state(run: ScriptRunner, sku: str) -> dict[str, Any]:
    """Everything operators see of one SKU (``GET /ops/stock/<sku>``), read atomically (``stock_state``):
    the buckets, quotas with what each channel took, the purchase limit, how many holds are active,
    available to promise per channel and the recalls waiting for their store (docs/design.md §3)."""
    slot = topic_slot(TopicName(STOCK.kind, sku))
    keys = [f"{slot}:stock", f"{slot}:holds", f"{slot}:recall"]
    flat, holds, recall_flat = await run("stock_state", keys, [])
    fields = {_text(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}
    stock = stock_of(fields)
    recall: dict[str, dict[str, Any]] = {}
    for i in range(0, len(recall_flat), 2):
        qty, _, to = _text(recall_flat[i + 1]).partition("|")
        recall[_text(recall_flat[i])] = {"qty": int(qty), "to": to or None}
    return {
        "sku": sku,
        "on_hand": stock["on_hand"],
        "pool": stock["pool"],
        "sold": stock["sold"],
        "held": fields.get("held", 0),
        "holds": int(holds),
        "allot": stock["allot"],
        "quota": stock["quota"],
        "taken": stock["taken"],
        "limit": stock["limit"],
        "atp": atp_by_channel(stock),
        "recall": recall,
    }


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
