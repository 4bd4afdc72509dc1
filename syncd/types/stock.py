"""One SKU's stock in Redis (docs/design.md §3, "Inventory"; scripts and key layout in ``lua/stock/``).

Every key of a SKU is in its slot ``{sku:<sku>}`` (a member's purchase count too), so the scripts run
unchanged on Redis Cluster.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final

import msgspec

from protocol import frames
from protocol import stock as rules
from protocol.datatype import DataType, OpArgs
from protocol.topics import TopicName
from protocol.types.stock import (
    STOCK,
    StockAllot,
    StockCommit,
    StockLimit,
    StockQuota,
    StockRelease,
    StockReserve,
    StockRestock,
    StockSell,
)
from syncd.store.keys import channel, topic_keys
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
        if isinstance(args, StockQuota):
            return [args.channel, args.qty]
        assert isinstance(args, StockRestock | StockLimit)
        return [args.qty]

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
