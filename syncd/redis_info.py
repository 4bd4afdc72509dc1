"""What the connected Redis-compatible server is, and what an ack can therefore promise.

``/healthz`` reports it, the hub logs it at startup, and ``durability=fsync`` refuses to start without it:
an operator must be able to read, not guess, which durability guarantee is in force (docs/traps.md §1).

Probing is read-only: ``INFO server``, ``INFO persistence`` and ``CONFIG GET`` (which managed services may
disable; the answer is then "unknown", never a guess). WAITAOF support is decided from the server's name and
version (Redis ≥ 7.2, every Valkey): ``COMMAND INFO`` would be exact but redis-py cannot parse its answer for
an unknown command, and a trial ``WAITAOF`` would be a write-path command on a health check.

On a Redis Cluster (``SYNCD_REDIS_CLUSTER``) every primary is probed, since each holds a share of the data,
and the answer is the weakest of them: AOF only if every primary has it, the least frequent ``appendfsync``,
``loading`` while any primary loads, WAITAOF only if all have it. A primary that does not answer makes the
cluster unreachable for the health check: the ops of its slots cannot be served.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import re
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import hiredis
import redis.asyncio
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from syncd.settings import ConfigError, Durability, env_var

log = logging.getLogger("syncd.redis")

PROBE_TIMEOUT = 2.0
CLUSTER_MAX_CONNECTIONS = 10_000
"""Connections the hub may open to one node of a cluster. redis-py's cluster client has no blocking pool: past
its bound it *fails* a command (``MaxConnectionsError``) instead of waiting, so a low bound would refuse ops
as ``unavailable`` with Redis idle (redis-py's default of 100 did, at 200 writing clients). There the bound
is Redis' own default ``maxclients``, and :class:`IdleReaper` is what gives connections back."""
REAP_INTERVAL_S = 1.0
"""How often :class:`IdleReaper` looks at the idle connections."""
_FSYNC_STRENGTH = {"always": 2, "everysec": 1, "no": 0}

RedisClient: TypeAlias = "redis.asyncio.Redis | RedisCluster"


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
    nodes: int | None = None
    """Cluster mode only: how many primaries were probed (all of them)."""

    def as_dict(self) -> dict[str, Any]:
        """The JSON form served under ``redis`` in ``/healthz``."""
        if not self.reachable:
            return {"reachable": False, "error": self.error}
        data = dataclasses.asdict(self)
        del data["error"]
        if self.nodes is None:
            del data["nodes"]
        return data


def make_client(
    url: str,
    *,
    cluster: bool = False,
    max_connections: int = 128,
    pool_wait_s: float = 5.0,
    timeout_s: float = 5.0,
) -> RedisClient:
    """The hub's Redis client for ``url``: raw bytes (frames are msgpack), bounded connect time, and every
    command bounded by ``timeout_s`` (socket timeout): a frozen primary (SIGSTOP, a stalled host) then turns
    the ops waiting on it into ``unavailable`` — retried by their clients — instead of acks that come when
    it wakes up, just before it learns it was demoted and discards them (docs/traps.md §4b).

    Standalone: at most ``max_connections`` connections; a command that finds them all busy waits up to
    ``pool_wait_s`` for one, then fails (``ConnectionError``: the op is ``unavailable``, retried by its
    client). ``cluster``: a ``RedisCluster`` that discovers the other nodes from the one ``url`` names, on
    first use, bounded by :data:`CLUSTER_MAX_CONNECTIONS` per node. Either way idle connections are given back
    by an :class:`IdleReaper` the app runs.
    """
    if cluster:
        client = RedisCluster.from_url(
            url,
            socket_connect_timeout=PROBE_TIMEOUT,
            socket_timeout=timeout_s,
            max_connections=CLUSTER_MAX_CONNECTIONS,
        )
        # One dict configures the nodes discovered later; the startup nodes exist already.
        client.connection_kwargs["connection_class"] = _packing_in_c(
            client.connection_kwargs["connection_class"]
        )
        for node in client.nodes_manager.startup_nodes.values():
            node.connection_class = _packing_in_c(node.connection_class)
        return client
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url,
        socket_connect_timeout=PROBE_TIMEOUT,
        socket_timeout=timeout_s,
        max_connections=max_connections,
        timeout=pool_wait_s,
    )
    pool.connection_class = _packing_in_c(pool.connection_class)
    return redis.asyncio.Redis.from_pool(pool)


