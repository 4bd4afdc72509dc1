import dataclasses
from pathlib import Path

import pytest

from syncd.settings import ConfigError, Settings, env_var


def test_defaults_describe_a_local_hub_with_the_embedded_server() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.redis_url is None
    assert settings.embedded
    assert settings.data_dir == Path("var")
    assert settings.log_level == "info"
    assert settings.durability == "auto" and settings.ack_durability == "script"
    assert Settings(redis_url="redis://h:1", redis_cluster=True).ack_durability == "replicas"
    assert (settings.wait_replicas, settings.redis_timeout_ms) == (1, 5_000)
    assert settings.allowed_origins == ()
    assert (settings.heartbeat_ms, settings.max_frame) == (15_000, 65_536)


def test_every_field_is_read_from_its_syncd_variable() -> None:
    environ = {
        "SYNCD_HOST": "0.0.0.0",
        "SYNCD_PORT": "9000",
        "SYNCD_REDIS_URL": "redis://db:6379/2",
        "SYNCD_REDIS_CLUSTER": "No",
        "SYNCD_DATA_DIR": "/srv/syncd",
        "SYNCD_LOG_LEVEL": "DEBUG",
        "SYNCD_DURABILITY": "fsync",
        "SYNCD_ALLOWED_ORIGINS": "https://shop.example.com, http://localhost:5173/",
        "SYNCD_HEARTBEAT_MS": "20000",
        "SYNCD_MAX_FRAME": "131072",
        "SYNCD_TOKEN_SECRET": "k" * 40,
        "SYNCD_TOKEN_ALGORITHM": "es256",
        "SYNCD_TOKEN_PUBLIC_KEY": "/etc/syncd/tokens.pem",
        "SYNCD_MAX_BATCH": "128",
        "SYNCD_MAX_SUBSCRIPTIONS": "50",
        "SYNCD_OP_RATE": "500",
        "SYNCD_OP_BURST": "5_000",
        "SYNCD_SEND_QUEUE_BYTES": "1_048_576",
        "SYNCD_HANDSHAKE_TIMEOUT_MS": "5000",
        "SYNCD_MAX_PENDING_PER_ADDRESS": "32",
        "SYNCD_MAX_CONNECTIONS_PER_CLIENT": "2",
        "SYNCD_DEDUP_RETENTION_S": "1209600",
        "SYNCD_HISTORY_MAXLEN": "2000",
        "SYNCD_HISTORY_MAX_AGE_S": "86400",
        "SYNCD_STOCK_CLEARING_TIME": "04:00",
        "SYNCD_STOCK_CLEARING_TZ": "Europe/Paris",
        "SYNCD_STOCK_DEFAULT_HOLD": "600000",
        "SYNCD_LOG_FORMAT": "JSON",
        "SYNCD_TOKEN_ISSUER": "https://id.example.com",
        "SYNCD_REDIS_MAX_CONNECTIONS": "32",
        "SYNCD_REDIS_POOL_WAIT_MS": "250",
        "SYNCD_REDIS_IDLE_S": "5",
        "SYNCD_METRICS": "off",
        "SYNCD_ALERT_SYNC_P99_MS": "250",
        "SYNCD_ALERT_FAILURE_RATE": "0.005",
        "SYNCD_ALERT_WINDOW_S": "30",
        "SYNCD_WAIT_REPLICAS": "2",
        "SYNCD_REDIS_TIMEOUT_MS": "800",
    }
    assert {env_var(f.name) for f in dataclasses.fields(Settings)} == set(environ)
    settings = Settings.from_env(environ)
    assert settings == Settings(
        host="0.0.0.0",
        port=9000,
        redis_url="redis://db:6379/2",
        redis_cluster=False,
        data_dir=Path("/srv/syncd"),
        log_level="debug",
        durability="fsync",
        allowed_origins=("https://shop.example.com", "http://localhost:5173"),
        heartbeat_ms=20_000,
        max_frame=131_072,
        token_secret="k" * 40,
        token_algorithm="ES256",
        token_public_key=Path("/etc/syncd/tokens.pem"),
        max_batch=128,
        max_subscriptions=50,
        op_rate=500,
        op_burst=5000,
        send_queue_bytes=1_048_576,
        handshake_timeout_ms=5000,
        max_pending_per_address=32,
        max_connections_per_client=2,
        dedup_retention_s=14 * 24 * 3600,
        history_maxlen=2000,
        history_max_age_s=86_400,
        stock_clearing_time="04:00",
        stock_clearing_tz="Europe/Paris",
        stock_default_hold="600000",
        log_format="json",
        token_issuer="https://id.example.com",
        redis_max_connections=32,
        redis_pool_wait_ms=250,
        wait_replicas=2,
        redis_timeout_ms=800,
        redis_idle_s=5,
        metrics=False,
        alert_sync_p99_ms=250,
        alert_failure_rate=0.005,
        alert_window_s=30,
    )
    assert not settings.embedded


