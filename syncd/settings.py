"""Every option of the hub, in one frozen object read once at startup.

Each field ``name`` can be set four ways, later ones winning: its default, a key ``name`` in a TOML config
file (``--config`` / ``SYNCD_CONFIG``), the environment variable ``SYNCD_<NAME>`` (e.g. ``SYNCD_REDIS_URL``)
and the ``syncd serve`` flag ``--<name>`` (dashes for underscores). Nothing is listed by hand: the flags, the
variables and their help text (the field's docstring) are derived from the fields, so a new field gets all
of them at once, and ``tests/syncd/test_config.py`` checks that README.md documents it in both languages.
Values are validated when the object is built, so a typo fails the start with a message naming the variable,
instead of surfacing later as a confusing runtime error. An empty environment variable counts as unset, so
``SYNCD_REDIS_URL=`` in a compose file means "embedded", not "invalid URL".

Durability (``SYNCD_DURABILITY``) — what an ack promises (docs/design.md §4, docs/traps.md §1):

``auto`` (default)
    ``replicas`` with ``SYNCD_REDIS_CLUSTER`` (a cluster is there to survive losing a node), else ``script``.
``script``
    The hub acks as soon as the operation's Lua script has returned. The change is applied in Redis and queued
    for its append-only file; with the embedded server's ``appendfsync everysec`` a crash of the Redis process
    loses nothing (the OS page cache survives it), while a power loss or kernel crash can lose about the last
    second of acked ops. The exact sentence for the server actually connected is in ``/healthz``.
``fsync``
    After the script, the hub runs ``WAITAOF 1 0 <timeout>`` and acks only once Redis confirms the change is
    fsynced to its local append-only file: acked ops survive a power loss of the Redis host. Replicas are not
    awaited (Redis replication is asynchronous, docs/traps.md §4). Needs WAITAOF (Redis ≥ 7.2 or Valkey) and
    ``appendonly yes``; the hub refuses to start otherwise rather than silently promise less.
``replicas``
    After the script, the hub runs ``WAIT <wait_replicas> <timeout>`` and acks only once that many replicas
    hold the change: a failover (which promotes a replica) keeps every acked op. A timeout is an unknown
    outcome, answered ``unavailable``: the client retries the op with the same seq, never sees it acked
    twice or lost. Works on every Redis (WAIT is old) and needs replicas to be there: without enough of them
    every op is answered ``unavailable``.

Origins (``SYNCD_ALLOWED_ORIGINS``): a comma-separated list of ``scheme://host[:port]``. Browsers always send
an ``Origin`` header on websocket handshakes, so the empty default admits no browser page at all; native apps,
POS terminals and backends send none and are admitted (they authenticate by token, docs/design.md §5).
"""

from __future__ import annotations

import ast
import dataclasses
import datetime as dt
import functools
import inspect
import os
import textwrap
import tomllib
import types
import typing
import zoneinfo
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from protocol import stock as stock_rules
from protocol.errors import SyncError
from syncd.holds import DEFAULT_CLEARING_TZ, HoldPolicy

Durability = Literal["script", "replicas", "fsync"]
DURABILITY_MODES: tuple[Durability, ...] = ("script", "replicas", "fsync")
DurabilitySetting = Literal["auto", "script", "replicas", "fsync"]
"""``auto``: ``replicas`` on a Redis Cluster (its point is failover), ``script`` on a single Redis."""
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
LOG_FORMATS = ("text", "json")
ENV_PREFIX = "SYNCD_"
CONFIG_ENV = "SYNCD_CONFIG"
"""The environment variable naming the TOML config file (the ``--config`` flag wins over it)."""

# Bounds: a heartbeat under a second only burns battery and bandwidth on phones; over ten minutes NATs and
# proxies drop idle connections first. 16 MiB is uvicorn's loose default (docs/traps.md §12), never
# something to raise beyond; under 1 KiB even a hello frame does not fit.
HEARTBEAT_MS_RANGE = (1_000, 600_000)
MAX_FRAME_RANGE = (1_024, 16 * 1024 * 1024)
REDIS_URL_SCHEMES = ("redis", "rediss", "unix")
TOKEN_ALGORITHMS = ("HS256", "RS256", "ES256")


