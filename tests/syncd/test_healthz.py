"""/healthz in-process (Starlette TestClient) against Redis servers the tests start themselves."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
import redis
from starlette.testclient import TestClient

from syncd import __version__
from syncd.app import create_app, redact_url
from syncd.embedded import EmbeddedRedis, bundled_binary
from syncd.redis_info import Persistence, RedisStatus, check_durability, waitaof_supported
from syncd.settings import ConfigError, Settings

Factory = Callable[..., EmbeddedRedis]


def settings_for(server: EmbeddedRedis, **overrides: object) -> Settings:
    return Settings.from_env({}, redis_url=server.url, **overrides)


def test_healthz_reports_server_version_and_persistence(redis_server: EmbeddedRedis) -> None:
    with TestClient(create_app(settings_for(redis_server))) as http:
        response = http.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["version"] == __version__
    assert body["warnings"] == []
    assert body["redis"] == {
        "reachable": True,
        "server": redis_server.name,
        "version": redis_server.version,
        "mode": "standalone",
        "persistence": {"aof": True, "appendfsync": "everysec", "rdb": False, "loading": False},
        "waitaof": waitaof_supported(redis_server.name, redis_server.version),
        "replicas": 0,
    }
    assert body["durability"]["mode"] == "script"
    assert "appendfsync everysec" in body["durability"]["guarantee"]


def test_healthz_is_503_while_redis_is_down_and_recovers_after_restart(redis_server: EmbeddedRedis) -> None:
    with TestClient(create_app(settings_for(redis_server))) as http:
        assert http.get("/healthz").status_code == 200
        redis_server.kill()
        down = http.get("/healthz")
        assert down.status_code == 503
        assert down.json()["status"] == "degraded"
        assert down.json()["redis"]["reachable"] is False
        assert down.json()["redis"]["error"]
        redis_server.restart()
        assert http.get("/healthz").json()["status"] == "ok"


def test_valkey_with_fsync_durability_reports_waitaof(redis_server_factory: Factory) -> None:
    valkey = redis_server_factory(binary=bundled_binary())
    with TestClient(create_app(settings_for(valkey, durability="fsync"))) as http:
        body = http.get("/healthz").json()
    assert body["status"] == "ok"
    assert body["redis"]["server"] == "valkey"
    assert body["redis"]["waitaof"] is True
    assert body["durability"]["mode"] == "fsync"
    assert "WAITAOF" in body["durability"]["guarantee"]
    valkey.stop()


def test_redis_without_persistence_is_served_degraded_and_warned_about(
    redis_server_factory: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    volatile = redis_server_factory(appendonly=False)
    with (
        caplog.at_level(logging.INFO, logger="syncd"),
        TestClient(create_app(settings_for(volatile))) as http,
    ):
        response = http.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "degraded"
    assert "no persistence" in response.json()["warnings"][0]
    assert "memory only" in response.json()["durability"]["guarantee"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("no persistence" in message for message in warnings)
    volatile.stop()


def test_startup_logs_the_durability_guarantee_in_force(
    redis_server: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="syncd"), TestClient(create_app(settings_for(redis_server))):
        pass
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("syncd")]
    assert any(m.startswith("durability=script: An ack means") for m in messages)
    assert any(redis_server.url in m and redis_server.version in m for m in messages)


def test_fsync_durability_refuses_to_start_without_an_append_only_file(redis_server_factory: Factory) -> None:
    no_aof = redis_server_factory(binary=bundled_binary(), appendonly=False)
    with (
        pytest.raises(ConfigError, match="appendonly yes"),
        TestClient(create_app(settings_for(no_aof, durability="fsync"))),
    ):
        pass
    no_aof.stop()


@pytest.mark.parametrize(
    ("server", "version", "supported"),
    [
        ("redis", "7.0.15", False),
        ("redis", "7.2.0", True),
        ("valkey", "7.2.5", True),
        ("valkey", "9.1.2", True),
    ],
)
def test_fsync_durability_needs_waitaof(server: str, version: str, supported: bool) -> None:
    """Debian's Redis 7.0 has no WAITAOF: ``fsync`` must refuse it rather than promise less."""
    assert waitaof_supported(server, version) is supported
    status = RedisStatus(
        reachable=True,
        server=server,
        version=version,
        mode="standalone",
        persistence=Persistence(aof=True, appendfsync="everysec", rdb=False, loading=False),
        waitaof=supported,
    )
    if supported:
        assert check_durability("fsync", status) == []
    else:
        with pytest.raises(ConfigError, match="WAITAOF"):
            check_durability("fsync", status)


def test_replicas_durability_without_a_replica_online_is_served_degraded(redis_server: EmbeddedRedis) -> None:
    """Every op would be unavailable: the hub says why, in its log and in /healthz."""
    with TestClient(create_app(settings_for(redis_server, durability="replicas"))) as http:
        body = http.get("/healthz").json()
    assert body["status"] == "degraded" and body["redis"]["replicas"] == 0
    assert any("no replica online" in warning for warning in body["warnings"])
    assert body["durability"]["mode"] == "replicas" and "WAIT" in body["durability"]["guarantee"]


def test_create_app_needs_a_redis_url() -> None:
    with pytest.raises(ConfigError, match="redis_url"):
        create_app(Settings())


def test_logged_urls_hide_the_password() -> None:
    assert redact_url("redis://:s3cret@db:6379/0") == "redis://:***@db:6379/0"
    assert redact_url("redis://app:s3cret@db") == "redis://app:***@db"
    assert redact_url("redis://db:6379") == "redis://db:6379"


@pytest.mark.parametrize(
    ("server", "version", "supported"),
    [
        ("redis", "7.0.15", False),
        ("redis", "7.2.0", True),
        ("redis", "8.0.1", True),
        ("valkey", "7.2.5", True),
    ],
)
def test_waitaof_support_follows_server_and_version(server: str, version: str, supported: bool) -> None:
    assert waitaof_supported(server, version) is supported


def test_a_cluster_is_probed_node_by_node_and_reported_as_its_weakest_primary(
    cluster_factory: Callable[..., list[EmbeddedRedis]],
) -> None:
    nodes = cluster_factory()
    weak = redis.Redis(host=nodes[2].host, port=nodes[2].port)
    try:
        weak.config_set("appendfsync", "no")  # one primary fsyncs less than the others
    finally:
        weak.close()
    settings = Settings.from_env({}, redis_url=nodes[0].url, redis_cluster=True)
    with TestClient(create_app(settings)) as http:
        body = http.get("/healthz").json()
        assert body["redis"]["mode"] == "cluster"
        assert body["redis"]["nodes"] == 3
        assert body["redis"]["persistence"]["appendfsync"] == "no"
        assert body["status"] == "degraded"
        assert any("appendfsync no" in warning for warning in body["warnings"])
        nodes[1].kill()  # a primary that does not answer: its slots cannot be served
        down = http.get("/healthz")
        assert down.status_code == 503
        assert down.json()["redis"]["reachable"] is False
    for node in nodes:
        node.stop()