@pytest.mark.parametrize(("value", "expected"), [("1", True), (" TRUE ", True), ("on", True), ("off", False)])
def test_redis_cluster_reads_a_boolean_and_needs_a_cluster_node_url(value: str, expected: bool) -> None:
    environ = {"SYNCD_REDIS_URL": "redis://:pw@node-1:7000", "SYNCD_REDIS_CLUSTER": value}
    assert Settings.from_env(environ).redis_cluster is expected
    assert Settings.from_env(environ, redis_cluster=True).redis_cluster  # the --redis-cluster flag
    assert not Settings().redis_cluster


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"SYNCD_REDIS_CLUSTER": "maybe"}, "expected one of 1, true"),
        ({"SYNCD_REDIS_CLUSTER": "1"}, "got 'the embedded server'"),
        ({"SYNCD_REDIS_CLUSTER": "1", "SYNCD_REDIS_URL": "unix:///run/redis.sock"}, "got 'a unix:// URL'"),
        ({"SYNCD_REDIS_CLUSTER": "1", "SYNCD_REDIS_URL": "redis://:pw@node-1:7000/3"}, "got 'database 3'"),
    ],
)
def test_redis_cluster_refuses_what_cannot_be_a_cluster(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match="SYNCD_REDIS_CLUSTER") as raised:
        Settings.from_env(environ)
    assert message in str(raised.value)
    assert "pw" not in str(raised.value)  # the URL's password is never echoed


def test_overrides_win_over_the_environment_and_none_means_not_given() -> None:
    environ = {"SYNCD_PORT": "9000", "SYNCD_HOST": "0.0.0.0"}
    settings = Settings.from_env(environ, port="9100", host=None, max_frame=4096)
    assert (settings.port, settings.host, settings.max_frame) == (9100, "0.0.0.0", 4096)


def test_empty_variable_counts_as_unset_and_empty_override_selects_the_default() -> None:
    assert Settings.from_env({"SYNCD_REDIS_URL": "", "SYNCD_PORT": ""}) == Settings()
    assert Settings.from_env({"SYNCD_REDIS_URL": "redis://db"}, redis_url="").redis_url is None


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SYNCD_PORT", "http"),
        ("SYNCD_PORT", "0"),
        ("SYNCD_PORT", "70000"),
        ("SYNCD_REDIS_URL", "localhost:6379"),
        ("SYNCD_LOG_LEVEL", "verbose"),
        ("SYNCD_DURABILITY", "always"),
        ("SYNCD_ALLOWED_ORIGINS", "*"),
        ("SYNCD_ALLOWED_ORIGINS", "https://shop.example.com/cart"),
        ("SYNCD_ALLOWED_ORIGINS", "ftp://shop.example.com"),
        ("SYNCD_ALLOWED_ORIGINS", "https://shop.example.com:99999"),
        ("SYNCD_HEARTBEAT_MS", "10"),
        ("SYNCD_MAX_FRAME", "100"),
        ("SYNCD_MAX_FRAME", str(64 * 1024 * 1024)),
    ],
)
def test_a_bad_value_fails_with_a_message_naming_its_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable) as raised:
        Settings.from_env({variable: value})
    assert value in str(raised.value)


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(ConfigError, match="SYNCD_PORT"):
        Settings(port=True)
    with pytest.raises(ConfigError, match="SYNCD_DURABILITY"):
        Settings(durability="sometimes")  # type: ignore[arg-type]


