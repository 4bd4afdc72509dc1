"""The ops HTTP API (/ops/stock/…) in-process (Starlette TestClient) against a real Redis: only ops tokens,
bounded and typed bodies, typed JSON errors, and an Idempotency-Key that makes a retried write apply once."""

from __future__ import annotations

from typing import Any

from starlette.testclient import TestClient

from syncd.app import create_app
from syncd.auth import mint_token
from syncd.embedded import EmbeddedRedis
from syncd.opsapi import MAX_BODY_BYTES
from syncd.settings import Settings

SECRET = "opsapi-secret-" + "o" * 32
OPS = {"Authorization": "Bearer " + mint_token(SECRET, client_id="ops-1", role="ops")}


def app_for(server: EmbeddedRedis) -> TestClient:
    return TestClient(create_app(Settings.from_env({}, redis_url=server.url, token_secret=SECRET)))


def test_the_api_refuses_requests_without_an_ops_token(redis_server: EmbeddedRedis) -> None:
    app_token = mint_token(SECRET, client_id="app-1", role="app", members=["*"])
    pos_token = mint_token(SECRET, client_id="pos-1", role="pos", store="s1")
    foreign = mint_token("another-secret-" + "x" * 32, client_id="ops-1", role="ops")
    with app_for(redis_server) as http:
        for method, path in [("GET", "/ops/stock/A1"), ("POST", "/ops/stock/A1/restock")]:
            missing = http.request(method, path, json={"qty": 1})
            assert missing.status_code == 401 and missing.json()["code"] == "unauthorized"
            bad = http.request(method, path, json={"qty": 1}, headers={"Authorization": f"Bearer {foreign}"})
            assert bad.status_code == 401 and bad.json()["code"] == "unauthorized"
            for tok in (app_token, pos_token):
                auth = {"Authorization": f"Bearer {tok}"}
                refused = http.request(method, path, json={"qty": 1}, headers=auth)
                assert refused.status_code == 403 and refused.json()["code"] == "not_permitted"
        assert http.get("/ops/stock/A1", headers=OPS).json()["on_hand"] == 0  # nothing was applied


def test_writes_apply_as_stock_ops_and_the_state_shows_every_bucket(redis_server: EmbeddedRedis) -> None:
    with app_for(redis_server) as http:
        restocked = http.post("/ops/stock/B1/restock", json={"qty": 20}, headers=OPS)
        assert restocked.status_code == 200
        want = {"on_hand": 20, "pool": 20, "sold": 0, "atp": {"*": 20}, "allot": {}}
        assert restocked.json()["stock"] == want
        assert http.put("/ops/stock/B1/quota/web", json={"qty": 5}, headers=OPS).status_code == 200
        assert http.put("/ops/stock/B1/limit", json={"qty": 2}, headers=OPS).status_code == 200
        allotted = http.post("/ops/stock/B1/allot", json={"store": "s1", "qty": 8}, headers=OPS)
        assert allotted.status_code == 200
        adjusted = http.post("/ops/stock/B1/adjust", json={"delta": -3, "reason": "damaged"}, headers=OPS)
        assert adjusted.status_code == 200 and adjusted.json()["stock"]["reason"] == "damaged"
        state = http.get("/ops/stock/B1", headers=OPS).json()
        assert state == {
            "sku": "B1",
            "on_hand": 17,
            "pool": 9,
            "sold": 0,
            "held": 0,
            "holds": 0,
            "allot": {"s1": 8},
            "quota": {"web": 5},
            "taken": {},
            "limit": 2,
            "atp": {"*": 9, "web": 5},
            "recall": {},
        }


def test_refusals_are_typed_json_with_the_protocols_codes(redis_server: EmbeddedRedis) -> None:
    def refused(response: Any) -> tuple[int, str]:
        body = response.json()
        assert body["ok"] is False and body["message"]
        return response.status_code, body["code"]

    with app_for(redis_server) as http:

        def post(path: str, headers: dict[str, str] = OPS, **body: Any) -> tuple[int, str]:
            return refused(http.post(f"/ops/stock/{path}", headers=headers, **body))

        http.post("/ops/stock/C1/restock", json={"qty": 2}, headers=OPS)
        assert post("C1/adjust", json={"delta": -3, "reason": "count"}) == (409, "insufficient_stock")
        assert post("C1/restock", json={"qty": "2"}) == (400, "bad_args")
        assert post("C1/restock", json={"qty": 0}) == (400, "bad_args")
        assert post("C1/restock", json={"qty": 1, "x": 1}) == (400, "bad_args")
        assert post("C1/restock", content=b"{") == (400, "malformed")
        assert post("C%3A1/restock", json={"qty": 1}) == (400, "bad_args")
        huge = b'{"qty": 1, "pad": "' + b"x" * MAX_BODY_BYTES + b'"}'
        assert post("C1/restock", content=huge) == (413, "frame_too_large")
        bad_key = {**OPS, "Idempotency-Key": "has space"}
        assert post("C1/restock", bad_key, json={"qty": 1}) == (400, "bad_args")
        assert http.get("/ops/stock/C1", headers=OPS).json()["on_hand"] == 2


