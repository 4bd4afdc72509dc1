"""The hub's ASGI application: routes, and the Redis client that lives as long as the app.

``create_app(settings)`` needs ``settings.redis_url``: ``syncd serve`` starts the embedded server first and
passes its URL, tests pass the URL of a server they started. Keeping process management out of the app keeps
it importable by any ASGI server and testable in-process with Starlette's ``TestClient``.

Shared state for endpoints (``request.app.state`` / ``websocket.app.state``):

- ``settings`` — the :class:`~syncd.settings.Settings` the app was built with;
- ``redis`` — a ``redis.asyncio.Redis`` (bytes replies), or a ``RedisCluster`` with ``redis_cluster``,
  created by the lifespan and closed after it.

Credentials never travel in a URL: a request whose query string carries a ``token`` (or ``access_token``,
``jwt``) is refused before it reaches a route (403; PROTOCOL.md §13.1 — the token goes in ``hello``), and
the log handler redacts any that is logged anyway (``syncd.cli.RedactingFilter``).

Startup reads the server's persistence, logs the durability guarantee in force, warns when Redis keeps data in
memory only, and refuses to start when ``durability=fsync`` cannot be honoured (``ConfigError``). An
unreachable Redis does not stop the start: the hub comes up, ``/healthz`` answers 503 until Redis answers,
so an orchestrator can start hub and Redis in any order.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from protocol.errors import BackendUnavailable
from syncd import __version__, dashboard, opsapi
from syncd.auth import token_verifier
from syncd.fanout import Fanout
from syncd.generations import GenerationWatcher
from syncd.hub import Hub
from syncd.metrics import SessionCollector
from syncd.redis_info import (
    IdleReaper,
    RedisStatus,
    check_durability,
    close_client,
    durability_guarantee,
    make_client,
    node_connector,
    probe,
)
from syncd.revocation import REVOKED_CHANNEL, Revocations
from syncd.rollup import WATCH_CHANNEL, Publisher, Watch
from syncd.settings import ConfigError, Settings
from syncd.store.keys import channel
from syncd.store.redis_store import RedisStore
from syncd.sweeper import sweep_forever
from syncd.tasks import stop

log = logging.getLogger("syncd.app")


def create_app(settings: Settings) -> Starlette:
    """Build the hub for ``settings``. Nothing touches the network until the lifespan starts."""
    redis_url = settings.redis_url
    if redis_url is None:
        raise ConfigError(
            "create_app needs settings.redis_url; `syncd serve` starts the embedded server and passes its URL"
        )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        client = make_client(
            redis_url,
            cluster=settings.redis_cluster,
            max_connections=settings.redis_max_connections,
            pool_wait_s=settings.redis_pool_wait_ms / 1000,
            timeout_s=settings.redis_timeout_ms / 1000,
        )
        reaper = IdleReaper(client, settings.redis_idle_s)
        app.state.reaper = reaper
        reaping = asyncio.create_task(reaper.run(), name="syncd-redis-reaper")
        try:
            status = await probe(client)
            # Raises ConfigError (refusing to start) when durability=fsync cannot be honoured.
            warnings = check_durability(settings.ack_durability, status)
            log.info("redis at %s: %s", redact_url(redis_url), describe(status))
            for warning in warnings:
                log.warning("%s", warning)
            log.info(
                "durability=%s: %s",
                settings.ack_durability,
                durability_guarantee(settings.ack_durability, status),
            )
            app.state.redis = client
            watch = Watch()
            hub = await _start_hub(settings, client, redis_url, watch)
            app.state.hub = hub
            expired = hub.metrics.expired.inc if hub.metrics is not None else None
            background = [asyncio.create_task(sweep_forever(hub.store, expired), name="syncd-sweeper")]
            # On a single Redis a restart also drops the fan-out's connection, which closes every session
            # (4003) and makes each resume meet the new generation: the watcher is for clusters, where one
            # shard fails over while the fan-out's node stays up.
            if settings.redis_cluster:
                watcher = GenerationWatcher(client, hub.generation_changed)
                background.append(asyncio.create_task(watcher.run(), name="syncd-generations"))
            publisher: Publisher | None = None
            if hub.metrics is not None:
                hub.metrics.registry.register(
                    SessionCollector(hub.metrics, hub.sessions, hub.telemetry, hub.fanout.stats)
                )
                publisher = Publisher(hub, client, watch)
                background.append(asyncio.create_task(publisher.run(), name="syncd-dashboard-publisher"))
            try:
                yield
            finally:
                for task in background:  # hub-wide loops, stopped before the hub closes
                    await stop(task)
                if publisher is not None:
                    await publisher.withdraw()
                await hub.close()
                await hub.fanout.close()
        finally:
            await stop(reaping)
            await close_client(client)

    app = HubApp(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            *dashboard.routes(),
            *opsapi.routes(),
            *_websocket_routes(),
        ],
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.add_middleware(RefuseCredentialsInUrl)
    return app


WS_PATH = "/ws"
"""Where the hub's websocket is served."""
CREDENTIAL_PARAMS = frozenset({"token", "access_token", "jwt", "password"})


