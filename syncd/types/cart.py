"""The cart in Redis (docs/cart-rules.md; scripts in ``lua/cart/``).

Keys, in the member's slot::

    {m:<member>}:cart               hash   sku -> line (MessagePack: its wire shape, docs/cart-rules.md)
    {m:<member>}:cart:meta          hash   fold -> the cart's fold counter (numbers base dots)
"""

from __future__ import annotations

from typing import Any, ClassVar, Final

import msgspec

from protocol import cart as rules
from protocol import frames
from protocol.datatype import DataType, OpArgs
from protocol.topics import TopicName
from protocol.types.cart import CART, CartAdd, CartSet
from syncd.store.keys import topic_keys
from syncd.types.base import EncodableArg, ScriptRunner, StoreType

_encoder: Final = msgspec.msgpack.Encoder()


class CartStore(StoreType):
    datatype: ClassVar[DataType] = CART
    scripts: ClassVar[dict[str, str]] = {
        rules.ADD: "cart_add",
        rules.SET: "cart_set",
        rules.REMOVE: "cart_remove",
        rules.CLEAR: "cart_clear",
    }
    state_keys: ClassVar[tuple[str, ...]] = ("cart", "cart:meta")

    def argv(self, args: OpArgs) -> list[EncodableArg]:
        if isinstance(args, CartAdd | CartSet):
            return [args.sku, args.qty, b"" if args.attrs is None else _encoder.encode(args.attrs)]
        sku: str | None = getattr(args, "sku", None)
        return [] if sku is None else [sku]

    async def snapshot(
        self, run: ScriptRunner, topic: TopicName, epoch: str
    ) -> tuple[frames.Cursor, dict[str, Any]]:
        top, log = topic_keys(topic)
        reply = await run("cart_snapshot", [top, log, self.state_key(topic)], [epoch])
        cursor = frames.Cursor(epoch=_text(reply[0]), offset=int(reply[1]))
        lines = {_text(reply[i]): msgspec.msgpack.decode(reply[i + 1]) for i in range(2, len(reply), 2)}
        return cursor, {"lines": lines}  # stored lines are in the wire shape already (_cart.lua enc_line)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
