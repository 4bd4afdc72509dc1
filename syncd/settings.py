"""Every option of the hub, in one frozen object read once at startup.

Each field ``name`` can be set by the environment variable ``SYNCD_<NAME>`` (e.g. ``SYNCD_REDIS_URL``) and by
the matching ``syncd serve`` flag; precedence is default < environment < explicit override (the CLI flag).
Values are validated when the object is built, so a typo fails the start with a message naming the variable,
instead of surfacing later as a confusing runtime error. An empty environment variable counts as unset, so
``SYNCD_REDIS_URL=`` in a compose file means "embedded", not "invalid URL".

Durability (``SYNCD_DURABILITY``) — what an ack promises (docs/design.md §4, docs/traps.md §1):

``script`` (default)
    The hub acks as soon as the operation's Lua script has returned. The change is applied in Redis and queued
    for its append-only file; with the embedded server's ``appendfsync everysec`` a crash of the Redis process
    loses nothing (the OS page cache survives it), while a power loss or kernel crash can lose about the last
    second of acked ops. The exact sentence for the server actually connected is in ``/healthz``.
``fsync``
    After the script, the hub runs ``WAITAOF 1 0 <timeout>`` and acks only once Redis confirms the change is
    fsynced to its local append-only file: acked ops survive a power loss of the Redis host. Replicas are not
    awaited (Redis replication is asynchronous, docs/traps.md §4). Needs WAITAOF (Redis ≥ 7.2 or Valkey) and
    ``appendonly yes``; the hub refuses to start otherwise rather than silently promise less.

Origins (``SYNCD_ALLOWED_ORIGINS``): a comma-separated list of ``scheme://host[:port]``. Browsers always send
an ``Origin`` header on websocket handshakes, so the empty default admits no browser page at all; native apps,
POS terminals and backends send none and are admitted (they authenticate by token, docs/design.md §5).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from protocol.errors import SyncError

Durability = Literal["script", "fsync"]
DURABILITY_MODES: tuple[Durability, ...] = ("script", "fsync")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
ENV_PREFIX = "SYNCD_"

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
    port: int = 8000
    redis_url: str | None = None
    """``None``: start the embedded Redis-compatible server under ``data_dir`` (see ``syncd.embedded``)."""
    redis_cluster: bool = False
    """``redis_url`` names one node of a Redis Cluster: the store speaks the cluster protocol (slots, MOVED)
    through ``RedisCluster``, and fan-out subscribes on any one node (a classic PUBLISH reaches every node).
    Needs an explicit ``redis://``/``rediss://`` URL: the embedded server is a single node, not a cluster."""
    data_dir: Path = Path("./var")
    log_level: str = "info"
    durability: Durability = "script"
    allowed_origins: tuple[str, ...] = ()
    heartbeat_ms: int = 15_000
    max_frame: int = 65_536
    token_secret: str | None = None
    """HS256 secret; ``None``: a random one is created once in ``<data_dir>/token-secret`` (development)."""
    token_algorithm: str = "HS256"
    """Fixed by configuration, never read from a token: HS256, or RS256/ES256 with ``token_public_key``."""
    token_public_key: Path | None = None
    """PEM file of the key that verifies RS256/ES256 tokens."""
    max_batch: int = 256
    """Ops in one ``ops`` frame."""
    max_subscriptions: int = 100
    """Subscriptions one connection may hold."""
    op_rate: int = 2_000
    """Ops per second one connection may sustain (a token bucket) ..."""
    op_burst: int = 20_000
    """... and how many it may send at once: a till replaying a day offline fits in one burst."""
    send_queue: int = 4_096
    """Frames queued for one client before it is disconnected as a slow consumer (close 4001)."""
    dedup_retention_s: int = 7 * 24 * 3600
    """How long the hub remembers a client's op outcomes: at least the longest time a device stays offline."""
    history_maxlen: int = 10_000
    """Events kept per topic for resume; a client further behind gets a reset snapshot."""
    history_max_age_s: int = 7 * 24 * 3600
    """... and for how long at most (trimmed as the topic is written)."""

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
            self.durability in DURABILITY_MODES,
            "durability",
            "one of " + ", ".join(DURABILITY_MODES),
            self.durability,
        )
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
        _check_int("max_batch", self.max_batch, 1, 1024)
        _check_int("max_subscriptions", self.max_subscriptions, 1, 100_000)
        _check_int("op_rate", self.op_rate, 1, 1_000_000)
        _check_int("op_burst", self.op_burst, 1, 10_000_000)
        _check_int("send_queue", self.send_queue, 16, 1_000_000)
        _check_int("dedup_retention_s", self.dedup_retention_s, 60, 366 * 24 * 3600)
        _check_int("history_maxlen", self.history_maxlen, 10, 100_000_000)
        _check_int("history_max_age_s", self.history_max_age_s, 1, 366 * 24 * 3600)

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
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read ``SYNCD_*`` from ``environ`` (default ``os.environ``), then apply ``overrides``.

        An override may be a typed value or a string spelled as in the environment (``port="8080"``).
        Overrides that are ``None`` are ignored, so argparse's "flag not given" passes straight through;
        an empty string override selects the default whatever the environment says (``--redis-url ""``).
        """
        env = os.environ if environ is None else environ
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
        values: dict[str, Any] = {}
        for name in fields:
            raw: object = overrides[name] if overrides.get(name) is not None else env.get(env_var(name), "")
            if raw != "":
                values[name] = _COERCE[name](name, raw)
        return cls(**values)


def _where(name: str) -> str:
    """How an error names a setting: by its variable and its flag, the two ways an operator sets it."""
    return f"{env_var(name)} (--{name.replace('_', '-')})"


def _require(ok: bool, name: str, expected: str, got: object) -> None:
    if not ok:
        raise ConfigError(f"{_where(name)}: expected {expected}, got {got!r}")


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


def _as_origins(name: str, raw: object) -> object:
    items: object = raw.split(",") if isinstance(raw, str) else raw
    if isinstance(items, list | tuple):
        # Browsers send the origin without a trailing slash and with a lowercase scheme and host.
        cleaned = (item.strip().lower().rstrip("/") if isinstance(item, str) else item for item in items)
        return tuple(item for item in cleaned if item != "")
    return raw


_COERCE: dict[str, Callable[[str, object], object]] = {
    "host": _as_str,
    "port": _as_int,
    "redis_url": _as_str,
    "redis_cluster": _as_bool,
    "data_dir": _as_path,
    "log_level": _as_lower,
    "durability": _as_lower,
    "allowed_origins": _as_origins,
    "heartbeat_ms": _as_int,
    "max_frame": _as_int,
    "token_secret": _as_str,
    "token_algorithm": _as_upper,
    "token_public_key": _as_path,
    "max_batch": _as_int,
    "max_subscriptions": _as_int,
    "op_rate": _as_int,
    "op_burst": _as_int,
    "send_queue": _as_int,
    "dedup_retention_s": _as_int,
    "history_maxlen": _as_int,
    "history_max_age_s": _as_int,
}
