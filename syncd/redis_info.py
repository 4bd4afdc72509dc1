"""What the connected Redis-compatible server is, and what an ack can therefore promise.

``/healthz`` reports it, the hub logs it at startup, and ``durability=fsync`` refuses to start without it:
an operator must be able to read, not guess, which durability guarantee is in force (PITFALLS 1).

Probing is read-only: ``INFO server``, ``INFO persistence`` and ``CONFIG GET`` (which managed services may
disable; the answer is then "unknown", never a guess). WAITAOF support is decided from the server's name and
version (Redis ≥ 7.2, every Valkey): ``COMMAND INFO`` would be exact but redis-py cannot parse its answer for
an unknown command, and a trial ``WAITAOF`` would be a write-path command on a health check.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from typing import Any

import redis.asyncio
from redis.exceptions import RedisError

from syncd.settings import ConfigError, Durability, env_var

PROBE_TIMEOUT = 2.0


@dataclasses.dataclass(frozen=True)
class Persistence:
    """How the server keeps data across its own restart. ``None`` means the server would not say."""

    aof: bool
    appendfsync: str | None
    rdb: bool | None
    """Whether RDB save points are configured (periodic snapshots)."""
    loading: bool
    """The server is still replaying its data after a start; commands other than INFO fail meanwhile."""


@dataclasses.dataclass(frozen=True)
class RedisStatus:
    """One probe's result. ``reachable=False`` comes with ``error`` and nothing else."""

    reachable: bool
    server: str | None = None
    """``"redis"``, ``"valkey"`` or another ``server_name``."""
    version: str | None = None
    mode: str | None = None
    """``standalone``, ``cluster`` or ``sentinel``."""
    persistence: Persistence | None = None
    waitaof: bool = False
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The JSON form served under ``redis`` in ``/healthz``."""
        if not self.reachable:
            return {"reachable": False, "error": self.error}
        data = dataclasses.asdict(self)
        del data["error"]
        return data


def make_client(url: str) -> redis.asyncio.Redis:
    """The hub's Redis client for ``url``: raw bytes (frames are msgpack), bounded connect time."""
    client: redis.asyncio.Redis = redis.asyncio.Redis.from_url(url, socket_connect_timeout=PROBE_TIMEOUT)
    return client


def waitaof_supported(server: str | None, version: str | None) -> bool:
    """WAITAOF exists in Redis ≥ 7.2 and in every Valkey (forked from 7.2). Debian's Redis 7.0 lacks it."""
    if server == "valkey":
        return True
    if server != "redis" or version is None:
        return False
    numbers = [int(part) for part in re.findall(r"\d+", version)[:2]]
    return len(numbers) == 2 and (numbers[0], numbers[1]) >= (7, 2)


async def probe(client: redis.asyncio.Redis) -> RedisStatus:
    """Ask the server who it is and how it persists; never raises, and answers within ``PROBE_TIMEOUT``.

    The bound is built in because a health check that hangs on a wedged Redis is worse than none.
    """
    timeout = PROBE_TIMEOUT
    try:
        async with asyncio.timeout(timeout):
            server_info = await client.info("server")
            persistence_info = await client.info("persistence")
            appendfsync = await _config_get(client, "appendfsync")
            save = await _config_get(client, "save")
    except (RedisError, OSError, TimeoutError) as exc:
        reason = f"no answer within {timeout:g} s" if isinstance(exc, TimeoutError) else str(exc) or repr(exc)
        return RedisStatus(reachable=False, error=f"{type(exc).__name__}: {reason}")
    name = str(server_info.get("server_name") or "redis")
    version = server_info.get(f"{name}_version") or server_info.get("redis_version")
    version = None if version is None else str(version)
    return RedisStatus(
        reachable=True,
        server=name,
        version=version,
        mode=str(server_info.get("server_mode") or server_info.get("redis_mode") or "unknown"),
        persistence=Persistence(
            aof=bool(int(persistence_info.get("aof_enabled", 0))),
            appendfsync=appendfsync,
            rdb=None if save is None else save.strip() != "",
            loading=bool(int(persistence_info.get("loading", 0))),
        ),
        waitaof=waitaof_supported(name, version),
    )


