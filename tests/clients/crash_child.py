"""A POS process for crash tests: makes cart adds offline, forever, printing each seq once it is committed.

Run as ``python -m tests.clients.crash_child <data_dir> <client_id> <member>``; the test reads the seqs and
kills this process with SIGKILL in the middle of its work.
"""

from __future__ import annotations

import asyncio
import sys

from clients import SyncClient

SKUS = 7


def sku_of(seq: int) -> str:
    """The sku the op with ``seq`` adds one unit of (the test recomputes the expected cart from it)."""
    return f"SKU-{seq % SKUS}"


async def main(data_dir: str, client_id: str, member: str) -> None:
    async with SyncClient(
        "ws://127.0.0.1:9/ws", token="offline", data_dir=data_dir, client_id=client_id, online=False
    ) as client:
        cart = client.cart(member)
        seq = 1  # a fresh data directory: seqs start at 1
        while True:
            op = await cart.add(sku_of(seq), 1)
            assert op.seq == seq
            print(seq, flush=True)
            seq += 1


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
