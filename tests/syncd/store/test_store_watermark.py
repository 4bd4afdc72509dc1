"""The client watermark never passes an op that is not settled.

On standalone Redis each op script of a fresh run raises the watermark itself, from ``seq - 1`` to ``seq``
only. Were it raised whenever ``last < seq``, an op that failed in the middle of a pipeline (its script
errored) would be passed by the next op's script; the client's retry of the failed op would then be taken
for settled (``seq <= last``) and answered as a duplicate without ever being applied: a silent loss.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from protocol import frames
from syncd.embedded import EmbeddedRedis
from syncd.store import RedisStore
from syncd.store.redis_store import member_slot
from tests.syncd.store.conftest import flush


def add(seq: int, member: str) -> frames.Op:
    return frames.Op(seq=seq, kind="cart.add", args={"member": member, "sku": "tea", "qty": 1})


@pytest.fixture
async def redis_client(standalone_server: EmbeddedRedis) -> AsyncIterator[Redis]:
    """Standalone only: the rule under test is the scripts' own (on a cluster, ``client_settle`` raises the
    watermark after the pipeline instead)."""
    client = Redis.from_url(standalone_server.url)
    await flush(client)
    yield client
    await client.aclose()


async def test_a_failed_op_in_a_pipeline_holds_the_watermark_so_its_retry_is_applied(
    redis_client: Redis,
) -> None:
    store = RedisStore(redis_client)
    await store.apply_ops("pos-1", [add(1, "ok1")], known_last=0)
    # Make op 2's script fail: its member's cart key holds a string, so HGET inside the script errors.
    poisoned = f"{member_slot('bad')}:cart"
    await redis_client.set(poisoned, "not a hash")

    batch = await store.apply_ops("pos-1", [add(2, "bad"), add(3, "ok2")], known_last=1)
    assert [o.seq for o in batch.outcomes] == []  # nothing settled at or after the failed op
    assert batch.error is not None
    assert await store.last_seq("pos-1") == 1  # op 3 may have run, but the watermark did not pass op 2

    await redis_client.delete(poisoned)
    retry = await store.apply_ops("pos-1", [add(2, "bad"), add(3, "ok2")], known_last=None)
    assert retry.error is None
    first = retry.outcomes[0]
    assert (first.seq, first.ok, first.dup) == (2, True, False)  # applied, not answered as a dup
    assert retry.outcomes[0].result == {"qty": 1}
    assert await store.last_seq("pos-1") == 3
