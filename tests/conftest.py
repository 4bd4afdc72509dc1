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

Which binary: the same as ``syncd serve`` would pick (``redis-server``/``valkey-server`` on PATH, else the
bundled Valkey), so the suite exercises what this machine would run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from syncd.embedded import EmbeddedRedis

RedisServerFactory = Callable[..., EmbeddedRedis]


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