class _HiredisPacking:
    """Packs commands with hiredis' C packer, as redis-py's blocking client does when hiredis is installed.

    redis-py's asyncio connections pack every command in Python: for an op script's EVALSHA (two dozen
    arguments) that took 34 µs against hiredis' 4.5 µs, a tenth of the hub's time per op under load.

    Each packed command also stamps ``used_at`` (monotonic seconds), which :class:`IdleReaper` reads.
    """

    used_at = 0.0

    def pack_command(self, *args: Any) -> list[bytes]:
        self.used_at = time.monotonic()
        first = args[0]
        # Like redis-py: a command name given with its subcommand ("SCRIPT LOAD") goes out as two arguments.
        if (isinstance(first, str) and " " in first) or (isinstance(first, bytes) and b" " in first):
            args = (*first.split(), *args[1:])
        return [hiredis.pack_command(args)]


_PACKING_CLASSES: dict[type[Any], type[Any]] = {}


def _packing_in_c(cls: type[Any]) -> type[Any]:
    """``cls`` (plain, TLS or Unix-socket connection, as the URL chose) packing with hiredis."""
    if issubclass(cls, _HiredisPacking):
        return cls
    if cls not in _PACKING_CLASSES:
        _PACKING_CLASSES[cls] = type(f"Hiredis{cls.__name__}", (_HiredisPacking, cls), {})
    return _PACKING_CLASSES[cls]


async def close_client(client: RedisClient) -> None:
    """Close ``client`` and every connection it holds.

    ``RedisCluster.aclose()`` does nothing while a topology refresh is pending — which is the case after any
    connection error, e.g. a primary that died — so its node connections would leak; they are closed here.
    """
    await client.aclose()
    if isinstance(client, RedisCluster):
        await client.nodes_manager.aclose()
        await client.nodes_manager.aclose("startup_nodes")


class IdleReaper:
    """Closes the client's pooled connections that sat unused for ``idle_s``, or whose server hung up.

    redis-py keeps every connection it ever opened (redis/redis-py#3430): a burst leaves dozens open, and
    after Redis restarts each one it does not reuse stays a dead socket (CLOSE_WAIT) forever — the hub held
    73 of them after five restarts. A dead one is seen without I/O (its reader is at end of file) and closed
    at the next pass; a live one goes after ``idle_s`` and is opened again by the next burst.

    Reads the pools' free lists (``_available_connections``; ``_free`` of each cluster node): redis-py has no
    public way to give back an idle connection. ``tests/e2e/test_operating.py`` (the capped pool, the fds
    after restarts) fails if an upgrade renames them, so that cannot happen silently.
    """

    def __init__(self, client: RedisClient, idle_s: float) -> None:
        self._client = client
        self.idle_s = idle_s
        self.closed = 0
        """Connections closed so far."""

    async def run(self, interval_s: float = REAP_INTERVAL_S) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.reap()
            except Exception as exc:  # never let one bad pass end the reaping
                log.warning("closing idle Redis connections failed: %s", exc)

    async def reap(self, now: float | None = None) -> int:
        """One pass; the number of connections closed."""
        now = time.monotonic() if now is None else now
        closed = 0
        for free, owner in self._free_lists():
            for connection in list(free):
                if connection.is_connected and not (
                    await connection.can_read() or now - getattr(connection, "used_at", now) >= self.idle_s
                ):
                    continue
                # Out of the pool before the (awaiting) close, so nobody is handed a closing connection.
                with contextlib.suppress(ValueError):
                    free.remove(connection)
                if owner is not None:
                    with contextlib.suppress(ValueError):
                        owner.remove(connection)
                with contextlib.suppress(Exception):
                    await connection.disconnect(nowait=True)
                closed += 1
        self.closed += closed
        return closed

    def _free_lists(self) -> Iterable[tuple[Any, list[Any] | None]]:
        """``(free connections, list that counts them against the cap or None)`` per pool."""
        if isinstance(self._client, RedisCluster):
            for node in self._client.get_nodes():
                yield node._free, node._connections
        else:
            yield self._client.connection_pool._available_connections, None