class HubApp(Starlette):
    """Starlette, with the websocket of ``/ws`` handed straight to its endpoint.

    Through the middleware stack and the router, an idle connection's task holds a dozen coroutine frames
    (the error and exception middlewares, their exception wrappers twice, the router, the route, the session
    wrapper) for as long as it is open: about 4 KiB of each idle connection's memory (benchmarks `conns`).
    None of them does anything for ``/ws`` once it is matched: the endpoint raises no Starlette exception, and
    an error it lets out is logged by the server either way. So ``/ws`` is matched here, after the one check
    of the stack that applies to it (:class:`RefuseCredentialsInUrl`: a websocket carrying credentials in its
    query string takes the ordinary path, which refuses it); every other request takes the ordinary path.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self._ws_endpoint
        if (
            endpoint is not None
            and scope["type"] == "websocket"
            and scope["path"] == WS_PATH
            and not scope.get("root_path")
            and not _has_credentials(scope.get("query_string", b""))
        ):
            scope["app"] = self
            await endpoint(WebSocket(scope, receive, send))
        else:
            await super().__call__(scope, receive, send)

    @property
    def _ws_endpoint(self) -> Callable[[WebSocket], Coroutine[Any, Any, None]] | None:
        for route in self.router.routes:
            if isinstance(route, WebSocketRoute) and route.path == WS_PATH:
                endpoint: Callable[[WebSocket], Coroutine[Any, Any, None]] = route.endpoint
                return endpoint
        return None


class RefuseCredentialsInUrl:
    """Refuses HTTP requests and websocket handshakes whose query string carries a credential.

    URLs are logged (access logs, proxies, browser history), so a token there is a token leaked: the protocol
    carries it in ``hello``. The refusal (403, before any route) tells the developer at once instead of a
    token that works until someone reads a log.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and _has_credentials(scope.get("query_string", b"")):
            if scope["type"] == "websocket":
                await WebSocket(scope, receive, send).close(1008, "credentials in the URL")
            else:
                response = PlainTextResponse("credentials do not belong in the URL\n", status_code=403)
                await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _has_credentials(query: bytes) -> bool:
    if not query:
        return False
    names = {name.lower() for name, _ in parse_qsl(query.decode("latin-1"), keep_blank_values=True)}
    return not names.isdisjoint(CREDENTIAL_PARAMS)


async def _start_hub(settings: Settings, client: Any, redis_url: str, watch: Watch) -> Hub:
    """The service layer over the store, with its own pub/sub connection for fan-out."""
    store = RedisStore(
        client,
        durability=settings.ack_durability,
        wait_replicas=settings.wait_replicas,
        dedup_retention_s=settings.dedup_retention_s,
        log_maxlen=settings.history_maxlen,
        log_max_age_s=settings.history_max_age_s,
        holds=settings.hold_policy,
    )
    try:
        await store.load_scripts()  # so no node starts with some scripts and not others
    except BackendUnavailable as exc:  # a node down: it loads all of them on its first NOSCRIPT
        log.warning("could not load the scripts on every node yet: %s", exc)

    revocations = Revocations(client)
    try:
        await revocations.load()
    except Exception as exc:  # Redis not there yet: the fan-out loads them once it has subscribed
        log.warning("could not read the revoked clients yet: %s", exc)
    fanout = Fanout(node_connector(redis_url, client), channel)
    fanout.control(REVOKED_CHANNEL, revocations.receive, revocations.load)
    fanout.control(WATCH_CHANNEL, watch.heard)  # a dashboard page is open somewhere: publish figures
    hub = Hub(settings, store, fanout, token_verifier(settings, revocations))
    revocations.on_revoked = hub.end_revoked
    await fanout.start()
    return hub


