"""``/dashboard``: one page for ops staff, fed live over a websocket, no front-end build step.

Access takes an ``ops`` token (docs/design.md §5). The page asks for it once and the hub keeps it in a cookie
(``HttpOnly``, ``SameSite=Strict``, path ``/dashboard``, expiring with the token): never in a URL, where
proxies and browser history would keep it (docs/traps.md §13). Every request and the feed's handshake verify
the cookie's token again — expiry, issuer and revocation included — so a revoked operator loses the page at
their next reload. The feed also checks that the handshake comes from the page's own origin, as a browser
sends cookies on cross-site websocket handshakes too.

The figures are :mod:`syncd.rollup`'s: every hub process's, not just this one's. The page and its small SVG
chart are files under ``syncd/static/`` served as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from importlib import resources
from typing import Final
from urllib.parse import parse_qs, urlsplit

from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from syncd.auth import AuthError, Principal, Role, principal_from_claims
from syncd.hub import Hub
from syncd.rollup import INTERVAL_S, Board

COOKIE: Final = "syncd_ops"
ASSETS: Final = {
    "dashboard.js": "text/javascript",
    "chart.js": "text/javascript",
    "dashboard.css": "text/css",
}
MAX_FORM_BYTES: Final = 16_384


def routes() -> list[BaseRoute]:
    return [
        Route("/dashboard", page, methods=["GET"]),
        Route("/dashboard/login", login, methods=["POST"]),
        Route("/dashboard/assets/{name}", asset, methods=["GET"]),
        WebSocketRoute("/dashboard/feed", feed),
    ]


def _static(name: str) -> str:
    return resources.files("syncd").joinpath("static", name).read_text(encoding="utf-8")


def _hub(conn: HTTPConnection) -> Hub | None:
    hub: Hub | None = getattr(conn.app.state, "hub", None)
    return hub if hub is not None and hub.metrics is not None else None


def operator(hub: Hub, token: str | None) -> Principal | None:
    """The ops principal of ``token``, or ``None`` when it is missing, invalid, revoked or not ``ops``."""
    if not token:
        return None
    try:
        principal = principal_from_claims(hub.verifier.claims(token))
    except AuthError:
        return None
    revocations = hub.verifier.revocations
    if principal.role is not Role.OPS or (revocations is not None and revocations.refuses(principal)):
        return None
    return principal


def _login_page(message: str, status: int) -> HTMLResponse:
    return HTMLResponse(_static("login.html").replace("{{message}}", message), status_code=status)


async def page(request: Request) -> Response:
    hub = _hub(request)
    if hub is None:
        return PlainTextResponse("the dashboard needs metrics (SYNCD_METRICS=true)\n", status_code=404)
    if operator(hub, request.cookies.get(COOKIE)) is None:
        return _login_page("", 401)
    return HTMLResponse(_static("dashboard.html"), headers={"Cache-Control": "no-store"})


async def login(request: Request) -> Response:
    hub = _hub(request)
    if hub is None:
        return PlainTextResponse("the dashboard needs metrics (SYNCD_METRICS=true)\n", status_code=404)
    body = await request.body()
    token = parse_qs(body[:MAX_FORM_BYTES].decode("utf-8", "replace")).get("token", [""])[0].strip()
    principal = operator(hub, token)
    if principal is None:
        return _login_page("该令牌不是有效的运维令牌 · Not a valid ops token", 403)
    response = RedirectResponse("/dashboard", status_code=303)
    response.set_cookie(
        COOKIE,
        token,
        max_age=max(1, int(principal.expires_at - time.time())),
        path="/dashboard",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in ASSETS:
        return PlainTextResponse("not found\n", status_code=404)
    return Response(_static(name), media_type=ASSETS[name], headers={"Cache-Control": "no-cache"})


def _same_origin(websocket: WebSocket) -> bool:
    origin = websocket.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == websocket.headers.get("host", "")


async def feed(websocket: WebSocket) -> None:
    """The dashboard's figures as one JSON message a second, until the page goes away."""
    hub = _hub(websocket)
    await websocket.accept()
    if hub is None or not _same_origin(websocket) or operator(hub, websocket.cookies.get(COOKIE)) is None:
        await websocket.close(1008, "an ops login is required")
        return
    board = Board(hub.settings)
    redis = websocket.app.state.redis
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        while True:
            await websocket.send_json(await board.read(redis))
            await asyncio.sleep(INTERVAL_S)