class ConfigError(SyncError, ValueError):
    """The hub cannot start as configured: a bad value or an incompatible combination. Fix it and restart."""


def env_var(field_name: str) -> str:
    """The environment variable that sets ``field_name`` (``redis_url`` → ``SYNCD_REDIS_URL``)."""
    return ENV_PREFIX + field_name.upper()


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """The hub's configuration. Build it with :meth:`from_env`; direct construction validates too."""

    host: str = "127.0.0.1"
    """Address to listen on."""
    port: int = 8000
    """Port to listen on."""
    redis_url: str | None = None
    """Redis URL (redis://, rediss://, unix://); unset: start the embedded server under the data dir.

    ``None``: start the embedded Redis-compatible server under ``data_dir`` (see ``syncd.embedded``)."""
    redis_cluster: bool = False
    """The Redis URL names one node of a Redis Cluster.

    The store speaks the cluster protocol (slots, MOVED) through ``RedisCluster``, and fan-out subscribes on
    any one node (a classic PUBLISH reaches every node). Needs an explicit ``redis://``/``rediss://`` URL: the
    embedded server is a single node, not a cluster."""
    redis_max_connections: int = 128
    """Connections the hub may open to Redis (per node of a cluster); an op waits for a free one."""
    redis_pool_wait_ms: int = 5_000
    """How long an op waits for a free Redis connection before it is refused as unavailable."""
    redis_idle_s: int = 60
    """Seconds an idle Redis connection is kept before it is closed (dead ones are closed at once)."""
    data_dir: Path = Path("./var")
    """Where the embedded server, the token secret and the archive keep their files."""
    log_level: str = "info"
    """Log level: critical, error, warning, info or debug."""
    log_format: str = "text"
    """Log format: text (one line per record) or json (one JSON object per line, for log shippers)."""
    durability: DurabilitySetting = "auto"
    """When an op is acked: after its script, its replication, or its AOF fsync (auto: by deployment)."""
    wait_replicas: int = 1
    """Replicas that must confirm an op before its ack with durability replicas."""
    redis_timeout_ms: int = 5_000
    """How long any Redis call may take before its op is answered unavailable (and retried)."""
    allowed_origins: tuple[str, ...] = ()
    """Comma-separated browser origins allowed to connect (apps and tills send none)."""
    heartbeat_ms: int = 15_000
    """Heartbeat interval of the protocol, in milliseconds."""
    max_frame: int = 65_536
    """Largest websocket frame accepted, in bytes."""
    token_secret: str | None = None
    """HS256 secret of client tokens; unset: one is created in the data dir.

    ``None``: a random one is created once in ``<data_dir>/token-secret`` (development)."""
    token_algorithm: str = "HS256"
    """Token algorithm: HS256, or RS256/ES256 with a public key.

    Fixed by configuration, never read from a token."""
    token_public_key: Path | None = None
    """PEM file of the key that verifies RS256/ES256 tokens."""
    token_issuer: str = "syncd"
    """The ``iss`` claim every token must carry (``syncd token`` writes it)."""
    max_batch: int = 256
    """Ops in one ``ops`` frame."""
    max_subscriptions: int = 100
    """Subscriptions one connection may hold."""
    op_rate: int = 2_000
    """Ops per second one connection may sustain (a token bucket)."""
    op_burst: int = 20_000
    """Ops one connection may send at once (a till replaying a day offline fits in one burst)."""
    send_queue_bytes: int = 4 * 1024 * 1024
    """Bytes queued for one client before it is disconnected as a slow consumer (close 4001).

    A client that reads nothing for a heartbeat interval is disconnected the same way, whichever comes first.
    Bytes, not frames: a queue of a few thousand snapshot pages would be gigabytes."""
    handshake_timeout_ms: int = 10_000
    """Milliseconds a new connection has for its HTTP request, then again for its hello."""
    max_pending_per_address: int = 256
    """Connections from one IP address that have not sent hello yet; more are closed with 4000."""
    max_connections_per_client: int = 8
    """Open connections of one client_id; a hello beyond it is closed with 4000."""
    dedup_retention_s: int = 7 * 24 * 3600
    """Seconds the hub remembers op outcomes: at least the longest time a device stays offline."""
    history_maxlen: int = 10_000
    """Events kept per topic for resume; a client further behind gets a reset snapshot."""
    history_max_age_s: int = 7 * 24 * 3600
    """Seconds events are kept per topic at most (trimmed as the topic is written)."""
    stock_clearing_time: str = "00:00"
    """The brand's daily clearing time (HH:MM, local): holds until "clearing" end then."""
    stock_clearing_tz: str = DEFAULT_CLEARING_TZ
    """The time zone of the clearing time (IANA name, daylight saving followed)."""
    stock_default_hold: str = "clearing"
    """How long a reservation without ttl_ms or until holds: clearing, or milliseconds."""
    metrics: bool = True
    """Serve Prometheus metrics at /metrics and publish this hub's figures to the dashboard."""
    alert_sync_p99_ms: int = 500
    """Dashboard alert: a channel's p99 sync latency (devices' reports) above this many milliseconds."""
    alert_failure_rate: float = 0.01
    """Dashboard alert: ops rejected or refused, as a fraction of all ops, above this (0.01 = 1 %)."""
    alert_window_s: int = 60
    """Seconds of recent figures the alerts and device latency reports are judged over."""

    @property
    def ack_durability(self) -> Durability:
        """The durability in force: ``auto`` resolved to ``replicas`` on a cluster, ``script`` otherwise."""
        if self.durability != "auto":
            return self.durability
        return "replicas" if self.redis_cluster else "script"

    def __post_init__(self) -> None:
        _require(
            isinstance(self.host, str) and self.host.strip() != "", "host", "a non-empty host name", self.host
        )
        _check_int("port", self.port, 1, 65_535)
        if self.redis_url is not None:
            _require(
                isinstance(self.redis_url, str) and urlsplit(self.redis_url).scheme in REDIS_URL_SCHEMES,
                "redis_url",
                "a URL starting with redis://, rediss:// or unix:// (or unset for the embedded server)",
                self.redis_url,
            )
        _require(isinstance(self.redis_cluster, bool), "redis_cluster", "a boolean", self.redis_cluster)
        _check_int("redis_max_connections", self.redis_max_connections, 4, 10_000)
        _check_int("redis_pool_wait_ms", self.redis_pool_wait_ms, 10, 600_000)
        _check_int("redis_idle_s", self.redis_idle_s, 1, 24 * 3600)
        if self.redis_cluster:
            # Echo the scheme and database only: the URL may carry a password (docs/traps.md §14).
            parts = urlsplit(self.redis_url or "")
            _require(
                parts.scheme in ("redis", "rediss") and parts.path in ("", "/", "/0"),
                "redis_cluster",
                "a redis:// or rediss:// URL of a cluster node, database 0, in SYNCD_REDIS_URL (the embedded "
                "server and unix sockets are single nodes; a cluster has database 0 only)",
                "the embedded server"
                if self.redis_url is None
                else f"a {parts.scheme}:// URL"
                if parts.scheme not in ("redis", "rediss")
                else f"database {parts.path.lstrip('/')}",
            )
        _require(
            isinstance(self.data_dir, Path),
            "data_dir",
            "a directory path",
            self.data_dir,
        )
        _require(self.log_level in LOG_LEVELS, "log_level", "one of " + ", ".join(LOG_LEVELS), self.log_level)
        _require(
            self.log_format in LOG_FORMATS, "log_format", "one of " + ", ".join(LOG_FORMATS), self.log_format
        )
        _require(
            self.durability == "auto" or self.durability in DURABILITY_MODES,
            "durability",
            "one of auto, " + ", ".join(DURABILITY_MODES),
            self.durability,
        )
        _check_int("wait_replicas", self.wait_replicas, 1, 16)
        _check_int("redis_timeout_ms", self.redis_timeout_ms, 100, 600_000)
        _require(isinstance(self.allowed_origins, tuple), "allowed_origins", "a tuple", self.allowed_origins)
        for origin in self.allowed_origins:
            _require(
                _is_canonical_origin(origin),
                "allowed_origins",
                "comma-separated origins of the form https://host[:port] (lowercase, no path; no wildcard)",
                origin,
            )
        _check_int("heartbeat_ms", self.heartbeat_ms, *HEARTBEAT_MS_RANGE)
        _check_int("max_frame", self.max_frame, *MAX_FRAME_RANGE)
        _require(
            self.token_secret is None or (isinstance(self.token_secret, str) and len(self.token_secret) > 31),
            "token_secret",
            "at least 32 characters",
            "<redacted>",
        )
        _require(
            self.token_algorithm in TOKEN_ALGORITHMS,
            "token_algorithm",
            "one of " + ", ".join(TOKEN_ALGORITHMS),
            self.token_algorithm,
        )
        _require(
            (self.token_algorithm == "HS256") == (self.token_public_key is None),
            "token_public_key",
            "a PEM file exactly when token_algorithm is RS256 or ES256",
            self.token_public_key,
        )
        _require(
            isinstance(self.token_issuer, str) and 0 < len(self.token_issuer) <= 256,
            "token_issuer",
            "a non-empty string",
            self.token_issuer,
        )
        _check_int("max_batch", self.max_batch, 1, 1024)
        _check_int("max_subscriptions", self.max_subscriptions, 1, 100_000)
        _check_int("op_rate", self.op_rate, 1, 1_000_000)
        _check_int("op_burst", self.op_burst, 1, 10_000_000)
        _check_int("send_queue_bytes", self.send_queue_bytes, 64 * 1024, 1024 * 1024 * 1024)
        _check_int("handshake_timeout_ms", self.handshake_timeout_ms, 100, 600_000)
        _check_int("max_pending_per_address", self.max_pending_per_address, 1, 1_000_000)
        _check_int("max_connections_per_client", self.max_connections_per_client, 1, 10_000)
        _check_int("dedup_retention_s", self.dedup_retention_s, 60, 366 * 24 * 3600)
        _check_int("history_maxlen", self.history_maxlen, 10, 100_000_000)
        _check_int("history_max_age_s", self.history_max_age_s, 1, 366 * 24 * 3600)
        self._check_holds()
        _require(isinstance(self.metrics, bool), "metrics", "a boolean", self.metrics)
        _check_int("alert_sync_p99_ms", self.alert_sync_p99_ms, 1, 3_600_000)
        _require(
            isinstance(self.alert_failure_rate, float) and 0 < self.alert_failure_rate <= 1,
            "alert_failure_rate",
            "a fraction above 0 and at most 1 (0.01 = 1 %)",
            self.alert_failure_rate,
        )
        _check_int("alert_window_s", self.alert_window_s, 5, 24 * 3600)

    def _check_holds(self) -> None:
        _require(
            _clearing_time(self.stock_clearing_time) is not None,
            "stock_clearing_time",
            "a local time HH:MM from 00:00 to 23:59",
            self.stock_clearing_time,
        )
        _require(
            _zone(self.stock_clearing_tz) is not None,
            "stock_clearing_tz",
            "an IANA time zone name such as Asia/Shanghai",
            self.stock_clearing_tz,
        )
        hold = self.stock_default_hold
        _require(
            hold == "clearing" or (hold.isdigit() and 1 <= int(hold) <= stock_rules.MAX_TTL_MS),
            "stock_default_hold",
            f"clearing, or milliseconds from 1 to {stock_rules.MAX_TTL_MS}",
            hold,
        )

    @property
    def hold_policy(self) -> HoldPolicy:
        """How long stock reservations hold (clearing time, zone, default hold), checked at startup."""
        at, tz = _clearing_time(self.stock_clearing_time), _zone(self.stock_clearing_tz)
        assert at is not None and tz is not None
        hold = self.stock_default_hold
        return HoldPolicy(
            clearing_at=at, clearing_tz=tz, default_ttl_ms=None if hold == "clearing" else int(hold)
        )

    @property
    def embedded(self) -> bool:
        """True when the hub must start its own Redis-compatible server."""
        return self.redis_url is None

    def origin_allowed(self, origin: str | None) -> bool:
        """Whether a websocket handshake with this ``Origin`` header may proceed.

        No header means a non-browser client (app, POS, backend): allowed, it still needs a valid token. A
        browser page is allowed only when its exact origin is listed (an allowlist, docs/traps.md §13).
        """
        if origin is None:
            return True
        return origin.strip().lower() in self.allowed_origins

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, config_file: Path | None = None, **overrides: Any
    ) -> Settings:
        """Defaults, then the TOML ``config_file``, then ``SYNCD_*`` from ``environ``, then ``overrides``.

        ``environ`` defaults to ``os.environ``. ``config_file`` defaults to the file ``SYNCD_CONFIG`` names
        (none when unset). Its top-level keys are field names (``port = 8080``, ``allowed_origins =
        ["https://shop.example.com"]``); an unknown key is refused, as a typo must not go unnoticed.
        An override may be a typed value or a string spelled as in the environment (``port="8080"``).
        Overrides that are ``None`` are ignored, so argparse's "flag not given" passes straight through;
        an empty string override selects the default whatever the file and environment say
        (``--redis-url ""``); an empty variable counts as unset (the file's value, if any, applies).
        """
        env = os.environ if environ is None else environ
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
        if config_file is None and env.get(CONFIG_ENV, "").strip():
            config_file = Path(env[CONFIG_ENV].strip())
        layers: list[Mapping[str, object]] = []
        if config_file is not None:
            layers.append(read_config_file(config_file, fields))
        layers.append({name: env[env_var(name)] for name in fields if env.get(env_var(name), "") != ""})
        layers.append({k: v for k, v in overrides.items() if v is not None})
        values: dict[str, Any] = {}
        for layer in layers:
            for name, raw in layer.items():
                if raw == "":
                    values.pop(name, None)  # empty: back to the default
                else:
                    values[name] = _coerce(name, raw)
        return cls(**values)


