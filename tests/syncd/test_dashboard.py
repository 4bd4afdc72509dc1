"""/metrics and /dashboard in-process (Starlette TestClient) against a Redis the test started."""

from __future__ import annotations

import json
import time

import pytest
import redis
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from syncd.app import create_app
from syncd.auth import mint_token
from syncd.dashboard import COOKIE
from syncd.embedded import EmbeddedRedis
from syncd.rollup import KEY
from syncd.settings import Settings

SECRET = "dashboard-secret-" + "s" * 32


def app_for(server: EmbeddedRedis, **overrides: object) -> TestClient:
    settings = Settings.from_env({}, redis_url=server.url, token_secret=SECRET, **overrides)
    return TestClient(create_app(settings))


def ops_token() -> str:
    return mint_token(SECRET, client_id="ops-1", role="ops", members=["*"])


def test_two_apps_in_one_process_keep_their_own_metrics(redis_server: EmbeddedRedis) -> None:
    with app_for(redis_server) as first, app_for(redis_server) as second:
        for http in (first, second):
            body = http.get("/metrics").text
            assert "syncd_connections" in body and "syncd_ops_accepted" in body
        assert "python_gc_objects_collected_total" not in first.get("/metrics").text  # not the global one


def test_with_metrics_off_neither_metrics_nor_dashboard_is_served(redis_server: EmbeddedRedis) -> None:
    with app_for(redis_server, metrics=False) as http:
        assert http.get("/metrics").status_code == 404
        assert http.get("/dashboard").status_code == 404
        assert http.post("/dashboard/login", data={"token": ops_token()}).status_code == 404


def test_the_page_needs_an_ops_token_and_keeps_it_in_a_strict_http_only_cookie(
    redis_server: EmbeddedRedis,
) -> None:
    with app_for(redis_server) as http:
        assert http.get("/dashboard").status_code == 401
        app_token = mint_token(SECRET, client_id="app-1", role="app", members=["*"])
        assert http.post("/dashboard/login", data={"token": app_token}).status_code == 403
        assert http.post("/dashboard/login", data={"token": "not-a-jwt"}).status_code == 403
        assert http.get("/dashboard", params={"token": ops_token()}).status_code == 403  # never in a URL
        login = http.post("/dashboard/login", data={"token": ops_token()}, follow_redirects=False)
        assert login.status_code == 303
        cookie = login.headers["set-cookie"]
        for attribute in ("HttpOnly", "SameSite=strict", "Path=/dashboard", "Max-Age="):
            assert attribute in cookie
        http.cookies.set(COOKIE, ops_token())
        page = http.get("/dashboard")
        assert page.status_code == 200 and "POS" in page.text
        assert http.get("/dashboard/assets/chart.js").headers["content-type"].startswith("text/javascript")
        assert http.get("/dashboard/assets/app.py").status_code == 404


def test_the_feed_refuses_a_handshake_without_the_cookie_or_from_another_origin(
    redis_server: EmbeddedRedis,
) -> None:
    with app_for(redis_server) as http:
        with pytest.raises(WebSocketDisconnect) as refused, http.websocket_connect("/dashboard/feed") as ws:
            ws.receive_json()
        assert refused.value.code == 1008
        http.cookies.set(COOKIE, ops_token())
        foreign = {"origin": "https://evil.example"}
        with (
            pytest.raises(WebSocketDisconnect) as refused,
            http.websocket_connect("/dashboard/feed", headers=foreign) as ws,
        ):
            ws.receive_json()
        assert refused.value.code == 1008
        with http.websocket_connect("/dashboard/feed", headers={"origin": "http://testserver"}) as ws:
            state = ws.receive_json()
        assert state["redis_ok"] is True
        assert state["alert_sync_p99_ms"] == 500


def test_a_hub_publishes_its_figures_only_while_a_page_watches_and_withdraws_them_on_stop(
    redis_server: EmbeddedRedis,
) -> None:
    store = redis.Redis.from_url(redis_server.url)
    with app_for(redis_server) as http:
        time.sleep(1.5)
        assert store.hlen(KEY) == 0  # nobody watches: nothing written
        http.cookies.set(COOKIE, ops_token())
        with http.websocket_connect("/dashboard/feed") as ws:
            state = ws.receive_json()
            while state["hubs"] == 0:  # the first read may come before the hub's first publication
                state = ws.receive_json()
        assert state["hubs"] == 1 and state["fanout_ok"] is True
        (published,) = store.hvals(KEY)
        assert not any(json.loads(published)["counters"].values())  # nothing counted yet
    assert store.hlen(KEY) == 0
    store.close()
