"""Fixtures shared by the whole suite.

Redis: every server a test talks to is started here, through ``syncd.embedded.EmbeddedRedis``, on a free
loopback port and in a fresh temporary directory. Tests may ``kill()`` (SIGKILL, like a crash) and
``restart()`` (same port, same data) their servers, and never touch a Redis they did not start.

- ``redis_server`` — a fresh server for one test, stopped after it. Has ``.url``, ``.kill()``, ``.restart()``,
  ``.pid``, ``.name``/``.version`` and the rest of :class:`~syncd.embedded.EmbeddedRedis`.
- ``redis_server_factory`` — session-scoped; ``redis_server_factory(**kwargs)`` starts one more server and
  returns it. ``kwargs`` go to ``EmbeddedRedis``: ``binary=bundled_binary()`` for Valkey (WAITAOF),
  ``appendonly=False``, ``appendfsync="always"``, ``extra_args=["--cluster-enabled", "yes"]``, ``data_dir=``.
  Servers still running at the end of the session are stopped then; a test may ``stop()`` its own earlier.
  Being session-scoped, it also serves module- or session-scoped fixtures that share one server.

Redis Cluster (bundled Valkey, for WAITAOF), built by :func:`start_cluster` with plain commands:

- ``valkey_cluster`` — a 3-primary cluster shared by the session (tests flush it before use);
- ``cluster_factory(**kwargs)`` — one more private cluster, for tests that kill nodes or need their own
  configuration; ``kwargs`` go to :func:`start_cluster` (``nodes=``, ``extra_args=``). Its nodes are stopped
  at the end of the session, or earlier by the test.

Which binary: the same as ``syncd serve`` would pick (``redis-server``/``valkey-server`` on PATH, else the
bundled Valkey), so the suite exercises what this machine would run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import redis

from syncd.embedded import EmbeddedRedis, bundled_binary
from tests import profiles  # noqa: F401  (loads the Hypothesis profile before any test module)
from tests.exit_guard import pytest_sessionfinish, pytest_unconfigure  # noqa: F401  (a stuck thread never hangs the run)

RedisServerFactory = Callable[..., EmbeddedRedis]
ClusterFactory = Callable[..., list[EmbeddedRedis]]
CLUSTER_NODES = 3
SLOTS = 16384


@pytest.fixture(scope="session")
def redis_server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServerFactory]:
    started: list[EmbeddedRedis] = []

    def start(**kwargs: Any) -> EmbeddedRedis:
        kwargs.setdefault("data_dir", tmp_path_factory.mktemp("redis"))
        server = EmbeddedRedis(**kwargs).start()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture
def redis_server(redis_server_factory: RedisServerFactory) -> Iterator[EmbeddedRedis]:
    server = redis_server_factory()
    yield server
    server.stop()


def start_cluster(
    factory: Callable[..., EmbeddedRedis],
    nodes: int = CLUSTER_NODES,
    extra_args: Sequence[str] = (),
    binary: str | None = None,
) -> list[EmbeddedRedis]:
    """Start ``nodes`` Valkey primaries and join them into one cluster covering every slot.

    Done with plain commands through redis-py (CLUSTER SET-CONFIG-EPOCH / ADDSLOTSRANGE / MEET), the steps of
    ``redis-cli --cluster create --cluster-replicas 0``, so no extra binary is needed. Valkey (bundled) is
    used because it has WAITAOF, so durability is testable on the cluster too. Node ``i`` serves the ``i``-th
    equal share of the slots. ``extra_args`` are appended to every node's command line (e.g.
    ``["--cluster-require-full-coverage", "no"]``); ``binary`` another server than Valkey. Returns once
    every node reports ``cluster_state:ok``,
    knows every other node and holds both bus links with each (``CLUSTER LINKS``): a node broadcasts a
    PUBLISH over its links, so a message sent while one is still being set up can miss a node, and the hubs'
    fan-out (subscribed on any one node) would miss the event.
    """
    servers = [
        factory(
            binary=binary or bundled_binary(),
            extra_args=["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", *extra_args],
        )
        for _ in range(nodes)
    ]
    clients = [redis.Redis(host=s.host, port=s.port) for s in servers]
    try:
        step = SLOTS // nodes
        for i, client in enumerate(clients):
            client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
            last = SLOTS - 1 if i == nodes - 1 else (i + 1) * step - 1
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", i * step, last)
        for server in servers[1:]:
            clients[0].execute_command("CLUSTER", "MEET", server.host, server.port)
        deadline = time.monotonic() + 60
        while not all(_cluster_ready(client, nodes) for client in clients):
            if time.monotonic() > deadline:
                raise TimeoutError("the cluster did not reach cluster_state:ok")
            time.sleep(0.05)
    finally:
        for client in clients:
            client.close()
    return servers


def add_replicas(
    factory: Callable[..., EmbeddedRedis],
    primaries: list[EmbeddedRedis],
    extra_args: Sequence[str] = (),
    binary: str | None = None,
) -> list[EmbeddedRedis]:
    """One replica for each primary of a cluster made by :func:`start_cluster` (``replicas[i]`` follows
    ``primaries[i]``), as ``redis-cli --cluster add-node --cluster-slave`` would: MEET, then CLUSTER
    REPLICATE. Returns once every primary reports its replica online and every node knows every other."""
    replicas = [
        factory(
            binary=binary or bundled_binary(),
            extra_args=["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", *extra_args],
        )
        for _ in primaries
    ]
    total = len(primaries) + len(replicas)
    clients = [redis.Redis(host=s.host, port=s.port) for s in [*primaries, *replicas]]
    try:
        ids = [client.execute_command("CLUSTER", "MYID").decode() for client in clients[: len(primaries)]]
        for server in replicas:
            clients[0].execute_command("CLUSTER", "MEET", server.host, server.port)
        deadline = time.monotonic() + 60
        while True:
            try:
                for i, client in enumerate(clients[len(primaries) :]):
                    client.execute_command("CLUSTER", "REPLICATE", ids[i])
                break
            except redis.ResponseError:  # "Unknown node": the MEET has not reached it yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        while not all(_cluster_ready(client, total) for client in clients) or not all(
            client.info("replication").get("slave0", {}).get("state") == "online"
            for client in clients[: len(primaries)]
        ):
            if time.monotonic() > deadline:
                raise TimeoutError("the replicas did not come online")
            time.sleep(0.05)
    finally:
        for client in clients:
            client.close()
    return replicas


def _cluster_ready(client: redis.Redis, nodes: int) -> bool:
    info = client.execute_command("CLUSTER", "INFO").decode()
    fields = dict(line.split(":", 1) for line in info.split() if ":" in line)
    if fields.get("cluster_state") != "ok" or fields.get("cluster_known_nodes") != str(nodes):
        return False
    links = client.execute_command("CLUSTER", "LINKS")  # one "to" and one "from" link per other node
    return len(links) == 2 * (nodes - 1)


@pytest.fixture(scope="session")
def cluster_factory(redis_server_factory: RedisServerFactory) -> ClusterFactory:
    """``cluster_factory(**kwargs)`` starts one more private cluster (for tests that kill or reconfigure
    nodes); ``kwargs`` go to :func:`start_cluster`."""
    return lambda **kwargs: start_cluster(redis_server_factory, **kwargs)


@pytest.fixture(scope="session")
def valkey_cluster(redis_server_factory: RedisServerFactory) -> list[EmbeddedRedis]:
    """A 3-primary Valkey cluster (AOF on, everysec), shared by the session."""
    return start_cluster(redis_server_factory)