def read_config_file(path: Path, fields: set[str] | None = None) -> dict[str, object]:
    """The settings of a TOML file: top-level keys named like the fields (``redis_url = "redis://db"``)."""
    fields = fields if fields is not None else {f.name for f in dataclasses.fields(Settings)}
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"the config file {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(
            f"the config file {path} has unknown setting(s): {', '.join(unknown)} "
            "(keys are the names of `syncd serve` options with underscores, e.g. redis_url)"
        )
    return data


@functools.cache
def field_help() -> dict[str, str]:
    """Each field's help text: the first paragraph of its docstring (empty when the source is missing).

    The docstrings under the fields are the one description of each setting; ``syncd serve --help`` shows
    them, so help and code cannot drift apart.
    """
    try:
        source = textwrap.dedent(inspect.getsource(Settings))
    except (OSError, TypeError):  # pragma: no cover - only in a build without sources
        return {}
    body = ast.parse(source).body[0]
    assert isinstance(body, ast.ClassDef)
    found: dict[str, str] = {}
    for node, following in zip(body.body, body.body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            text = following.value.value.strip().split("\n\n")[0].replace("``", "")
            found[node.target.id] = " ".join(text.split())
    return found


def field_kind(name: str) -> type:
    """The type a field's values take, stripped of ``| None`` (``int``, ``bool``, ``str``, ``Path``,
    ``tuple``); ``Literal`` fields count as ``str``."""
    hint = typing.get_type_hints(Settings)[name]
    args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = args[0]
    if typing.get_origin(hint) is Literal:
        return str
    origin = typing.get_origin(hint)
    return origin if isinstance(origin, type) else hint


def _where(name: str) -> str:
    """How an error names a setting: by its variable and its flag, the two ways an operator sets it."""
    return f"{env_var(name)} (--{name.replace('_', '-')})"


def _require(ok: bool, name: str, expected: str, got: object) -> None:
    if not ok:
        raise ConfigError(f"{_where(name)}: expected {expected}, got {got!r}")


def _clearing_time(value: object) -> dt.time | None:
    """``HH:MM`` as a time of day, or ``None``."""
    if not isinstance(value, str) or len(value) != 5 or value[2] != ":":
        return None
    hh, mm = value[:2], value[3:]
    if not (hh.isdigit() and mm.isdigit() and int(hh) < 24 and int(mm) < 60):
        return None
    return dt.time(int(hh), int(mm))


def _zone(value: object) -> ZoneInfo | None:
    """An IANA time zone by name, or ``None`` (unknown, or not a plain zone name)."""
    if not isinstance(value, str):
        return None
    try:
        return ZoneInfo(value)
    except (ValueError, zoneinfo.ZoneInfoNotFoundError):
        return None


def _check_int(name: str, value: object, low: int, high: int) -> None:
    _require(
        isinstance(value, int) and not isinstance(value, bool) and low <= value <= high,
        name,
        f"an integer from {low} to {high}",
        value,
    )


def _is_canonical_origin(origin: object) -> bool:
    if not isinstance(origin, str):
        return False
    try:
        parts = urlsplit(origin)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and parts.hostname is not None
        and "*" not in origin
        and parts.path == ""
        and not parts.query
        and not parts.fragment
        and parts.username is None
        and origin == origin.lower()
    )