async def healthz(request: Request) -> JSONResponse:
    """Liveness of the hub *and* of what it stands on.

    ``ok`` (200): Redis answers and keeps what the configured durability promises. ``degraded`` with 200:
    serving, but with a weaker guarantee (see ``warnings``). ``degraded`` with 503: Redis is unreachable or
    still loading its data, so ops cannot be served; load balancers should route elsewhere.
    """
    settings: Settings = request.app.state.settings
    status = await probe(request.app.state.redis)
    try:
        warnings = check_durability(settings.ack_durability, status)
    except ConfigError as exc:  # e.g. a failover to a server without WAITAOF since startup
        warnings = [str(exc)]
    serving = status.reachable and status.persistence is not None and not status.persistence.loading
    if status.reachable and not serving:
        warnings.append("Redis is loading its data")
    body: dict[str, Any] = {
        "status": "ok" if serving and not warnings else "degraded",
        "version": __version__,
        "redis": status.as_dict(),
        "durability": {
            "mode": settings.ack_durability,
            "guarantee": durability_guarantee(settings.ack_durability, status),
        },
        "warnings": warnings,
    }
    hub: Hub | None = getattr(request.app.state, "hub", None)
    if hub is not None:
        reaper: IdleReaper = request.app.state.reaper
        body["fanout"] = hub.fanout.stats.as_dict()
        body["redis_pool"] = {"idle_closed": reaper.closed, "idle_s": reaper.idle_s}
    return JSONResponse(body, status_code=200 if serving else 503)


async def metrics(request: Request) -> Response:
    """This process's figures in the Prometheus text format (``syncd.metrics``); 404 with ``metrics = false``.

    Unauthenticated, like ``/healthz``: it carries counts only, no id, and is meant for the scraper on the
    private network. Scrape every hub process: each counts what it served.
    """
    hub: Hub | None = getattr(request.app.state, "hub", None)
    if hub is None or hub.metrics is None:
        return PlainTextResponse("metrics are off\n", status_code=404)
    return Response(hub.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def describe(status: RedisStatus) -> str:
    """One log-friendly line: ``valkey 9.1.2 standalone, aof=on appendfsync=everysec rdb=off``."""
    if not status.reachable:
        return f"unreachable ({status.error})"
    persistence = status.persistence
    assert persistence is not None
    rdb = "unknown" if persistence.rdb is None else "on" if persistence.rdb else "off"
    return (
        f"{status.server} {status.version} {status.mode}, aof={'on' if persistence.aof else 'off'} "
        f"appendfsync={persistence.appendfsync or 'unknown'} rdb={rdb} "
        f"waitaof={'yes' if status.waitaof else 'no'}"
    )


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for logs (docs/traps.md §14)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _websocket_routes() -> list[BaseRoute]:
    # ======================================== websocket route: /ws ========================================
    # The endpoint lives in syncd/endpoint.py (written separately). Contract: that module exposes
    # ``endpoint``, an ASGI websocket endpoint (``async def endpoint(websocket: WebSocket) -> None`` or a
    # ``WebSocketEndpoint`` subclass) reading ``websocket.app.state.settings`` and ``.redis``. Until it
    # exists the hub serves /healthz only. Imported by name so this file type-checks with or without it.
    # ======================================================================================================
    try:
        module = importlib.import_module("syncd.endpoint")
    except ModuleNotFoundError as exc:
        if exc.name != "syncd.endpoint":
            raise  # the endpoint exists but one of *its* imports is missing: that is a real error
        return []
    return [WebSocketRoute(WS_PATH, module.endpoint)]