def test_unknown_override_is_refused() -> None:
    with pytest.raises(ConfigError, match="redis_uri"):
        Settings.from_env({}, redis_uri="redis://db")


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().port = 1  # type: ignore[misc]


def test_origin_allowlist_admits_non_browser_clients_and_listed_origins_only() -> None:
    closed = Settings()
    assert closed.origin_allowed(None)
    assert not closed.origin_allowed("https://shop.example.com")
    listed = Settings.from_env({"SYNCD_ALLOWED_ORIGINS": "https://shop.example.com"})
    assert listed.origin_allowed("https://shop.example.com")
    assert listed.origin_allowed("HTTPS://Shop.Example.com")
    assert not listed.origin_allowed("https://shop.example.com.evil.test")
    assert not listed.origin_allowed("http://shop.example.com")
    assert not listed.origin_allowed("null")


def test_origin_list_may_be_given_as_a_sequence() -> None:
    settings = Settings.from_env({}, allowed_origins=["https://a.example", " https://b.example/ "])
    assert settings.allowed_origins == ("https://a.example", "https://b.example")


def test_cli_reports_a_bad_setting_in_one_line_and_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from syncd.cli import main

    monkeypatch.delenv("SYNCD_PORT", raising=False)
    assert main(["serve", "--port", "http"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "SYNCD_PORT (--port)" in err


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("SYNCD_TOKEN_SECRET", "short", "at least 32 characters"),
        ("SYNCD_TOKEN_ALGORITHM", "none", "one of HS256, RS256, ES256"),
        ("SYNCD_TOKEN_ALGORITHM", "RS256", "a PEM file exactly when"),
        ("SYNCD_MAX_BATCH", "0", "SYNCD_MAX_BATCH"),
        ("SYNCD_SEND_QUEUE_BYTES", "65535", "from 65536 to"),
        ("SYNCD_HANDSHAKE_TIMEOUT_MS", "99", "SYNCD_HANDSHAKE_TIMEOUT_MS"),
        ("SYNCD_MAX_PENDING_PER_ADDRESS", "0", "SYNCD_MAX_PENDING_PER_ADDRESS"),
        ("SYNCD_MAX_CONNECTIONS_PER_CLIENT", "0", "SYNCD_MAX_CONNECTIONS_PER_CLIENT"),
    ],
)
def test_hub_limits_and_token_settings_are_validated(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        Settings.from_env({variable: value})
    assert "short" not in str(err.value)  # a secret is never echoed


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"SYNCD_ALERT_FAILURE_RATE": "0"}, "a fraction above 0"),
        ({"SYNCD_ALERT_FAILURE_RATE": "1.5"}, "a fraction above 0"),
        ({"SYNCD_ALERT_FAILURE_RATE": "1%"}, "expected a number"),
        ({"SYNCD_ALERT_SYNC_P99_MS": "0"}, "an integer from 1"),
        ({"SYNCD_ALERT_WINDOW_S": "1"}, "an integer from 5"),
        ({"SYNCD_METRICS": "maybe"}, "expected one of 1, true"),
    ],
)
def test_metrics_and_alert_settings_refuse_nonsense(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(environ)


def test_alert_defaults_are_the_brand_promise_of_500_ms_and_1_percent() -> None:
    settings = Settings()
    assert (settings.metrics, settings.alert_sync_p99_ms, settings.alert_failure_rate) == (True, 500, 0.01)
    assert settings.alert_window_s == 60