async def _config_get(client: redis.asyncio.Redis, name: str) -> str | None:
    try:
        reply = await client.config_get(name)
    except RedisError:  # CONFIG disabled or renamed (managed services): unknown, not an error
        return None
    value: Any = reply.get(name)  # redis-py decodes CONFIG GET replies even for a bytes client
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def durability_guarantee(mode: Durability, status: RedisStatus) -> str:
    """One sentence an operator can rely on: what an ack means with this mode on this server."""
    if mode == "fsync":
        return (
            "An ack means Redis has fsynced the op to its local append-only file (WAITAOF 1 0): acked ops "
            "survive a crash or power loss of the Redis host, though not the loss of its disk; replicas are "
            "not awaited."
        )
    prefix = "An ack means the op's script has run in Redis"
    persistence = status.persistence
    if persistence is None:
        return f"{prefix}; how long it survives depends on the server's persistence, which could not be read."
    if persistence.aof:
        fsync = {
            "always": "fsynced before Redis replied (appendfsync always): acked ops survive a power loss of "
            "the Redis host.",
            "everysec": "fsynced about once a second (appendfsync everysec): a crash of the Redis process "
            "loses nothing, a power loss or kernel crash may lose the last second of acked ops.",
            "no": "fsynced whenever the OS decides (appendfsync no): a crash of the Redis process loses "
            "nothing, a power loss may lose tens of seconds of acked ops.",
        }.get(
            persistence.appendfsync or "",
            "fsynced by a policy the server would not report: a crash of the Redis process loses nothing, a "
            "power loss may lose recent acked ops.",
        )
        return f"{prefix} and written to its append-only file, {fsync}"
    if persistence.rdb:
        return (
            f"{prefix}; Redis saves only periodic RDB snapshots: a Redis restart loses the acked ops since "
            "the last snapshot."
        )
    if persistence.rdb is None:
        return (
            f"{prefix}; the append-only file is off and snapshots are unknown: a Redis restart may lose "
            "acked ops."
        )
    return (
        f"{prefix}; Redis keeps it in memory only (no AOF, no RDB): any Redis restart loses every acked op."
    )


def check_durability(mode: Durability, status: RedisStatus) -> list[str]:
    """Warnings to log at startup; raises :class:`ConfigError` when ``mode`` cannot be honoured at all.

    ``fsync`` on a server without WAITAOF or without an AOF is refused: the hub would otherwise fail every
    op, or silently promise more than it delivers.
    """
    var = env_var("durability")
    if not status.reachable:
        return [f"Redis is unreachable ({status.error}): durability cannot be verified until it answers"]
    persistence = status.persistence
    assert persistence is not None
    if mode == "fsync":
        if not status.waitaof:
            raise ConfigError(
                f"{var}=fsync needs WAITAOF (Redis ≥ 7.2 or Valkey), but the server is {status.server} "
                f"{status.version}; use {var}=script, or a newer server (without a redis-server on PATH the "
                "embedded mode runs the bundled valkey-server)"
            )
        if not persistence.aof:
            raise ConfigError(f"{var}=fsync needs the Redis server to run with appendonly yes")
        return []
    warnings = []
    if not persistence.aof and persistence.rdb is False:
        warnings.append(
            "Redis has no persistence (appendonly no, no save points): a Redis restart loses all state"
        )
    elif not persistence.aof:
        warnings.append(
            "Redis has no append-only file (appendonly no): a Redis restart loses the changes since its last "
            "snapshot"
        )
    elif persistence.appendfsync == "no":
        warnings.append("Redis runs appendfsync no: a power loss may lose tens of seconds of acked ops")
    return warnings
