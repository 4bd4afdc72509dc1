"""What the hub needs of one data type: its keys, its Lua scripts, its op arguments as ARGV, its snapshot.

A store type adds nothing to the op protocol itself (dedup, settle, event, history: :mod:`syncd.store`); it
says where the type's state lives and which script applies each op. Every op script is called with the
same leading ARGV (:meth:`syncd.store.redis_store.RedisStore._op_argv`) followed by :meth:`StoreType.argv`,
and with KEYS ``[dedup hash, the type's own keys…, topic meta, topic stream]`` (:meth:`StoreType.keys`).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar, TypeAlias

from protocol import frames
from protocol.datatype import DataType, OpArgs
from protocol.topics import TopicName
from syncd.holds import HoldPolicy
from syncd.store.keys import dedup_key, topic_keys, topic_slot

EncodableArg: TypeAlias = bytes | str | int
ScriptRunner: TypeAlias = Callable[[str, Sequence[str], Sequence[EncodableArg]], Awaitable[Any]]
"""``(script, KEYS, ARGV) -> reply``: runs one of the store's scripts (read-only use: snapshots)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Sweep:
    """What a type's periodic sweep may use: the Redis client (to find its keys), its scripts, a fresh
    epoch for a topic that needs one, and the history bounds every event append takes."""

    client: Any
    run: ScriptRunner
    epoch: Callable[[], str]
    log_argv: tuple[int, int, int]
    """``(maxlen, max_age_ms, max_bytes)`` of a topic's history."""
    retention_ms: int = 7 * 24 * 3600 * 1000
    """How long an op may still be replayed (the dedup retention): what waits on an op forgets it after."""


@dataclasses.dataclass(frozen=True, slots=True)
class OpEnv:
    """What an op's ARGV may take from the hub's configuration besides the op's arguments."""

    holds: HoldPolicy = dataclasses.field(default_factory=HoldPolicy)
    """How long a stock reservation without a ttl holds (the brand's clearing time, the default hold)."""


NAMES_CACHED = 4096
"""Entities per type whose key names :meth:`StoreType.keys` keeps (all are forgotten when it is full)."""
_NAMES: dict[StoreType, dict[Any, tuple[str, tuple[str, ...], str]]] = {}


class StoreType(abc.ABC):
    """One data type in Redis. Subclasses set :attr:`datatype` and :attr:`scripts`."""

    datatype: ClassVar[DataType]
    scripts: ClassVar[dict[str, str]]
    """Op kind -> the Lua script (``lua/<type>/<script>.lua``) that applies it."""
    state_keys: ClassVar[tuple[str, ...]]
    """Suffixes, in the topic's slot, of the keys an op script takes between the dedup hash and the topic's
    keys (``("cart", "cart:meta")`` -> ``{m:M}:cart``, ``{m:M}:cart:meta``); the first holds the state."""

    def topic(self, args: OpArgs) -> TopicName:
        return TopicName(self.datatype.kind, getattr(args, self.datatype.key_field))

    def keys(self, args: OpArgs, client_id: str) -> list[str]:
        """KEYS of an op script: dedup hash, the type's keys, then the topic's meta and stream."""
        slot, after, _ = self._names(args)
        return [dedup_key(slot, client_id), *after]

    def topic_name(self, args: OpArgs) -> str:
        """``str(self.topic(args))``, as every op's ARGV takes it."""
        return self._names(args)[2]

    def _names(self, args: OpArgs) -> tuple[str, tuple[str, ...], str]:
        """The slot, the keys after the dedup hash and the topic name of the entity ``args`` act on: built
        once per entity (a flash sale's thousands of ops on one SKU, a device's on its cart), not per op."""
        key = getattr(args, self.datatype.key_field)
        cache = _NAMES.setdefault(self, {})
        names = cache.get(key)
        if names is None:
            if len(cache) >= NAMES_CACHED:
                cache.clear()
            topic = self.topic(args)
            names = cache[key] = (topic_slot(topic), tuple(self.keys_after_dedup(topic)), str(topic))
        return names

    def keys_after_dedup(self, topic: TopicName) -> list[str]:
        """The type's keys in the topic's slot, then the topic's meta and stream."""
        slot = topic_slot(topic)
        return [*(f"{slot}:{s}" for s in self.state_keys), *topic_keys(topic)]

    def state_key(self, topic: TopicName) -> str:
        """The key holding a topic's state (``{m:M}:cart`` for ``cart:M``)."""
        return f"{topic_slot(topic)}:{self.state_keys[0]}"

    @abc.abstractmethod
    def argv(self, args: OpArgs) -> list[EncodableArg]:
        """The op's own ARGV, after the common ones."""

    def argv_in(self, args: OpArgs, env: OpEnv) -> list[EncodableArg]:
        """The op's own ARGV where it depends on the hub's configuration ``env``; by default :meth:`argv`."""
        return self.argv(args)

    async def sweep(self, sweep: Sweep, limit: int) -> int:
        """Time-driven changes of this type (holds expiring), each applied exactly once by a script;
        how many. Types without any: 0."""
        return 0

    @abc.abstractmethod
    async def snapshot(
        self, run: ScriptRunner, topic: TopicName, epoch: str
    ) -> tuple[frames.Cursor, dict[str, Any]]:
        """The topic's state (wire shape) and cursor, read atomically; ``epoch`` is a new one, used if the
        topic needs one."""
