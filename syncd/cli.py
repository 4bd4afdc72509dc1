"""``syncd serve``: configure, start the embedded Redis if needed, run the hub, stop everything on exit.

Order matters and is the point of this module:

1. settings (flags over ``SYNCD_*`` over defaults) — a bad value exits 2 with one line naming the variable;
2. the embedded server when no Redis URL is set (its own session, so Ctrl-C reaches only the hub);
3. a preflight probe, so an impossible durability setting fails with one clear line, not a traceback from
   inside the ASGI lifespan;
4. uvicorn, with the websocket limits of docs/traps.md §12;
5. on SIGTERM/SIGINT: uvicorn drains its connections first, *then* the embedded server shuts down (flushing
   its AOF), so no op in flight loses its Redis underneath it.

Exit status: 0 after a requested stop, 2 for a configuration error, 1 when the hub failed to start or crashed
(3 when uvicorn cannot bind its port: uvicorn's own status for a startup failure).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import Any

from protocol.errors import SyncError
from syncd import __version__
from syncd.app import create_app, redact_url
from syncd.auth import AuthError, Role, load_or_create_secret, mint_token
from syncd.embedded import EmbeddedRedis, bundled_binary
from syncd.redis_info import check_durability, close_client, make_client, probe
from syncd.settings import DURABILITY_MODES, LOG_LEVELS, ConfigError, Settings, env_var

log = logging.getLogger("syncd")

GRACEFUL_SHUTDOWN_S = 10


class _StopRequested(BaseException):
    """SIGTERM/SIGINT outside uvicorn's own handling. A BaseException so no ``except Exception`` eats it."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="syncd", description="Real-time sync hub.")
    parser.add_argument("--version", action="version", version=f"syncd {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the hub",
        description="Run the hub. Every option can also be set by the environment variable shown.",
    )
    defaults = Settings()

    def option(name: str, help_text: str, **kwargs: Any) -> None:
        flag = "--" + name.replace("_", "-")
        default = getattr(defaults, name)
        shown = ",".join(default) if isinstance(default, tuple) else default
        serve.add_argument(
            flag,
            dest=name,
            default=None,  # None = not given: Settings.from_env then falls back to the environment
            help=f"{help_text} [{env_var(name)}; default: {shown if shown not in (None, '') else 'none'}]",
            **kwargs,
        )

    option("host", "address to listen on")
    option("port", "port to listen on")
    option("redis_url", "Redis URL (redis://, rediss://, unix://); none starts the embedded server")
    option(
        "redis_cluster",
        "the Redis URL names a node of a Redis Cluster",
        action="store_const",
        const=True,
    )
    option("data_dir", "data directory of the embedded server")
    option("log_level", "log level", choices=LOG_LEVELS, type=str.lower)
    option(
        "durability",
        "when an op is acked: after its script, or after the AOF fsync",
        choices=DURABILITY_MODES,
    )
    option("allowed_origins", "comma-separated browser origins allowed to connect")
    option("heartbeat_ms", "heartbeat interval of the protocol, in milliseconds")
    option("max_frame", "largest websocket frame accepted, in bytes")

    token = commands.add_parser(
        "token",
        help="mint a development token",
        description="Print a signed token the hub accepts (HS256, with SYNCD_TOKEN_SECRET or the secret the "
        "hub created in its data dir). Production tokens come from the brand's identity service.",
    )
    token.add_argument("--client-id", required=True, help="the device's client_id (the token's subject)")
    token.add_argument("--role", choices=[r.value for r in Role], default=Role.APP.value)
    token.add_argument("--channel", default=None, help="mini_program, official_account, h5, app, web, pos, …")
    token.add_argument(
        "--member", action="append", default=[], help="a member it may act for (repeat; * for all)"
    )
    token.add_argument("--store", default=None, help="the store of a pos terminal")
    token.add_argument("--ttl", type=float, default=24 * 3600, help="validity in seconds [default: a day]")
    token.add_argument(
        "--data-dir", dest="data_dir", default=None, help="the hub's data dir [SYNCD_DATA_DIR]"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``syncd`` command and of ``python -m syncd``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "token":
        return _token(args)
    if args.command != "serve":
        parser.print_help(sys.stderr)
        return 2
    overrides = {key: value for key, value in vars(args).items() if key != "command"}
    try:
        settings = Settings.from_env(os.environ, **overrides)
    except ConfigError as exc:
        print(f"syncd: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    return serve(settings)


def _token(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env(os.environ, data_dir=args.data_dir)
        if settings.token_algorithm != "HS256":
            raise ConfigError("`syncd token` signs HS256 tokens only; the hub is configured for public keys")
        secret = settings.token_secret or load_or_create_secret(settings.data_dir)
        print(
            mint_token(
                secret,
                client_id=args.client_id,
                role=args.role,
                channel=args.channel,
                members=args.member,
                store=args.store,
                ttl_s=args.ttl,
            )
        )
    except (ConfigError, AuthError, ValueError) as exc:
        print(f"syncd: {exc}", file=sys.stderr)
        return 2
    return 0


def serve(settings: Settings) -> int:
    """Run the hub until a signal or a failure; always stops the embedded server it started."""
    embedded: EmbeddedRedis | None = None
    with _signals_raise_stop():
        try:
            if settings.redis_url is None:
                # fsync durability needs WAITAOF: the bundled Valkey has it, Debian's Redis 7.0 does not.
                binary = bundled_binary() if settings.durability == "fsync" else None
                embedded = EmbeddedRedis(settings.data_dir, binary=binary)
                log.info(
                    "starting embedded %s %s (%s) in %s", embedded.name, embedded.version, embedded.binary,
                    embedded.server_dir,
                )  # fmt: skip
                embedded.start()
                log.info("embedded %s ready at %s (pid %s)", embedded.name, embedded.url, embedded.pid)
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
    check_durability(settings.durability, status)  # raises ConfigError; the app logs the warnings


def _run_uvicorn(settings: Settings) -> int:
    import uvicorn

    from syncd.transport import HubWebSocketProtocol

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
        ws_max_size=settings.max_frame,
        ws_per_message_deflate=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        server_header=False,
    )
    config.load()
    server = uvicorn.Server(config)
    # uvicorn handles SIGTERM/SIGINT while it runs (graceful drain), restores our handlers, then re-raises the
    # signal: that raises _StopRequested here, after the drain and before the embedded server stops.
    server.run()
    return 0 if server.started else 1


class OneLineFormatter(logging.Formatter):
    """One record, one line: log collectors (journald, Loki, ELK) split on newlines.

    Embedded newlines (a server's log tail, a traceback) are escaped as ``\\n`` rather than lost.
    """

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\r", "\\r").replace("\n", "\\n")


def configure_logging(level: str) -> None:
    """Root handler on stderr, one line per record. uvicorn's loggers propagate here (``log_config=None``)."""
    handler = logging.StreamHandler(sys.stderr)
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
