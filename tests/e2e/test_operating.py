"""Operating a hub: what it holds after Redis restarts, how it waits for Redis, revocation across hub
processes, tokens kept out of URLs and logs, log formats. Real hub processes, real Redis servers restarted by
the tests, real sockets; the hub's resources are read from ``/proc``.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from protocol import frames
from protocol.errors import CloseCode
from syncd.embedded import EmbeddedRedis
from tests.e2e.conftest import HubFactory
from tests.e2e.harness import SECRET, HubProcess, WireClient, token
from tests.e2e.test_observability import scrape, total

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads sockets from Linux's /proc"),
]
REPO = Path(__file__).resolve().parents[2]
TCP_STATES = {"01": "ESTABLISHED", "08": "CLOSE_WAIT", "06": "TIME_WAIT", "0A": "LISTEN"}


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def sockets_to(pid: int, port: int) -> collections.Counter[str]:
    """The TCP states of ``pid``'s sockets whose remote end is ``port`` (on loopback)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    states: collections.Counter[str] = collections.Counter()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                if fields[9] in inodes and int(fields[2].rsplit(":", 1)[1], 16) == port:
                    states[TCP_STATES.get(fields[3], fields[3])] += 1
    return states


async def wait_for(condition: Callable[[], bool], within: float = 30.0) -> bool:
    """Poll until ``condition`` holds or ``within`` seconds pass: a bound on waiting, not a timing check."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def burst(hub: HubProcess, clients: int, ops: int = 3) -> int:
    """``clients`` devices connect at once, subscribe and write ``ops`` ops each; the ops acked."""

    async def one(i: int) -> int:
        client_id = f"burst-{i}-{time.monotonic_ns()}"
        for _attempt in range(20):  # right after a Redis restart a handshake may be refused (4003)
            try:
                wire = await WireClient.open(hub.url, client_id)
                break
            except Exception:
                await asyncio.sleep(0.2)
        else:
            return 0
        acked = 0
        try:
            await wire.send(frames.Subscribe(id=1, topic=f"cart:m{i}"))
            for _ in range(ops):
                await wire.op("cart.add", {"member": f"m{i}", "sku": "S", "qty": 1})
            while acked < ops:
                await wire.recv_type(frames.Ack)
                acked += 1
        except Exception:
            pass
        finally:
            await wire.close()
        return acked

    return sum(await asyncio.gather(*(one(i) for i in range(clients))))


async def test_redis_restarts_leave_no_dead_sockets_and_the_hub_returns_to_its_starting_fds(
    redis_server: EmbeddedRedis, hub_factory: HubFactory
) -> None:
    hub = hub_factory(redis_server.url)
    assert hub.proc is not None
    pid = hub.proc.pid
    start = open_fds(pid)
    for _ in range(5):
        assert await burst(hub, 30) > 0
        redis_server.kill()  # a crash: every socket the hub holds to it is dead
        redis_server.restart()
        assert await wait_for(lambda: hub.healthz()["status"] == "ok")
    # All clients gone. Every pooled connection to the dead server is closed without waiting for a reuse.
    settled = await wait_for(lambda: sockets_to(pid, redis_server.port)["CLOSE_WAIT"] == 0)
    assert settled, f"dead sockets to Redis remain: {sockets_to(pid, redis_server.port)}"
    assert await wait_for(lambda: open_fds(pid) <= start + 2), (
        start,
        open_fds(pid),
        sockets_to(pid, redis_server.port),
    )


async def test_the_redis_pool_is_capped_and_idle_connections_are_closed(
    redis_server: EmbeddedRedis, hub_factory: HubFactory
) -> None:
    hub = hub_factory(
        redis_server.url,
        SYNCD_REDIS_MAX_CONNECTIONS="6",
        SYNCD_REDIS_IDLE_S="2",
        SYNCD_REDIS_POOL_WAIT_MS="20000",
    )
    assert hub.proc is not None
    pid, port = hub.proc.pid, redis_server.port
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, sockets_to(pid, port)["ESTABLISHED"])
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    try:
        acked = await burst(hub, 60, ops=5)
    finally:
        watcher.cancel()
    assert acked == 60 * 5  # waiting for a connection is not a failure
    assert 2 <= peak <= 6 + 1, peak  # the pool (6) and the fan-out's pub/sub connection
    # Idle for longer than SYNCD_REDIS_IDLE_S: the pool gives its connections back (pub/sub stays; with no
    # dashboard page open the hub publishes no figures, syncd/rollup.py).
    assert await wait_for(lambda: sockets_to(pid, port)["ESTABLISHED"] <= 1), sockets_to(pid, port)
    assert hub.healthz()["redis_pool"]["idle_closed"] >= 2


async def test_while_redis_is_down_the_fan_out_logs_the_loss_and_the_return_once_and_counts_attempts(
    redis_server: EmbeddedRedis, hub_factory: HubFactory
) -> None:
    hub = hub_factory(redis_server.url)
    assert hub.healthz()["fanout"] == {
        "connected": True, "outages": 0, "reconnect_attempts": 0, "down_since": None
    }  # fmt: skip
    redis_server.kill()
    assert await wait_for(lambda: hub.healthz()["fanout"]["reconnect_attempts"] >= 3)
    down = hub.healthz()["fanout"]
    assert down["connected"] is False and down["outages"] == 1 and down["down_since"] is not None
    redis_server.restart()
    assert await wait_for(lambda: hub.healthz().get("fanout", {}).get("connected") is True)
    log = hub.log()
    assert log.count("fan-out connection lost") == 1, log
    assert log.count("fan-out connection restored") == 1, log
    up = hub.healthz()["fanout"]
    assert up["outages"] == 1 and up["reconnect_attempts"] >= 3 and up["down_since"] is None
    metrics = [scrape(hub)]  # the same figures for Prometheus
    assert total(metrics, "syncd_redis_reconnects_total") == 1
    assert total(metrics, "syncd_fanout_connected") == 1


async def test_revoking_a_client_closes_it_on_every_hub_and_refuses_its_old_tokens(
    redis_server: EmbeddedRedis, hub_factory: HubFactory
) -> None:
    first, second = hub_factory(redis_server.url), hub_factory(redis_server.url)
    old = token("till-7", role="pos", store="s1")
    on_first = await WireClient.open(first.url, "till-7", tok=old)
    on_second = await WireClient.open(second.url, "till-7", tok=old)
    bystander = await WireClient.open(second.url, "till-8", tok=token("till-8", role="pos", store="s1"))
    assert on_first.welcome and on_second.welcome and bystander.welcome

    revoke = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "syncd", "token", "revoke", "--client-id", "till-7"),
        *("--redis-url", redis_server.url),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(revoke.communicate(), 60)
    assert revoke.returncode == 0, err.decode()
    assert "2 hub process(es) notified" in out.decode()
    # Bounds on waiting (the close follows the pub/sub message at once), not timing checks.
    assert await on_first.closed(timeout=10) == CloseCode.REVOKED
    assert await on_second.closed(timeout=10) == CloseCode.REVOKED
    await bystander.op("cart.add", {"member": "m1", "sku": "S", "qty": 1})
    assert (await bystander.recv_type(frames.Ack)).ok

    # Afterwards: the old token is refused by both hubs, and by a hub started after the revocation.
    third = hub_factory(redis_server.url)
    for hub in (first, second, third):
        again = await WireClient.open(hub.url, "till-7", hello=False)
        await again.send(
            frames.Hello(versions=[1], token=old, client_id="till-7", ts=int(time.time() * 1000))
        )
        assert await again.closed() == CloseCode.REVOKED
    # A token issued after the revocation lets the device back in.
    await asyncio.sleep(1.1)  # `iat` counts whole seconds: the new token must be from a later second
    fresh = await WireClient.open(first.url, "till-7", tok=token("till-7", role="pos", store="s1"))
    assert fresh.welcome is not None
    for hub in (first, second, third):
        assert "client till-7 revoked" in hub.log()


async def test_a_token_in_the_url_is_refused_and_no_token_reaches_the_log(hub: HubProcess) -> None:
    secret_token = token("app-1")
    with pytest.raises(InvalidStatus) as refused:
        await connect(f"{hub.url}?token={secret_token}")
    assert refused.value.response.status_code == 403
    with pytest.raises(InvalidStatus):
        await connect(f"{hub.url}?x=1&access_token={secret_token}")
    # The right way still works, and a refused token is not logged either.
    client = await WireClient.open(hub.url, "app-1", tok=secret_token)
    assert client.welcome is not None
    refused_client = await WireClient.open(hub.url, "app-2", hello=False)
    hello = frames.Hello(versions=[1], token=secret_token, client_id="app-2", ts=int(time.time() * 1000))
    await refused_client.send(hello)  # another client's token: refused 4500
    assert await refused_client.closed() == CloseCode.UNAUTHORIZED
    await client.close()
    hub.stop()
    log = hub.log()
    assert "/ws?token=<redacted>" in log  # uvicorn's access line, with the value taken out
    assert secret_token not in log
    assert secret_token.split(".")[2] not in log  # not even the signature


async def test_json_log_format_gives_one_json_object_per_line(
    redis_server: EmbeddedRedis, hub_factory: HubFactory
) -> None:
    hub = hub_factory(redis_server.url, SYNCD_LOG_FORMAT="json")
    client = await WireClient.open(hub.url, "app-1")
    await client.close()
    hub.stop()
    lines = hub.log().splitlines()
    assert lines
    entries = [json.loads(line) for line in lines]
    assert all({"ts", "level", "logger", "message"} <= entry.keys() for entry in entries)
    assert any(
        entry["logger"] == "syncd.app" and "durability=script" in entry["message"] for entry in entries
    )


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({"iss": "another-service"}, id="another-issuer"),
        pytest.param({"iss": None}, id="no-issuer"),
        pytest.param({"exp": "4102444800"}, id="exp-as-string"),
    ],
)
async def test_a_hub_process_refuses_a_token_of_another_issuer_or_with_ill_typed_claims(
    hub: HubProcess, claims: dict[str, Any]
) -> None:
    now = int(time.time())
    payload = {"sub": "app-1", "iss": "syncd", "role": "app", "members": ["*"], "iat": now, "exp": now + 600}
    payload.update(claims)
    forged = jwt.encode({k: v for k, v in payload.items() if v is not None}, SECRET, algorithm="HS256")
    client = await WireClient.open(hub.url, "app-1", hello=False)
    await client.send(frames.Hello(versions=[1], token=forged, client_id="app-1", ts=now * 1000))
    assert await client.closed() == CloseCode.UNAUTHORIZED
    good = await WireClient.open(hub.url, "app-1")  # the same hub still takes a right token
    assert good.welcome is not None
    await good.close()
