"""Notices when a shard's generation changes, so live subscribers of its topics are resynchronised.

The scripts already refuse to continue a history across generations (``syncd/store/lua/_lib.lua``,
``shard_gen``: a topic written in another generation gets a new epoch, and no history from an old cursor).
That reaches a subscriber with its topic's next event — of the new epoch, which makes the hub resynchronise
it (a reset). A topic that is not written again would leave its subscribers trusting what the old primary
sent them, possibly events the failover discarded. This watcher closes that hole: about once a second it
reads every primary's replication id (``INFO replication``, what the scripts compare), and when one is new
— a replica promoted, a primary restarted — it asks the hub to resynchronise every subscription whose topic
lives on that node. The resync's history read then meets the new generation and answers a reset snapshot.

Any number of hubs may watch the same cluster: each resynchronises only its own sessions, and the epoch is
decided by the scripts in Redis, never by a hub.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Final

from redis.asyncio.cluster import RedisCluster

log = logging.getLogger("syncd.generations")

INTERVAL_S: Final = 1.0
STANDALONE: Final = "standalone"
"""The name of the one node of a plain client."""


class GenerationWatcher:
    """Calls ``on_change(nodes)`` with the names (``host:port``, or :data:`STANDALONE`) of the primaries whose
    replication id changed, or that became primaries, since the last look. The first look only learns."""

    def __init__(
        self, client: Any, on_change: Callable[[set[str]], None], interval_s: float = INTERVAL_S
    ) -> None:
        self._client = client
        self._on_change = on_change
        self._interval_s = interval_s
        self._known: dict[str, str] = {}
        self._learnt = False

    async def look(self) -> set[str]:
        """One look at every primary; returns (and reports) the nodes of a new generation.

        A node that does not answer keeps its last known id: it is looked at again next time, and if it
        comes back as a new generation, that is noticed then.
        """
        now = await self._read()
        changed = {name for name, gen in now.items() if self._known.get(name) != gen}
        self._known.update(now)
        if not self._learnt:
            self._learnt = True
            return set()
        if changed:
            log.warning(
                "new shard generation on %s: resynchronising their subscribers", ", ".join(sorted(changed))
            )
            self._on_change(changed)
        return changed

    async def _read(self) -> dict[str, str]:
        if not isinstance(self._client, RedisCluster):
            gen = await _replid(self._client, {})
            return {} if gen is None else {STANDALONE: gen}
        seen: dict[str, str] = {}
        for node in self._client.get_primaries():
            gen = await _replid(self._client, {"target_nodes": node})
            if gen is not None:
                seen[node.name] = gen
        return seen

    async def run(self) -> None:
        """Look every ``interval_s`` until cancelled; a failed look is retried at the next one."""
        while True:
            try:
                await self.look()
            except Exception as exc:  # a cluster in the middle of a failover: next time
                log.debug("generation look failed: %r", exc)
            await asyncio.sleep(self._interval_s)


async def _replid(client: Any, target: dict[str, Any]) -> str | None:
    """The node's ``master_replid``, or ``None`` when it does not answer (or is not a primary any more)."""
    try:
        info = await client.execute_command("INFO", "replication", **target)
    except Exception:  # a frozen or dead node: keep what we knew
        return None
    if info.get("role") != "master":
        return None
    replid = info.get("master_replid")
    return None if replid is None else str(replid)
