"""The ``syncd`` command: ``serve`` runs the hub; ``token`` mints, checks and revokes client tokens.

``syncd serve``: configure, start the embedded Redis if needed, run the hub, stop everything on exit. Order
matters and is the point of this part:

1. settings (flag over ``SYNCD_*`` over the ``--config`` file over defaults; every setting has all three,
   generated from :class:`~syncd.settings.Settings`) — a bad value exits 2 with one line naming the variable;
2. the start-up checks that touch the machine — the port is free, the data dir and the token key are usable —
   so an I/O failure is one line naming what and where, never a traceback (exit 1);
3. the embedded server when no Redis URL is set (its own session, so Ctrl-C reaches only the hub);
4. a preflight probe, so an impossible durability setting fails with one clear line, not a traceback from
   inside the ASGI lifespan;
5. uvicorn, with the websocket limits of docs/traps.md §12;
6. on SIGTERM/SIGINT: uvicorn drains its connections first, *then* the embedded server shuts down (flushing
   its AOF), so no op in flight loses its Redis underneath it.

Exit status: 0 after a requested stop, 2 for a configuration error, 1 when the hub failed to start or crashed
(3 when uvicorn cannot bind its port: uvicorn's own status for a startup failure).

Logs: one line per record on stderr, as text or (``--log-format json``) one JSON object per line; either way a
:class:`RedactingFilter` takes tokens out of every record, uvicorn's included (docs/traps.md §13, 14).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import errno
import gc
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from protocol.connection import HEARTBEAT_MISSES
from protocol.errors import SyncError
from syncd import __version__
from syncd.app import create_app, redact_url
from syncd.auth import (
    AuthError,
    Role,
    TokenVerifier,
    load_or_create_secret,
    mint_token,
    principal_from_claims,
    token_verifier,
)
from syncd.embedded import EmbeddedRedis, bundled_binary, running_url
from syncd.masking import mask
from syncd.redis_info import check_durability, close_client, make_client, probe
from syncd.revocation import revoke
from syncd.settings import CONFIG_ENV, ConfigError, Settings, env_var, field_help, field_kind

log = logging.getLogger("syncd")

GRACEFUL_SHUTDOWN_S = 10
GC_YOUNG_THRESHOLD = 10_000
"""Net allocations of container objects between two young collections (CPython's default: 700). Each op
in flight holds a few dozen objects across its awaits (frames, futures, tasks, replies); at 700 they were
caught alive by nearly every young collection, promoted, and made the older generations' collections
frequent: with 1,000 connections each with an op in flight (`benchmarks flashsale`) the collector took
20-30 % of the hub's CPU. A young collection walks what is alive in the generation, so its pause grows with
the threshold: 50,000 cut the collector to 2 % but its pauses showed in `benchmarks isolation` (op_flood's
victim p99 52-85 ms against 12); 10,000 kept that p99 at 7-9 ms."""
_SECRET_FIELDS = frozenset({"token_secret"})


class _StopRequested(BaseException):
    """SIGTERM/SIGINT outside uvicorn's own handling. A BaseException so no ``except Exception`` eats it."""


class StartupError(SyncError):
    """The machine refuses what the hub needs (a port, a directory, a file): one line says what and where."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="syncd", description="Real-time sync hub.")
    parser.add_argument("--version", action="version", version=f"syncd {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the hub",
        description="Run the hub. Every option can also be set by the environment variable shown, or by a "
        "key of the same name (with underscores) in the --config file; a flag wins over the variable, "
        "which wins over the file.",
    )
    _config_option(serve)
    defaults = Settings()
    for field in dataclasses.fields(Settings):
        _setting_option(serve, field.name, getattr(defaults, field.name))
    _token_parser(commands)
    return parser


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help=f"TOML file of settings (keys named like the options: redis_url = ...) [{CONFIG_ENV}]",
    )


def _setting_option(parser: argparse.ArgumentParser, name: str, default: object) -> None:
    """The flag of setting ``name``: ``--name`` (dashes), its help from the field's docstring."""
    kind = field_kind(name)
    shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
    shown = "none" if shown in (None, "") else shown
    help_text = field_help().get(name, name.replace("_", " "))
    extra = " (visible to other local users in the process list: prefer the variable)" * (
        name in _SECRET_FIELDS
    )
    parser.add_argument(
        "--" + name.replace("_", "-"),
        dest=name,
        default=None,  # None = not given: Settings.from_env then falls back to the environment and file
        help=f"{help_text}{extra} [{env_var(name)}; default: {shown}]".replace("%", "%%"),
        **(
            {"action": argparse.BooleanOptionalAction}
            if kind is bool
            else {"metavar": name.rsplit("_", 1)[-1].upper() if kind is not str else "TEXT"}
        ),
    )


def _token_parser(commands: Any) -> None:
    token = commands.add_parser(
        "token",
        help="mint, check or revoke client tokens",
        description="Print a signed token the hub accepts (HS256, with SYNCD_TOKEN_SECRET or the secret the "
        "hub created in its data dir; the token alone on stdout, its expiry on stderr). --check verifies a "
        "token; `syncd token revoke` revokes a client on every hub. Production tokens come from the brand's "
        "identity service.",
    )
    token.add_argument("--client-id", default=None, help="the device's client_id (the token's subject)")
    token.add_argument("--role", choices=[r.value for r in Role], default=Role.APP.value)
    token.add_argument("--channel", default=None, help="mini_program, official_account, h5, app, web, pos, …")
    token.add_argument(
        "--member", action="append", default=[], help="a member it may act for (repeat; * for all)"
    )
    token.add_argument("--store", default=None, help="the store of a pos terminal")
    token.add_argument(
        "--ttl", type=float, default=24 * 3600, help="validity in seconds, > 0 [default: a day]"
    )
    token.add_argument(
        "--check", metavar="TOKEN", default=None, help="verify TOKEN instead: print its claims and expiry"
    )
    _hub_options(token)
    actions = token.add_subparsers(dest="token_command", metavar="ACTION")
    revoke_parser = actions.add_parser(
        "revoke",
        help="revoke a client on every hub",
        description="Close every session of the client (4504) on every hub process within a second, and "
        "refuse its tokens issued at or before now; a token issued later is accepted again. Needs the hub's "
        "Redis: SYNCD_REDIS_URL, or the embedded server of a hub running on --data-dir.",
    )
    revoke_parser.add_argument("--client-id", dest="revoke_client_id", required=True, help="the client_id")
    _hub_options(revoke_parser)


def _hub_options(parser: argparse.ArgumentParser) -> None:
    """Where the token commands find the hub's key and Redis: the same settings as ``serve``."""
    _config_option(parser)
    parser.add_argument("--data-dir", default=None, help=f"the hub's data dir [{env_var('data_dir')}]")
    parser.add_argument("--redis-url", default=None, help=f"the hub's Redis [{env_var('redis_url')}]")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``syncd`` command and of ``python -m syncd``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "token":
        return _token(args)
    if args.command != "serve":
        parser.print_help(sys.stderr)
        return 2
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)}
    try:
        settings = Settings.from_env(os.environ, config_file=args.config, **overrides)
    except ConfigError as exc:
        print(f"syncd: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    return serve(settings)


def _token(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env(
            os.environ, config_file=args.config, data_dir=args.data_dir, redis_url=args.redis_url
        )
        if args.token_command == "revoke":
            return asyncio.run(_revoke(settings, args.revoke_client_id))
        if args.check is not None:
            return _check(token_verifier(settings), args.check)
        return _mint(settings, args)
    except (ConfigError, AuthError, StartupError, ValueError) as exc:
        print(f"syncd: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"syncd: {describe_os_error(exc)}", file=sys.stderr)
        return 1


def _mint(settings: Settings, args: argparse.Namespace) -> int:
    if args.client_id is None:
        raise ConfigError("--client-id is required to mint a token")
    if not args.ttl > 0:  # also refuses NaN
        raise ConfigError(f"--ttl must be a positive number of seconds, got {args.ttl:g}")
    if settings.token_algorithm != "HS256":
        raise ConfigError("`syncd token` signs HS256 tokens only; the hub is configured for public keys")
    secret = settings.token_secret or load_or_create_secret(settings.data_dir)
    now = time.time()
    token = mint_token(
        secret,
        client_id=args.client_id,
        role=args.role,
        channel=args.channel,
        members=args.member,
        store=args.store,
        ttl_s=args.ttl,
        issuer=settings.token_issuer,
        now=now,
    )
    print(token)
    print(f"syncd: the token expires {_when(int(now + args.ttl))}", file=sys.stderr)
    return 0


def _check(verifier: TokenVerifier, token: str) -> int:
    """Print a token's claims and expiry; exit 0 when this hub's configuration accepts it, else 1."""
    try:
        claims = verifier.claims(token.strip())
        principal_from_claims(claims)
    except AuthError as exc:
        print(f"refused with close {exc.close_code.value} {exc.close_code.name.lower()}: {exc.reason}")
        return 1
    print(json.dumps(claims, indent=2, sort_keys=True))
    print(f"valid for this hub's key and issuer; expires {_when(claims['exp'])} (revocation is not checked)")
    return 0


async def _revoke(settings: Settings, client_id: str) -> int:
    url = settings.redis_url or running_url(settings.data_dir)
    if url is None:
        raise StartupError(
            f"no Redis to record the revocation in: set {env_var('redis_url')} (or --redis-url), or start "
            f"the hub on its data dir ({settings.data_dir}) first"
        )
    client = make_client(url, cluster=settings.redis_cluster)
    at = time.time()
    try:
        hubs = await revoke(client, client_id, at)
    except Exception as exc:
        raise StartupError(f"cannot reach Redis at {redact_url(url)}: {exc}") from None
    finally:
        await close_client(client)
    print(
        f"revoked {client_id} at {_when(at)}: its sessions are closed (4504) on every hub and its tokens "
        f"issued at or before that time are refused; a token issued later is accepted "
        f"({hubs} hub process(es) notified at once)"
    )
    return 0


def _when(epoch_s: float) -> str:
    """``2026-12-05T10:00:00Z (in 23 h 59 min)``: absolute in UTC, and relative, for a person."""
    moment = datetime.datetime.fromtimestamp(epoch_s, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    delta = epoch_s - time.time()
    minutes = abs(int(delta)) // 60
    span = f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"
    return f"{moment} ({'in ' + span if delta >= 0 else span + ' ago'})"


def serve(settings: Settings) -> int:
    """Run the hub until a signal or a failure; always stops the embedded server it started."""
    embedded: EmbeddedRedis | None = None
    with _signals_raise_stop():
        try:
            check_startup(settings)
            if settings.redis_url is None:
                # fsync durability needs WAITAOF: the bundled Valkey has it, Debian's Redis 7.0 does not.
                binary = bundled_binary() if settings.ack_durability == "fsync" else None
                embedded = EmbeddedRedis(settings.data_dir, binary=binary, secure=True)
                log.info(
                    "starting embedded %s %s (%s) in %s", embedded.name, embedded.version, embedded.binary,
                    embedded.server_dir,
                )  # fmt: skip
                embedded.start()
                log.info(
                    "embedded %s ready at %s (pid %s)", embedded.name, redact_url(embedded.url), embedded.pid
                )
                settings = dataclasses.replace(settings, redis_url=embedded.url)
            asyncio.run(_preflight(settings))
            return _run_uvicorn(settings)
        except _StopRequested:
            log.info("stop requested")
            return 0
        except ConfigError as exc:
            log.error("configuration error: %s", exc)
            return 2
        except SyncError as exc:  # expected failures (e.g. the embedded server would not start): one line
            log.error("%s", exc)
            return 1
        except OSError as exc:  # the machine refused something: say what, without a traceback
            log.error("cannot start: %s", describe_os_error(exc))
            return 1
        except Exception:
            log.exception("the hub failed")  # unexpected: keep the traceback, escaped onto one line
            return 1
        finally:
            if embedded is not None:
                was_running = embedded.running
                with _signals_ignored():  # a second Ctrl-C must not abandon the AOF flush half-way
                    embedded.stop()
                if was_running:
                    log.info("embedded %s stopped", embedded.name)


def check_startup(settings: Settings) -> None:
    """Fail now, in one line, on what the machine refuses: the port, the data dir, the token key.

    The port is probed by binding it (with ``SO_REUSEADDR``, like uvicorn): another server there is found
    before the embedded Redis is started for nothing. Raises :class:`StartupError`.
    """
    try:
        family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
        with socket.create_server((settings.host, settings.port), family=family):
            pass
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"port {settings.port} on {settings.host} is already in use (another hub?); choose another "
                f"with --port or {env_var('port')}"
            ) from None
        raise StartupError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}") from None
    if settings.redis_url is None or (settings.token_secret is None and settings.token_public_key is None):
        try:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            probe_file = settings.data_dir / f".syncd-write-check-{os.getpid()}"
            probe_file.write_bytes(b"")
            probe_file.unlink()
        except OSError as exc:
            raise StartupError(
                f"the data dir {settings.data_dir} is not usable ({describe_os_error(exc)}); fix it or "
                f"choose another with --data-dir or {env_var('data_dir')}"
            ) from None
    try:
        token_verifier(settings)  # reads (or creates) the key now rather than in the ASGI lifespan
    except OSError as exc:
        raise StartupError(f"cannot read the token key: {describe_os_error(exc)}") from None


def describe_os_error(exc: OSError) -> str:
    """``Permission denied: 'var/redis'``: the reason and the path, without errno noise or a traceback."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{reason}: {str(exc.filename)!r}" if exc.filename is not None else reason


async def _preflight(settings: Settings) -> None:
    assert settings.redis_url is not None
    client = make_client(settings.redis_url, cluster=settings.redis_cluster)
    try:
        status = await probe(client)
    finally:
        await close_client(client)
    if not status.reachable:
        log.warning(
            "redis at %s is unreachable (%s); starting anyway", redact_url(settings.redis_url), status.error
        )
    check_durability(settings.ack_durability, status)  # raises ConfigError; the app logs the warnings


def _run_uvicorn(settings: Settings) -> int:
    import uvicorn

    from syncd.transport import HubHttpProtocol, HubWebSocketProtocol

    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,  # keep our one-line handler; uvicorn's loggers propagate to it
        log_level=settings.log_level,
        lifespan="on",
        # uvicorn's sans-I/O websockets protocol (it pauses reading while a message waits for the app, which
        # bounds what a peer can queue) plus the fan-out fast path of syncd.transport.
        # No compression: it multiplies the memory a hostile peer can cost (docs/traps.md §12), and it would
        # make every connection's frame of one event different.
        ws=HubWebSocketProtocol,
        # uvicorn's h11 protocol with a deadline for the request's headers (slowloris, syncd.transport).
        http=HubHttpProtocol,
        ws_max_size=settings.max_frame,
        ws_per_message_deflate=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        server_header=False,
    )
    config.syncd_handshake_timeout_s = settings.handshake_timeout_ms / 1000  # type: ignore[attr-defined]
    # A closed connection's peer has the protocol's heartbeat timeout to read its close frame.
    config.syncd_close_timeout_s = HEARTBEAT_MISSES * settings.heartbeat_ms / 1000  # type: ignore[attr-defined]
    config.load()
    server = uvicorn.Server(config)
    # Everything made so far (modules, classes, the app, the Lua scripts) lives as long as the process.
    # Frozen, it is left out of the collector's full passes: those walked every object of the started hub,
    # a pause of tens of milliseconds (80 ms measured on a busy 2-core machine) that every connection's acks
    # waited behind (docs/traps.md §20); now they walk what the hub made since it started.
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)
    # uvicorn handles SIGTERM/SIGINT while it runs (graceful drain), restores our handlers, then re-raises the
    # signal: that raises _StopRequested here, after the drain and before the embedded server stops.
    server.run()
    return 0 if server.started else 1


_JWT = re.compile(r"\beyJ[\w-]{4,}\.[\w-]{4,}\.[\w-]*")
_CREDENTIAL_PARAM = re.compile(r"(?i)\b(token|access_token|jwt|password)=[^&\s\"']+")


def redact(text: str) -> str:
    """``text`` without tokens (anything shaped like a JWT, the value of ``token=``-like parameters) and
    with mobile numbers masked (:mod:`syncd.masking`)."""
    return mask(_CREDENTIAL_PARAM.sub(r"\1=<redacted>", _JWT.sub("<redacted-token>", text)))


class RedactingFilter(logging.Filter):
    """Takes tokens out of every record before it is formatted (docs/traps.md §13, 14).

    The hub never logs a token itself; this catches what others put in a message — uvicorn's access lines
    carry the request's query string, a peer's error may echo what it was sent. The record's message is
    rendered once here and replaced, so every formatter sees the redacted text.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class OneLineFormatter(logging.Formatter):
    """One record, one line: log collectors (journald, Loki, ELK) split on newlines.

    Embedded newlines (a server's log tail, a traceback) are escaped as ``\\n`` rather than lost.
    """

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record)).replace("\r", "\\r").replace("\n", "\\n")


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers: ``ts`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, and ``exc`` (the traceback as one string) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)  # structured lines (syncd.telemetry): one key per field
        if isinstance(fields, dict):
            entry.update((key, value) for key, value in fields.items() if key not in entry)
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, log_format: str = "text") -> None:
    """Root handler on stderr, one line per record. uvicorn's loggers propagate here (``log_config=None``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


@contextmanager
def _signals_raise_stop() -> Iterator[None]:
    """Turn SIGTERM and SIGINT into :class:`_StopRequested` in the main thread, so ``finally`` blocks run."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise _StopRequested(signal.Signals(signum).name)

    with _handlers(stop):
        yield


@contextmanager
def _signals_ignored() -> Iterator[None]:
    def ignore(signum: int, frame: FrameType | None) -> None:
        log.info("%s ignored: already stopping", signal.Signals(signum).name)

    with _handlers(ignore):
        yield


@contextmanager
def _handlers(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are delivered to the main thread only; nothing to install
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
