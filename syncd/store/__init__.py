"""The hub's storage layer: Redis (or Redis Cluster) holds the hot state and every topic's change stream.

Each op is one Lua script (``lua/``) that checks, applies, records ``(client_id, seq)`` for dedup and appends
the event to its topic's stream in one atomic step; :class:`RedisStore` runs them and decodes their replies.
"""

from syncd.store.redis_store import OpOutcome, RedisStore

__all__ = ["OpOutcome", "RedisStore"]