def node_connector(url: str, client: RedisClient) -> Callable[[], redis.asyncio.Redis]:
    """A factory of plain clients for pub/sub, which needs one connection to one server.

    Standalone: always ``url``. Cluster: each call takes the next node the cluster client knows (round
    robin; ``url`` itself until the client has discovered the cluster), with ``url``'s credentials and TLS.
    A classic PUBLISH reaches the subscribers of every node, so any node will do, and when the node of the
    current connection dies, the fan-out's next reconnect lands on another one.
    """
    if not isinstance(client, RedisCluster):
        return lambda: _plain(url)
    turn = itertools.count()

    def connect() -> redis.asyncio.Redis:
        nodes = sorted({(node.host, node.port) for node in client.get_nodes()})
        if not nodes:
            return _plain(url)
        host, port = nodes[next(turn) % len(nodes)]
        return _plain(_with_address(url, host, int(port)))

    return connect


def _plain(url: str) -> redis.asyncio.Redis:
    client: redis.asyncio.Redis = redis.asyncio.Redis.from_url(url, socket_connect_timeout=PROBE_TIMEOUT)
    pool = client.connection_pool
    pool.connection_class = _packing_in_c(pool.connection_class)
    return client


def _with_address(url: str, host: str, port: int) -> str:
    """``url`` pointing at ``host:port``, keeping its user, password, scheme and query (TLS options)."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{address}" if userinfo else address))


def waitaof_supported(server: str | None, version: str | None) -> bool:
    """WAITAOF exists in Redis ≥ 7.2 and in every Valkey (forked from 7.2). Debian's Redis 7.0 lacks it."""
    if server == "valkey":
        return True
    if server != "redis" or version is None:
        return False
    numbers = [int(part) for part in re.findall(r"\d+", version)[:2]]
    return len(numbers) == 2 and (numbers[0], numbers[1]) >= (7, 2)


async def probe(client: RedisClient) -> RedisStatus:
    """Ask the server who it is and how it persists; never raises, and answers within ``PROBE_TIMEOUT``.

    The bound is built in because a health check that hangs on a wedged Redis is worse than none. A cluster
    is probed node by node (every primary) and reported as its weakest node.
    """
    timeout = PROBE_TIMEOUT
    try:
        async with asyncio.timeout(timeout):
            if isinstance(client, RedisCluster):
                await client.initialize()
                primaries = client.get_primaries()
                nodes = [await _probe_node(client, node) for node in primaries]
            else:
                nodes = [await _probe_node(client, None)]
    except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
        reason = f"no answer within {timeout:g} s" if isinstance(exc, TimeoutError) else str(exc) or repr(exc)
        return RedisStatus(reachable=False, error=f"{type(exc).__name__}: {reason}")
    if not nodes:
        return RedisStatus(reachable=False, error="RedisClusterException: the cluster has no primary")
    return _weakest(nodes) if isinstance(client, RedisCluster) else nodes[0]


def _weakest(nodes: list[RedisStatus]) -> RedisStatus:
    """One status for a cluster: what every primary guarantees (see the module docstring)."""
    first = nodes[0]
    parts = [node.persistence for node in nodes if node.persistence is not None]
    assert len(parts) == len(nodes)  # every node answered
    known = [part.appendfsync for part in parts if part.appendfsync in _FSYNC_STRENGTH]
    appendfsync = min(known, key=_FSYNC_STRENGTH.__getitem__) if len(known) == len(parts) else None
    rdbs = [part.rdb for part in parts]
    return dataclasses.replace(
        first,
        persistence=Persistence(
            aof=all(part.aof for part in parts),
            appendfsync=appendfsync,
            rdb=None if None in rdbs else all(rdbs),
            loading=any(part.loading for part in parts),
        ),
        waitaof=all(node.waitaof for node in nodes),
        nodes=len(nodes),
    )


async def _probe_node(client: RedisClient, node: ClusterNode | None) -> RedisStatus:
    """One server's status (``node`` of a cluster, or the server of a plain client); raises when it fails."""
    target: dict[str, Any] = {} if node is None else {"target_nodes": node}
    server_info = await client.info("server", **target)
    persistence_info = await client.info("persistence", **target)
    appendfsync = await _config_get(client, "appendfsync", target)
    save = await _config_get(client, "save", target)
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


async def _config_get(client: RedisClient, name: str, target: dict[str, Any]) -> str | None:
    try:
        reply = await client.config_get(name, **target)
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
    if mode == "replicas":
        return (
            "An ack means the op has reached the configured number of replicas (WAIT): acked ops survive a "
            "failover and the loss of the primary's host; a timeout is answered unavailable and retried."
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
            "loses nothing unless the disk stalls an fsync (Redis then postpones its writes for up to 2 s), "
            "a power loss or kernel crash may lose the last seconds of acked ops.",
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