def test_a_write_retried_with_its_idempotency_key_applies_once(redis_server: EmbeddedRedis) -> None:
    with app_for(redis_server) as http:
        keyed = {**OPS, "Idempotency-Key": "restock-2026-12-06-001"}
        first = http.post("/ops/stock/D1/restock", json={"qty": 5}, headers=keyed)
        again = http.post("/ops/stock/D1/restock", json={"qty": 5}, headers=keyed)
        assert first.status_code == again.status_code == 200
        assert (first.json()["dup"], again.json()["dup"]) == (False, True)
        assert http.get("/ops/stock/D1", headers=OPS).json()["on_hand"] == 5
        other = http.post("/ops/stock/D1/restock", json={"qty": 5}, headers={**OPS, "Idempotency-Key": "k2"})
        assert other.json()["dup"] is False  # another key: another write
        unkeyed = [http.post("/ops/stock/D1/restock", json={"qty": 1}, headers=OPS) for _ in range(2)]
        assert [r.json()["dup"] for r in unkeyed] == [False, False]  # no key: each request is a write
        assert http.get("/ops/stock/D1", headers=OPS).json()["on_hand"] == 12
        # A rejection is an outcome too: its replay answers the same rejection, applied to nothing.
        short = {**OPS, "Idempotency-Key": "adjust-1"}
        no = http.post("/ops/stock/D1/adjust", json={"delta": -50, "reason": "count"}, headers=short)
        http.post("/ops/stock/D1/restock", json={"qty": 100}, headers=OPS)
        still_no = http.post("/ops/stock/D1/adjust", json={"delta": -50, "reason": "count"}, headers=short)
        assert (no.status_code, still_no.status_code) == (409, 409) and still_no.json()["dup"] is True
        assert http.get("/ops/stock/D1", headers=OPS).json()["on_hand"] == 112


def test_a_key_reused_for_another_body_is_refused_not_answered(redis_server: EmbeddedRedis) -> None:
    with app_for(redis_server) as http:
        keyed = {**OPS, "Idempotency-Key": "k-body"}
        assert http.post("/ops/stock/G1/restock", json={"qty": 3}, headers=keyed).status_code == 200
        other = http.post("/ops/stock/G1/restock", json={"qty": 30}, headers=keyed)
        assert (other.status_code, other.json()["code"]) == (422, "bad_args")
        same = http.post("/ops/stock/G1/restock", content=b'{ "qty" : 3 }', headers=keyed)  # same request
        assert same.status_code == 200 and same.json()["dup"] is True
        assert http.get("/ops/stock/G1", headers=OPS).json()["on_hand"] == 3


def test_the_same_key_on_another_sku_is_another_write(redis_server: EmbeddedRedis) -> None:
    with app_for(redis_server) as http:
        keyed = {**OPS, "Idempotency-Key": "same"}
        assert http.post("/ops/stock/E1/restock", json={"qty": 3}, headers=keyed).json()["dup"] is False
        assert http.post("/ops/stock/E2/restock", json={"qty": 4}, headers=keyed).json()["dup"] is False
        assert http.get("/ops/stock/E2", headers=OPS).json()["on_hand"] == 4


def test_a_rebalance_is_a_recall_the_state_shows_until_the_store_answers(redis_server: EmbeddedRedis) -> None:
    with app_for(redis_server) as http:
        http.post("/ops/stock/F1/restock", json={"qty": 10}, headers=OPS)
        http.post("/ops/stock/F1/allot", json={"store": "s1", "qty": 6}, headers=OPS)
        moved = http.post("/ops/stock/F1/rebalance", json={"from": "s1", "to": "s2", "qty": 4}, headers=OPS)
        assert moved.status_code == 200
        shrink = http.post("/ops/stock/F1/recall", json={"store": "s3", "qty": 1}, headers=OPS)
        assert shrink.status_code == 200
        state = http.get("/ops/stock/F1", headers=OPS).json()
        assert state["allot"] == {"s1": 6} and state["pool"] == 4  # nothing moved: only asked
        assert state["recall"] == {"s1": {"qty": 4, "to": "s2"}, "s3": {"qty": 1, "to": None}}
        same = http.post("/ops/stock/F1/rebalance", json={"from": "s1", "to": "s1", "qty": 1}, headers=OPS)
        assert (same.status_code, same.json()["code"]) == (400, "bad_args")