# -- coercion: environment strings (or override values) → typed values; __post_init__ validates them --------


def _as_str(name: str, raw: object) -> object:
    return raw.strip() if isinstance(raw, str) else raw


def _as_int(name: str, raw: object) -> object:
    if isinstance(raw, str):
        try:
            return int(raw.strip().replace("_", ""))
        except ValueError:
            raise ConfigError(f"{_where(name)}: expected an integer, got {raw!r}") from None
    return raw


def _as_float(name: str, raw: object) -> object:
    if isinstance(raw, str):
        try:
            return float(raw.strip().replace("_", ""))
        except ValueError:
            raise ConfigError(f"{_where(name)}: expected a number, got {raw!r}") from None
    return float(raw) if isinstance(raw, int) and not isinstance(raw, bool) else raw


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _as_bool(name: str, raw: object) -> object:
    """``1/true/yes/on`` and ``0/false/no/off`` (any case); anything else is refused, never guessed."""
    if isinstance(raw, str):
        text = raw.strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise ConfigError(f"{_where(name)}: expected one of {', '.join(_TRUE + _FALSE)}, got {raw!r}")
    return raw


def _as_path(name: str, raw: object) -> object:
    return Path(raw.strip()) if isinstance(raw, str) and raw.strip() else raw


def _as_lower(name: str, raw: object) -> object:
    return raw.strip().lower() if isinstance(raw, str) else raw


def _as_upper(name: str, raw: object) -> object:
    return raw.strip().upper() if isinstance(raw, str) else raw


def _as_list(name: str, raw: object) -> object:
    """A comma-separated string (environment, flag) or a list (TOML) as a tuple of its non-empty items."""
    items: object = raw.split(",") if isinstance(raw, str) else raw
    if isinstance(items, list | tuple):
        cleaned = (item.strip() if isinstance(item, str) else item for item in items)
        return tuple(item for item in cleaned if item != "")
    return raw


def _as_origins(name: str, raw: object) -> object:
    # Browsers send the origin without a trailing slash and with a lowercase scheme and host.
    items = _as_list(name, raw)
    if isinstance(items, tuple):
        return tuple(item.lower().rstrip("/") if isinstance(item, str) else item for item in items)
    return items


_COERCE_BY_KIND: dict[type, Callable[[str, object], object]] = {
    int: _as_int,
    float: _as_float,
    bool: _as_bool,
    Path: _as_path,
    tuple: _as_list,
    str: _as_str,
}
_COERCE_BY_NAME: dict[str, Callable[[str, object], object]] = {
    "log_level": _as_lower,
    "log_format": _as_lower,
    "durability": _as_lower,
    "token_algorithm": _as_upper,
    "allowed_origins": _as_origins,
}


def _coerce(name: str, raw: object) -> object:
    """``raw`` (a string from the environment or a flag, or a typed value from TOML) as the field's type."""
    convert = _COERCE_BY_NAME.get(name) or _COERCE_BY_KIND[field_kind(name)]
    return convert(name, raw)
